"""An MNIST-shaped training script making the calls Horovod's examples/pytorch/pytorch_mnist.py
makes, on synthetic 28x28 images (nothing is downloaded).

    mpiexec -n 3 python examples/pytorch_mnist_synthetic.py --epochs 2      # 1 server + 2 workers
    python examples/pytorch_mnist_synthetic.py --num-proc 2 --epochs 2      # the same through hvd.run

The calls: ``hvd.init``, ``DistributedSampler(num_replicas=hvd.size(), rank=hvd.rank())``,
``hvd.broadcast_parameters`` / ``hvd.broadcast_optimizer_state`` before wrapping,
``hvd.DistributedOptimizer(..., compression=..., op=hvd.Average,
gradient_predivide_factor=...)``, ``hvd.allreduce(tensor, name=...)`` to average metrics,
``hvd.nccl_built()`` for the Adasum lr scaling, and ``hvd.run(train, args=(args,),
np=...)`` with ``--num-proc`` (Horovod's ``horovod.run``: a Horovod script that does
``import horovod`` for it writes ``import hvd_dc as horovod``).

The images are noise plus a class-dependent bright square, so the model can learn them;
the test set is drawn the same way.
"""

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
import torch.utils.data.distributed

import hvd_dc as hvd

parser = argparse.ArgumentParser(description="MNIST-shaped hvd_dc example on synthetic data")
parser.add_argument("--batch-size", type=int, default=64)
parser.add_argument("--test-batch-size", type=int, default=500)
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--lr", type=float, default=0.05)
parser.add_argument("--momentum", type=float, default=0.5)
parser.add_argument("--seed", type=int, default=42)
parser.add_argument("--log-interval", type=int, default=10)
parser.add_argument("--fp16-allreduce", action="store_true", help="fp16 gradients on the wire")
parser.add_argument("--use-adasum", action="store_true", help="refused by hvd_dc with more than one worker")
parser.add_argument("--gradient-predivide-factor", type=float, default=1.0)
parser.add_argument("--train-size", type=int, default=2048)
parser.add_argument("--num-proc", type=int, help="run through hvd.run with this many workers")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        x = F.relu(self.fc1(x.flatten(1)))
        return F.log_softmax(self.fc2(x), dim=1)


def synthetic_digits(n: int, seed: int) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = 0.3 * torch.randn(n, 1, 28, 28, generator=g)
    for k in range(10):
        row, col = divmod(k, 4)
        images[labels == k, :, 2 + 6 * row: 7 + 6 * row, 2 + 6 * col: 7 + 6 * col] += 1.0
    return torch.utils.data.TensorDataset(images, labels)


def train(args):
    hvd.init()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)

    train_dataset = synthetic_digits(args.train_size, seed=0)
    train_sampler = torch.utils.data.distributed.DistributedSampler(train_dataset, num_replicas=hvd.size(),
                                                                    rank=hvd.rank())
    train_loader = torch.utils.data.DataLoader(train_dataset, batch_size=args.batch_size, sampler=train_sampler)
    test_dataset = synthetic_digits(1000, seed=1)
    test_sampler = torch.utils.data.distributed.DistributedSampler(test_dataset, num_replicas=hvd.size(),
                                                                   rank=hvd.rank())
    test_loader = torch.utils.data.DataLoader(test_dataset, batch_size=args.test_batch_size, sampler=test_sampler)

    model = Net()
    lr_scaler = hvd.size() if not args.use_adasum else 1
    if args.use_adasum and hvd.nccl_built():
        lr_scaler = hvd.local_size()
    optimizer = optim.SGD(model.parameters(), lr=args.lr * lr_scaler, momentum=args.momentum)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)
    compression = hvd.Compression.fp16 if args.fp16_allreduce else hvd.Compression.none
    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(),
                                         compression=compression,
                                         op=hvd.Adasum if args.use_adasum else hvd.Average,
                                         gradient_predivide_factor=args.gradient_predivide_factor)

    def metric_average(val, name):
        return hvd.allreduce(torch.tensor(val), name=name).item()

    test_accuracy = 0.0
    for epoch in range(1, args.epochs + 1):
        model.train()
        train_sampler.set_epoch(epoch)
        for batch_idx, (data, target) in enumerate(train_loader):
            optimizer.zero_grad()
            loss = F.nll_loss(model(data), target)
            loss.backward()
            optimizer.step()
            if batch_idx % args.log_interval == 0 and hvd.rank() == 0:
                print(f"Train Epoch: {epoch} [{batch_idx * len(data)}/{len(train_sampler)}]\tLoss: {loss.item():.6f}",
                      flush=True)
        model.eval()
        optimizer.pull()  # the server's newest weights (hvd_dc: the workers train asynchronously)
        test_loss, correct = 0.0, 0.0
        with torch.no_grad():
            for data, target in test_loader:
                output = model(data)
                test_loss += F.nll_loss(output, target, reduction="sum").item()
                correct += output.argmax(1).eq(target).float().sum().item()
        test_loss = metric_average(test_loss / len(test_sampler), "avg_loss")
        test_accuracy = metric_average(correct / len(test_sampler), "avg_accuracy")
        if hvd.rank() == 0:
            print(f"Test set: Average loss: {test_loss:.4f}, Accuracy: {100.0 * test_accuracy:.2f}%", flush=True)
    return test_accuracy


if __name__ == "__main__":
    args = parser.parse_args()
    if args.num_proc:
        print(f"Running training through hvd.run on {args.num_proc} workers", flush=True)
        accuracies = hvd.run(train, args=(args,), np=args.num_proc)
        print(f"Final test accuracy per worker: {accuracies}", flush=True)
    else:
        train(args)

"""A plain Horovod PyTorch training script (synchronous data parallel).

    horovodrun -np 2 python examples/port_horovod/train_horovod.py

train_hvd_dc.py is this file with two lines changed; port.diff shows them.
Data: scikit-learn's bundled 8x8 digits, so nothing is downloaded.
"""

import argparse
import json

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

import horovod.torch as hvd


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(64, 64)
        self.fc2 = torch.nn.Linear(64, 10)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


def metric_average(value, name):
    return hvd.allreduce(torch.tensor(value), name=name).item()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--result", help="write the final metrics of every rank to RESULT.<rank>.json")
    args = parser.parse_args()

    hvd.init()
    torch.manual_seed(42)
    torch.set_num_threads(1)

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) / 16.0
    y = torch.tensor(y)
    train = torch.utils.data.TensorDataset(x[:1500], y[:1500])
    sampler = torch.utils.data.distributed.DistributedSampler(train, num_replicas=hvd.size(), rank=hvd.rank())
    loader = torch.utils.data.DataLoader(train, batch_size=args.batch_size, sampler=sampler)

    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr * hvd.size(), momentum=0.5)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)
    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        model.train()
        for data, target in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(data), target)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            test_loss = F.cross_entropy(model(x[1500:]), y[1500:]).item()
            test_acc = (model(x[1500:]).argmax(1) == y[1500:]).float().mean().item()
        test_loss = metric_average(test_loss, "avg_loss")
        test_acc = metric_average(test_acc, "avg_accuracy")
        if hvd.rank() == 0:
            print(f"epoch {epoch + 1}: test loss {test_loss:.4f}, accuracy {test_acc:.4f}", flush=True)

    if args.result:
        with open(f"{args.result}.{hvd.rank()}.json", "w") as f:
            json.dump({"rank": hvd.rank(), "size": hvd.size(), "test_loss": test_loss, "test_acc": test_acc}, f)


if __name__ == "__main__":
    main()

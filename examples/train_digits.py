"""Train a small CNN on scikit-learn's bundled digits data with DC-ASGD.

    mpiexec -n 5 python examples/train_digits.py            # 1 parameter server + 4 workers
    hvd-dc-run -np 5 python examples/train_digits.py         # the same, flags picked for your MPI
    python examples/train_digits.py                          # a world of one trains alone

DC-ASGD-a (the adaptive variant) by default. Worker 0 shows a tqdm progress bar (when
tqdm is installed and stderr is a terminal, or with --progress); every epoch prints
train loss, test accuracy and staleness averaged over the workers. With
HVD_DC_METRICS_FILE=run.jsonl the server and worker 0 write metrics that
``python -m hvd_dc.report run.jsonl`` plots.

A Horovod script with two lines changed: the import and the optimizer wrapper. Nothing
is downloaded: the 1,797 8x8 digit images ship inside scikit-learn.
"""

import argparse
import sys
import time

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

import hvd_dc as hvd  # was: import horovod.torch as hvd
from hvd_dc.metrics import log_metrics

try:
    from tqdm import tqdm
except ImportError:  # the progress bar is optional
    tqdm = None


class SmallCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.fc = torch.nn.Linear(32 * 2 * 2, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # 8x8 -> 4x4
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # 4x4 -> 2x2
        return self.fc(x.flatten(1))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=0.02, help="the single-process learning rate; the script uses "
                   "lr * hvd.size() as Horovod scripts do (hvd_dc applies 1/size() of it per push)")
    p.add_argument("--dc-variant", default="adaptive", choices=["adaptive", "constant", "none"])
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="tqdm progress bar on worker 0 (default: when stderr is a terminal)")
    args = p.parse_args()

    hvd.init()  # world rank 0 becomes the parameter server and never returns from here
    torch.manual_seed(42)
    torch.set_num_threads(1)

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(y)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train_idx, test_idx = perm[:1500], perm[1500:]
    dataset = torch.utils.data.TensorDataset(x[train_idx], y[train_idx])
    sampler = torch.utils.data.distributed.DistributedSampler(dataset, num_replicas=hvd.size(), rank=hvd.rank())
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, sampler=sampler)

    model = SmallCNN()
    # As in a Horovod script: lr * size(). Each of the size() pushes that make one Horovod
    # step is applied with 1/size() of it (lr_scaling="per_step"), and the momentum runs as
    # DANA on the server (async_momentum="auto"), so this trains like sequential SGD.
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr * hvd.size(), momentum=0.9)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    optimizer = hvd.DistributedDCOptimizer(  # was: hvd.DistributedOptimizer(...)
        optimizer, named_parameters=model.named_parameters(), dc_variant=args.dc_variant
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[args.epochs // 2, 3 * args.epochs // 4])

    start = time.time()
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        model.train()
        total, count = 0.0, 0
        batches = loader
        show = args.progress if args.progress is not None else sys.stderr.isatty()
        if hvd.rank() == 0 and show and tqdm is not None:
            batches = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", unit="batch", leave=False)
        for data, target in batches:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(data), target)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(data)
            count += len(data)
        scheduler.step()
        optimizer.pull()  # evaluate the newest server weights
        model.eval()
        with torch.no_grad():
            out = model(x[test_idx])
            acc = (out.argmax(1) == y[test_idx]).float().mean()
        # per-epoch metrics averaged over the workers (hvd.allreduce averages by default)
        s = optimizer.stats() if hvd.size() > 1 else {}
        train_loss = hvd.allreduce(torch.tensor(total / max(count, 1)), name="train_loss")
        acc = hvd.allreduce(acc, name="test_acc")
        staleness = hvd.allreduce(torch.tensor(float(s.get("staleness_mean", 0.0))), name="staleness")
        if hvd.rank() == 0:
            print(f"epoch {epoch + 1:2d}  train loss {train_loss:.4f}  test accuracy {acc:.4f}  "
                  f"staleness {staleness:.2f}  ({time.time() - start:.1f} s, {hvd.size()} workers)", flush=True)
            log_metrics(step=epoch + 1, loss=float(train_loss), accuracy=float(acc), staleness=float(staleness))
    if hvd.rank() == 0 and hvd.size() > 1:
        s = optimizer.stats()
        print(f"worker 0: {s['pushes']} pushes, staleness mean {s['staleness_mean']:.2f} "
              f"p50 {s['staleness_p50']:g} p99 {s['staleness_p99']:g} max {s['staleness_max']}, "
              f"{s['server_updates']} server updates ({s['updates_per_s']:.0f}/s)")
    hvd.shutdown()


if __name__ == "__main__":
    main()

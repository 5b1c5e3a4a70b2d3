"""Models, data and the timed training loops shared by the hvd_dc and synchronous workers.

Imports only torch, numpy and scikit-learn, so the Horovod interpreter can use it too.
"""

import json
import os
import time

import torch
import torch.nn.functional as F


def add_args(p):
    p.add_argument("--out", required=True)
    p.add_argument("--mode", choices=["throughput", "tta"], default="throughput")
    p.add_argument("--model", choices=["mlp", "cnn", "sleepy"], default="mlp",
                   help="sleepy: --params float32 parameters in --layers layers whose backward sleeps (the step's "
                        "--sleep in all), so that communication can overlap a backward pass that leaves the CPU free")
    p.add_argument("--params", type=int, default=25_000_000)
    p.add_argument("--layers", type=int, default=25)
    p.add_argument("--overlap", choices=["auto", "on", "off"], default="auto", help="hvd_dc: DistributedDCOptimizer(overlap=)")
    p.add_argument("--sleep", type=float, default=0.05, help="seconds each step sleeps (stands for GPU compute)")
    p.add_argument("--slow-factor", type=float, default=1.0, help="the last worker sleeps this many times longer")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds (hvd_dc) or steps x sleep (sync) of warm-up")
    p.add_argument("--window", type=float, default=4.0, help="seconds measured")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--threshold", type=float, default=0.95, help="test accuracy to reach (tta mode)")
    p.add_argument("--steps", type=int, default=0, help="sync throughput: timed steps (0: window / slowest sleep)")
    p.add_argument("--warmup-steps", type=int, default=0, help="sync throughput: warm-up steps (0: from --warmup)")
    p.add_argument("--max-seconds", type=float, default=120.0, help="tta gives up after this")
    return p


def my_sleep(args, rank, size):
    return args.sleep * (args.slow_factor if rank == size - 1 else 1.0)


def loop_sleep(args, rank, size):
    """What the training loop sleeps per step (the sleepy model sleeps inside backward)."""
    return 0.0 if args.model == "sleepy" else my_sleep(args, rank, size)


class _SleepyLayer(torch.autograd.Function):
    """Identity forward; the backward sleeps (a GPU computing, the CPU free) and gives the
    layer's weight a gradient of the weight's shape."""

    @staticmethod
    def forward(ctx, x, w, seconds):
        ctx.seconds, ctx.shape = seconds, w.shape
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        time.sleep(ctx.seconds)
        return g, torch.full(ctx.shape, 1e-6), None


class SleepyNet(torch.nn.Module):
    """``params`` float32 parameters in ``layers`` layers; backward takes ``seconds``."""

    def __init__(self, params, layers, seconds):
        super().__init__()
        self.weights = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(params // layers)) for _ in range(layers)])
        self.seconds = seconds / layers

    def forward(self, x):
        for w in self.weights:
            x = _SleepyLayer.apply(x, w, self.seconds)
        return x


def build(args, rank, size=1):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if args.model == "sleepy":
        model = SleepyNet(args.params, args.layers, my_sleep(args, rank, size))
        return model, torch.optim.SGD(model.parameters(), lr=1e-3)
    if args.model == "mlp":
        model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    else:  # a small real CNN for 32x32 RGB images (pytorch_synthetic_benchmark style, CPU-sized)
        model = torch.nn.Sequential(
            torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Flatten(), torch.nn.Linear(64 * 4 * 4, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    return model, opt


class Data:
    """Digits (real, sharded by rank) for the MLP; fixed random images for the CNN."""

    def __init__(self, args, rank, size):
        self.batch = args.batch
        self.g = torch.Generator().manual_seed(100 + rank)
        if args.model == "mlp":
            from sklearn.datasets import load_digits

            x, y = load_digits(return_X_y=True)
            self.x = torch.tensor(x, dtype=torch.float32) / 16.0
            self.y = torch.tensor(y)
            perm = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(0))
            self.train, self.test = perm[:1400], perm[1400:]
            self.shard = self.train[rank::size]
            self.order, self.pos = self.shard[torch.randperm(len(self.shard), generator=self.g)], 0
        elif args.model == "sleepy":
            self.fixed = (torch.ones(4, requires_grad=True), None)
        else:
            self.fixed = (torch.randn(args.batch, 3, 32, 32, generator=self.g),
                          torch.randint(0, 10, (args.batch,), generator=self.g))

    def next(self):
        if not hasattr(self, "shard"):
            return self.fixed
        if self.pos + self.batch > len(self.order):
            self.order, self.pos = self.shard[torch.randperm(len(self.shard), generator=self.g)], 0
        idx = self.order[self.pos : self.pos + self.batch]
        self.pos += self.batch
        return self.x[idx], self.y[idx]

    def accuracy(self, model):
        with torch.no_grad():
            return float((model(self.x[self.test]).argmax(1) == self.y[self.test]).float().mean())


def backward(model, data):
    x, y = data.next()
    loss = model(x).sum() if y is None else F.cross_entropy(model(x), y)
    loss.backward()
    return loss.item()


def write(out, rank, **d):
    d["rank"] = rank
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"rank{rank}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(d, f)
    os.replace(path + ".tmp", path)


now = time.perf_counter

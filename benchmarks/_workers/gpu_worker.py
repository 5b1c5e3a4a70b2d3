"""A ResNet-18-style CIFAR model trained on synthetic images, for benchmarks/gpu.py.

``--alone``: plain torch in this one process (the baseline). Otherwise under
``mpiexec -n N+1``: rank 0 is hvd_dc's parameter server (``server_device='auto'``), the
others are workers whose parameters live on ``--device``. Every trainer runs ``--warmup``
seconds, then counts the steps that complete in the next ``--window`` seconds.
"""

import argparse

import torch
import torch.nn.functional as F

import bench_models as bm

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--alone", action="store_true")
p.add_argument("--device", default="cuda")
p.add_argument("--width", type=int, default=64, help="channels of the first stage (64: ResNet-18, 11M params)")
p.add_argument("--batch", type=int, default=128)
p.add_argument("--warmup", type=float, default=5.0)
p.add_argument("--window", type=float, default=20.0)
args = p.parse_args()


class Block(torch.nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = torch.nn.BatchNorm2d(cout)
        self.c2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = torch.nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 1, stride, bias=False), torch.nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)))
        y = self.b2(self.c2(y))
        return F.relu(y + (x if self.short is None else self.short(x)))


def resnet18(width):
    layers = [torch.nn.Conv2d(3, width, 3, 1, 1, bias=False), torch.nn.BatchNorm2d(width), torch.nn.ReLU()]
    cin = width
    for i, w in enumerate([width, 2 * width, 4 * width, 8 * width]):
        layers += [Block(cin, w, 1 if i == 0 else 2), Block(w, w, 1)]
        cin = w
    layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(cin, 10)]
    return torch.nn.Sequential(*layers)


if args.alone:
    rank = 0
    hvd = None
else:
    import hvd_dc as hvd

    hvd.init()
    rank = hvd.rank()
device = torch.device(args.device)
if device.type == "cuda":
    device = torch.device("cuda", (hvd.local_rank() if hvd else 0) % torch.cuda.device_count())
    torch.cuda.set_device(device)
    torch.backends.cudnn.benchmark = True
else:
    torch.set_num_threads(1)
torch.manual_seed(0)
model = resnet18(args.width).to(device)
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
if hvd is not None:
    opt = hvd.DistributedDCOptimizer(opt, named_parameters=model.named_parameters(), dc_variant="adaptive")
g = torch.Generator().manual_seed(100 + rank)
x = torch.randn(args.batch, 3, 32, 32, generator=g).to(device)
y = torch.randint(0, 10, (args.batch,), generator=g).to(device)


def sync():
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if hvd is not None:
    hvd.barrier()
t0 = bm.now()
steps = counted = 0
first = last = None
while True:
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    sync()
    steps += 1
    t = bm.now() - t0
    if t >= args.warmup + args.window:
        break
    if t >= args.warmup:
        counted += 1
        first = t if first is None else first
        last = t
span = (last - first) if counted > 1 else float("nan")
result = dict(steps=steps, counted=counted, batch=args.batch,
              images_per_s=(counted - 1) * args.batch / span if counted > 1 else 0.0,
              params=sum(p.numel() for p in model.parameters()), device=str(device))
if hvd is not None:
    result["stats"] = opt.stats()
    result["server_device"] = result["stats"]["server_device"]
bm.write(args.out, rank, **result)
if hvd is not None:
    hvd.shutdown()

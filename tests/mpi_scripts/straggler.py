"""A straggler stuck in the middle of its backward pass (with overlap on, the chunks of its
last layers already pushed) must not hold up the other workers: they run all their steps
while it is stuck, and it then finishes. The last worker is the straggler; it stays stuck
until worker 0 has finished (a file in --out), or 60 s."""

import os
import time

import torch

import hvd_dc as hvd
from common import parser, write_result

p = parser()
p.add_argument("--steps", type=int, default=30)
args = p.parse_args()

hvd.init()
me, n = hvd.rank(), hvd.size()
flag = os.path.join(args.out, "worker0_done")
straggler = me == n - 1


class Stall(torch.autograd.Function):
    """Identity forward; its backward waits for worker 0 on the straggler's second step."""

    @staticmethod
    def forward(ctx, x):
        return x

    @staticmethod
    def backward(ctx, g):
        if Stall.armed:
            Stall.armed = False
            deadline = time.monotonic() + 60
            while not os.path.exists(flag) and time.monotonic() < deadline:
                time.sleep(0.01)
            Stall.waited = os.path.exists(flag)
        return g


Stall.armed, Stall.waited = False, None
torch.manual_seed(0)
first = torch.nn.Linear(64, 256)
last = torch.nn.Linear(256, 8)
model = torch.nn.Sequential(first, last)
opt = hvd.DistributedDCOptimizer(torch.optim.SGD(model.parameters(), lr=0.01), named_parameters=model.named_parameters(),
                                 overlap="on")
steps = 3 if straggler else args.steps
pushed_before_stall = None
for s in range(steps):
    opt.zero_grad()
    Stall.armed = straggler and s == 1
    x = torch.randn(16, 64)
    last(Stall.apply(first(x))).square().mean().backward()  # 'last' finishes its gradient before the stall
    opt.step()
updates_seen = opt.stats()["server_updates"]
if me == 0:
    open(flag, "w").close()
write_result(args.out, me, steps=steps, waited=Stall.waited, updates_seen=updates_seen, stats=opt.stats())

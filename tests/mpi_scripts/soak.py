"""Soak: many ranks, thousands of pushes, exact conservation and zero torn reads.

Every gradient is one integer spread over all elements and w0[i] = i, so every weight
vector the server ever publishes satisfies w[i] - i == w[0] for all i. A pulled snapshot
mixing two versions would break it: each worker checks every snapshot it receives."""

import random
import time

import torch

import hvd_dc as hvd
from common import is_torn, parser, write_result

p = parser()
p.add_argument("--pushes", type=int, default=200)
p.add_argument("--size", type=int, default=50_000)
args = p.parse_args()

hvd.init()
me, n = hvd.rank(), hvd.size()
base = torch.arange(args.size, dtype=torch.float32)
w = torch.nn.Parameter(base.clone())
opt = hvd.DistributedDCOptimizer(torch.optim.SGD([w], lr=float(n)), named_parameters=[("w", w)], dc_variant="adaptive",
                                 dc_lambda=0.0, staleness_policy="none")
rng = random.Random(me)


def value(m, s):
    return float(random.Random(100_003 * m + s).choice([-3, -2, -1, 1, 2, 3]))


snapshots = torn = 0
start = time.monotonic()
for s in range(args.pushes):
    opt.zero_grad()
    w.grad.fill_(value(me, s))
    opt.step()
    if rng.random() < 0.2:
        opt.pull()
    snapshots += 1
    torn += is_torn(w.detach(), base)
elapsed = time.monotonic() - start
hvd.barrier()
opt.pull()
shift = -sum(value(m, s) for m in range(n) for s in range(args.pushes))
conserved = bool(torch.equal(w.detach(), base + shift))
stats = opt.stats()
write_result(args.out, me, snapshots=snapshots, torn=torn, conserved=conserved, seconds=elapsed,
             server_updates=stats["server_updates"], staleness_max=stats["staleness_max"],
             staleness_mean=stats["staleness_mean"])
hvd.shutdown()

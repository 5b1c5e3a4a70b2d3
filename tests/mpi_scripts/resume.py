"""Training that can be killed and restarted from the server's checkpoint.

--mode conserve: integer gradients, lambda = 0, a per-push lr of 1 (Horovod's lr * size(),
  applied / size() per push); the final weights must equal
  w0 - (sum of every gradient of every step of every worker): each step's push applied
  exactly once over the job's lives, however many times it was killed and restarted.
--mode trajectory: a small MLP on deterministic batches with DC-ASGD-a and momentum; the
  final weights are written so that a test can compare a killed-and-resumed run with an
  uninterrupted one bit for bit (with one worker the schedule is deterministic).
Each worker continues from opt.stats()["pushes"], its push count at the checkpoint.
"""

import os
import signal
import time

import torch

import hvd_dc as hvd
from common import parser, write_result

p = parser()
p.add_argument("--mode", choices=["conserve", "trajectory"], default="conserve")
p.add_argument("--ckpt", required=True)
p.add_argument("--steps", type=int, default=40)
p.add_argument("--every", type=int, default=10)
p.add_argument("--die-at", type=int, default=-1, help="worker 1 SIGKILLs itself at this step")
p.add_argument("--sleep", type=float, default=0.0)
p.add_argument("--extra", type=int, default=0, help="conserve mode: one more parameter of this many elements")
args = p.parse_args()

hvd.init()
me, n = hvd.rank(), hvd.size()
with open(os.path.join(args.out, f"pid{me + 1}"), "w") as f:
    f.write(str(os.getpid()))


def coef(m, s, shape):
    g = torch.Generator().manual_seed(7919 * m + s)
    return torch.randint(-3, 4, shape, generator=g).float()


if args.mode == "conserve":
    w = torch.nn.Parameter(torch.arange(24, dtype=torch.float32).reshape(4, 6))
    named = [("w", w)]
    if args.extra:
        named.append(("v", torch.nn.Parameter(torch.zeros(args.extra))))
    opt = torch.optim.SGD([t for _, t in named], lr=float(n))  # (n * (1/n)) == 1.0 exactly for n < 49
    dc = dict(dc_variant="adaptive", dc_lambda=0.0, staleness_policy="none")  # every push applied whole
else:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    named = list(model.named_parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    dc = dict(dc_variant="adaptive")
opt = hvd.DistributedDCOptimizer(opt, named_parameters=named, checkpoint_path=args.ckpt,
                                 checkpoint_every_updates=args.every, **dc)
start = opt.stats()["pushes"]
for s in range(start, args.steps):
    if s == args.die_at and me == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    opt.zero_grad()
    if args.mode == "conserve":
        sum((t * coef(me, s + 1000 * k, t.shape)).sum() for k, (_, t) in enumerate(named)).backward()
    else:
        g = torch.Generator().manual_seed(1000 * me + s)
        x = torch.randn(8, 5, generator=g)
        ((model(x) - x.sum(1, keepdim=True).sin()) ** 2).mean().backward()
    opt.step()
    if args.sleep:
        time.sleep(args.sleep)
hvd.barrier()
opt.pull()
final = torch.cat([t.detach().reshape(-1) for _, t in named])
result = dict(start=start, resumed_from=opt.stats()["resumed_from"], final=final.tolist())
if args.mode == "conserve":
    result["conserved"], result["max_diff"] = True, 0.0
    for k, (_, t) in enumerate(named):
        expected = torch.arange(24, dtype=torch.float32).reshape(4, 6) if k == 0 else torch.zeros(args.extra)
        for m in range(n):
            for s in range(args.steps):
                expected -= coef(m, s + 1000 * k, t.shape)
        result["conserved"] = result["conserved"] and bool(torch.equal(t.detach(), expected))
        result["max_diff"] = max(result["max_diff"], float((t.detach() - expected).abs().max()))
    result["stats"] = opt.stats()
write_result(args.out, me, **result)
hvd.shutdown()

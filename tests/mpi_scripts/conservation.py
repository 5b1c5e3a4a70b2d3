"""Conservation: with lambda = 0 and integer gradients, the final weights equal w0 minus
the sum of every gradient pushed (times the lr the server applied to each push: the lr it
carried, divided by size() under lr_scaling="per_step"): nothing lost, nothing applied twice.
Workers run different numbers of steps and finish at different times.

With ``--momentum mu --async-momentum dana`` each worker also replays its own DANA momentum
(v = g, then v = mu v + g): the server's weights must be w0 minus the sum over every push of
lr v (each worker's momentum is its own, whatever the arrival order), and the weights a
worker pulls at the end the look-ahead w - lr mu sum_i v_i."""

import random
import time

import torch

import hvd_dc as hvd
from common import parser, write_result

p = parser()
p.add_argument("--variant", default="none")
p.add_argument("--compression", default="none")
p.add_argument("--steps", type=int, default=20)
p.add_argument("--lr-schedule", choices=["none", "before", "after"], default="none",
               help="lr cycles 1, 1/2, 1/4 via LambdaLR created before or after wrapping")
p.add_argument("--nan-every", type=int, default=0, help="worker 0 pushes a NaN gradient every k-th step")
p.add_argument("--dtypes", default="float32", help="comma list: parameters of these dtypes")
p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the parameters live")
p.add_argument("--edit", choices=["none", "inplace", "data_after_synchronize"], default="none",
               help="halve the gradients after backward: with tracked in-place ops, or through .data after "
                    "optimizer.synchronize()")
p.add_argument("--passes", type=int, default=1, help="backward_passes_per_step (the loss is split over them)")
p.add_argument("--extra", type=int, default=0, help="one more float32 parameter of this many elements (to be chunked)")
p.add_argument("--policy", default="none", help="staleness_policy; the scalar ones are checked against their formula "
               "with each push's staleness as the server reported it (float64 parameters, tolerance 1e-9)")
p.add_argument("--list-shm", action="store_true", help="record the /dev/shm files this rank has mapped after the first "
               "step (the network-path test checks that no window lives there)")
p.add_argument("--slow-worker", action="store_true", help="worker 0 sleeps 30 ms per step (its pushes get stale)")
p.add_argument("--lr-scaling", default="auto", help="DistributedDCOptimizer's lr_scaling")
p.add_argument("--momentum", type=float, default=0.0, help="the SGD momentum (with --async-momentum dana)")
p.add_argument("--async-momentum", default="auto")
args = p.parse_args()

hvd.init()
me, n = hvd.rank(), hvd.size()
if args.device == "cuda":
    torch.cuda.set_device(hvd.local_rank() % torch.cuda.device_count())
device = torch.device(args.device)
dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
params = {}
for i, dt in enumerate(dtypes):
    params[f"w{i}"] = torch.nn.Parameter((torch.arange(12, dtype=dt).reshape(3, 4) * (1 - me)).to(device))  # differs per worker
    params[f"b{i}"] = torch.nn.Parameter(torch.zeros(5, dtype=dt, device=device))
if args.extra:
    params["v"] = torch.nn.Parameter(torch.arange(args.extra, dtype=torch.float32, device=device) % 97)
named = list(params.items())
per_step = args.lr_scaling in ("auto", "per_step")
# under per_step a Horovod script's lr * size(): the server's (lr * size()) * (1 / size()) is the exact lr
opt = torch.optim.SGD([t for _, t in named], lr=float(n) if per_step else 1.0, momentum=args.momentum)
def cycle(step):
    return 0.5 ** (step % 3)


sched = torch.optim.lr_scheduler.LambdaLR(opt, cycle) if args.lr_schedule == "before" else None
dc_lambda = 0.0 if args.variant != "none" else None
compression = hvd.Compression.fp16 if args.compression == "fp16" else hvd.Compression.none
opt = hvd.DistributedDCOptimizer(opt, named_parameters=named, dc_variant=args.variant, dc_lambda=dc_lambda,
                                 compression=compression, backward_passes_per_step=args.passes,
                                 staleness_policy=args.policy, lr_scaling=args.lr_scaling,
                                 async_momentum=args.async_momentum)
#: the server's factor on every push's lr (hvd_dc/optimizer_options.py: per_step divides by size())
lr_scale = 1.0 / n if per_step else 1.0
dana = args.momentum > 0
assert not dana or args.async_momentum == "dana", "conservation with momentum is checked for DANA only"


def policy_factor(tau):
    """The policies' rules, written here from their formulas (hvd_dc/staleness.py's docstring)."""
    if args.policy == "staleness_lr":
        return 1.0 / max(1, tau)
    if args.policy == "delay_adaptive":
        return 1.0 if tau <= n else 1.0 / tau  # tau_C = M, the number of workers
    assert args.policy == "none", "conservation checks the scalar policies only"
    return 1.0


def staleness_sum():
    st = opt.stats()
    return round(st["staleness_mean"] * max(st["pushes"] - st["rejected_pushes"], 1))
if args.lr_schedule == "after":
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cycle)
w0 = {k: t.detach().clone() for k, t in named}  # the server's w0 (worker 0's), pulled at registration

rng = random.Random(me)
steps = args.steps + 3 * me  # workers finish at different times
applied = {k: torch.zeros(t.shape, dtype=torch.float64) for k, t in named}
velocity = {k: None for k, _ in named}  # this worker's DANA momentum, replayed
scale = 1.0 if args.edit == "none" else 0.5
rejected_expected = 0
taus = []
shm_files = None
for s in range(steps):
    if s == 1 and args.list_shm:  # every window exists by now (allocated at init, used by step 0)
        with open("/proc/self/maps") as maps:  # the shared-memory files this rank has mapped
            shm_files = sorted({line.split(None, 5)[5].strip() for line in maps if "/dev/shm/" in line})
    opt.zero_grad()
    lr = opt.param_groups[0]["lr"]
    poison = args.nan_every and me == 0 and s % args.nan_every == 1
    coefs = {}
    for k, t in named:
        c = torch.randint(-3, 4, t.shape, generator=torch.Generator().manual_seed(1000 * me + s + len(k))).to(t.dtype)
        coefs[k] = c
    for part in range(args.passes):  # the integer coefficients, split over the passes
        loss = 0
        for k, t in named:
            c = coefs[k] if part == 0 else torch.ones_like(coefs[k])
            if part == 0 and args.passes > 1:
                c = c - (args.passes - 1)
            loss = loss + (t * c.to(device)).sum()
        if poison:
            loss = loss * float("nan")
        loss.backward()
    if args.edit == "inplace":
        torch._foreach_mul_([t.grad for _, t in named], 0.5)
    elif args.edit == "data_after_synchronize":
        opt.synchronize()
        for _, t in named:
            t.grad.data.mul_(0.5)
    before = staleness_sum()
    opt.step()
    if poison:
        rejected_expected += 1
    else:
        tau = staleness_sum() - before  # this push's staleness, as the server measured it
        taus.append(tau)
        for k in coefs:
            g = scale * policy_factor(tau) * coefs[k].double()
            if dana:
                velocity[k] = g if velocity[k] is None else args.momentum * velocity[k] + g
                g = velocity[k]
            applied[k] += lr * lr_scale * g
    if sched is not None:
        sched.step()
    if args.slow_worker and me == 0:
        time.sleep(0.03)
    elif rng.random() < 0.3:
        time.sleep(rng.random() * 0.01)

stats = opt.stats()
hvd.barrier()  # every worker has pushed everything
opt.pull()
ok = True
detail = {}
for k, t in named:
    total = hvd.allreduce(applied[k], op=hvd.Sum)
    expected = w0[k].double().cpu() - total
    if dana:  # the pull answers with the look-ahead, lr and mu those of the last push (lr is constant here)
        last = velocity[k] if velocity[k] is not None else torch.zeros_like(applied[k])
        expected = expected - lr * lr_scale * args.momentum * hvd.allreduce(last, op=hvd.Sum)
    got = t.detach().double().cpu()
    detail[k] = float((got - expected).abs().max())
    if args.policy == "none":
        ok = ok and torch.equal(got, expected)
    else:  # factors such as 1/3 are not exact in binary: the server's and this sum round differently
        ok = ok and detail[k] <= 1e-9
total_pushes = int(hvd.allreduce(torch.tensor(steps), op=hvd.Sum))
total_rejected = int(hvd.allreduce(torch.tensor(rejected_expected), op=hvd.Sum))
final = opt.stats()
write_result(args.out, me, shm_files=shm_files, conserved=ok, max_diff=detail, steps=steps, stats=stats,
             server_updates=final["server_updates"], expected_updates=total_pushes - total_rejected,
             rejected=stats["rejected_pushes"], rejected_expected=rejected_expected,
             finite=all(bool(torch.isfinite(t).all()) for _, t in named), size=n,
             is_sgd=isinstance(opt, torch.optim.SGD), device=str(t.device), staleness=taus)
hvd.shutdown()

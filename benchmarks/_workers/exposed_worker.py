"""One hvd_dc worker under ``mpiexec -n S+1``: how much of a step the exchange leaves exposed.

The model is bench_models' sleepy network (``--params`` float32 parameters in ``--layers``
layers whose backward sleeps ``--sleep`` in all, the CPU free, as when a GPU computes).
First the same loop without hvd_dc gives the compute time C of a step (forward, backward,
gradients accumulated in place); then, wrapped with ``overlap=--overlap``, the step time S.
Exposed communication = S / C - 1 (medians over ``--steps`` steps after warm-up).
"""

import argparse
import statistics
import time

import bench_models as bm
import hvd_dc as hvd

p = bm.add_args(argparse.ArgumentParser())
p.add_argument("--measure-steps", type=int, default=20)
args = p.parse_args()
args.model = "sleepy"
hvd.init()
model, opt = bm.build(args, hvd.rank(), hvd.size())
data = bm.Data(args, hvd.rank(), hvd.size())


def timed(step, n):
    out = []
    for i in range(n + 3):
        t0 = time.perf_counter()
        step()
        if i >= 3:  # warm-up: first touches of buffers and windows
            out.append(time.perf_counter() - t0)
    return statistics.median(out), out


def plain_step():
    opt.zero_grad(set_to_none=False)  # gradients accumulate in place, as into hvd_dc's buffers
    bm.backward(model, data)


compute_s, compute_all = timed(plain_step, args.measure_steps)
opt = hvd.DistributedDCOptimizer(opt, named_parameters=model.named_parameters(), dc_variant="adaptive",
                                 overlap=args.overlap)


def dc_step():
    opt.zero_grad()
    bm.backward(model, data)
    opt.step()


step_s, step_all = timed(dc_step, args.measure_steps)
bm.write(args.out, hvd.rank(), compute_s=compute_s, step_s=step_s, exposed=step_s / compute_s - 1,
         compute_all=compute_all, step_all=step_all, stats=opt.stats())

"""hvd_dc worker under ``mpiexec -n N+1`` (rank 0 is the parameter server).

throughput: after a barrier, every worker steps (backward, sleep, push+pull) for
warmup + window seconds and counts the steps that complete inside the window; the sum
over workers / window is server updates per second.
tta: worker 0 evaluates test accuracy after each of its steps (its model holds the
server's newest weights then) and stops everyone (a flag file) at the threshold.
"""

import argparse
import os
import time

import bench_models as bm
import hvd_dc as hvd

args = bm.add_args(argparse.ArgumentParser()).parse_args()
hvd.init()
rank, size = hvd.rank(), hvd.size()
model, opt = bm.build(args, rank, size)
opt = hvd.DistributedDCOptimizer(opt, named_parameters=model.named_parameters(), dc_variant="adaptive",
                                 overlap=args.overlap)
data = bm.Data(args, rank, size)
sleep = bm.loop_sleep(args, rank, size)
stop_file = os.path.join(args.out, "stop")
hvd.barrier()
t0 = bm.now()
steps = counted = 0
reached = None
evals = 0
while True:
    t = bm.now() - t0
    if args.mode == "throughput" and t >= args.warmup + args.window:
        break
    if args.mode == "tta" and (t >= args.max_seconds or reached is not None or os.path.exists(stop_file)):
        break
    opt.zero_grad()
    bm.backward(model, data)
    time.sleep(sleep)
    opt.step()
    steps += 1
    t = bm.now() - t0
    if args.warmup <= t < args.warmup + args.window:
        counted += 1
    if args.mode == "tta" and rank == 0:
        evals += 1
        if data.accuracy(model) >= args.threshold:
            reached = bm.now() - t0
            open(stop_file, "w").close()
bm.write(args.out, rank, steps=steps, counted=counted, window=args.window, sleep=sleep, reached=reached,
         elapsed=bm.now() - t0, evals=evals, stats=opt.stats())
hvd.shutdown()

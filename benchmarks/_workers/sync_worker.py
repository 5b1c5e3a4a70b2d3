"""Synchronous data parallelism for comparison: torch DDP (gloo, loopback TCP) or Horovod.

Launched by mpiexec/mpirun (rank and size come from the launcher's environment), without
hvd_dc. throughput: ``warmup`` seconds' worth of steps, then timed steps for about
``window`` seconds; gradients per second = steps x size / time (a synchronous step
consumes one mini-batch per worker). tta: rank 0 evaluates after every step and
broadcasts the stop flag.
"""

import argparse
import os
import sys
import time

import torch

import bench_models as bm

p = bm.add_args(argparse.ArgumentParser())
p.add_argument("--backend", choices=["ddp", "horovod"], required=True)
p.add_argument("--port", type=int, default=29511)
args = p.parse_args()


def env_int(*names):
    for n in names:
        if n in os.environ:
            return int(os.environ[n])
    raise RuntimeError(f"none of {names} set: launch with mpiexec")


if args.backend == "ddp":
    import torch.distributed as dist

    rank = env_int("PMI_RANK", "OMPI_COMM_WORLD_RANK")
    size = env_int("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=rank, world_size=size)
    args.lr *= size  # synchronous convention: lr scaled by the number of averaged gradients
    model, opt = bm.build(args, rank, size)
    net = torch.nn.parallel.DistributedDataParallel(model)

    def stop_flag(value):
        f = torch.tensor([1.0 if value else 0.0])
        dist.broadcast(f, 0)
        return bool(f.item())

    barrier = dist.barrier
else:
    import horovod.torch as hvd

    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    args.lr *= size
    model, opt = bm.build(args, rank, size)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters())
    net = model

    def stop_flag(value):
        return bool(hvd.broadcast(torch.tensor([1.0 if value else 0.0]), 0, name="stop").item())

    def barrier():
        hvd.allreduce(torch.zeros(1), name="barrier")

data = bm.Data(args, rank, size)
sleep = bm.loop_sleep(args, rank, size)
slowest = args.sleep * max(1.0, args.slow_factor)


def step():
    opt.zero_grad()
    time.sleep(sleep)
    bm.backward(net, data)
    opt.step()


barrier()
if args.mode == "throughput":
    warm = args.warmup_steps or max(2, int(args.warmup / max(slowest, 1e-3)))
    timed = args.steps or max(3, int(args.window / max(slowest, 1e-3)))
    for _ in range(warm):
        step()
    barrier()
    t0 = bm.now()
    for _ in range(timed):
        step()
    barrier()
    elapsed = bm.now() - t0
    bm.write(args.out, rank, steps=timed, elapsed=elapsed, size=size, sleep=sleep,
             grads_per_s=timed * size / elapsed)
else:
    t0 = bm.now()
    reached = None
    steps = 0
    while True:
        step()
        steps += 1
        done = False
        if rank == 0:
            if data.accuracy(model) >= args.threshold:
                reached = bm.now() - t0
                done = True
            elif bm.now() - t0 >= args.max_seconds:
                done = True
        if stop_flag(done):
            break
    bm.write(args.out, rank, steps=steps, reached=reached, elapsed=bm.now() - t0, size=size)
if args.backend == "ddp":
    # Results are on disk; leave without gloo's teardown. In CI both ranks once aborted
    # there ("terminate called without an active exception", exit 6) after a full run, which
    # failed a measurement that had already completed. The barrier keeps a peer from seeing
    # this rank's sockets close in the middle of a collective.
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

"""Fashion-MNIST written as a Horovod script is written, run unchanged on hvd_dc, Horovod or
synchronous data parallelism: only the import differs (``--backend``).

    mpiexec -n 9 python benchmarks/horovod_fashion.py --backend hvd_dc    # 1 server + 8 workers
    mpiexec -n 8 <horovod venv>/python benchmarks/horovod_fashion.py --backend horovod
    HVD_DC_DDP_PORT=29500 mpiexec -n 8 python benchmarks/horovod_fashion.py --backend ddp

What a Horovod user writes (Horovod's examples/pytorch): ``hvd.init()``; the data sharded by
``hvd.rank()``/``hvd.size()``; ``SGD(lr=lr * hvd.size(), momentum=0.9)``;
``hvd.broadcast_parameters``; ``hvd.DistributedOptimizer(opt, named_parameters=...,
op=hvd.Average)``, no other option; each worker trains ``--epochs`` passes over its shard
(the lr divided by 10 at 50 % and by 100 at 75 % of them). ``ddp`` is
``convergence_lib/ddp_as_horovod.py``: Horovod's names on torch.distributed (gradients
averaged over the ranks every step), what Horovod computes.

Model: the 2-conv GroupNorm CNN of the studies (``common.FashionCNN``). Data: the first
``--train-images`` images of a fixed shuffle of the official 60,000 (the Debian package
``dataset-fashion-mnist``), the official test set. ``--slow-factor F`` makes the last
worker a straggler: after each step it sleeps F - 1 times its forward/backward's median
time, measured on a private copy of the model before training. Worker 0
copies the weights every 1/``--snapshots-per-epoch`` of its epochs with a timestamp and,
after training (so that evaluation never slows it), evaluates each copy and the final
weights on the test set; it writes the curve to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.convergence_lib import common  # noqa: E402


def compute_seconds(x: torch.Tensor, y: torch.Tensor, repeats: int = 30) -> float:
    """Median seconds of one forward/backward of ``common.FashionCNN`` on ``(x, y)``, on a
    model of its own (no communication in it)."""
    import statistics

    probe = common.FashionCNN()
    times = []
    for i in range(repeats + 5):
        t0 = time.perf_counter()
        probe.zero_grad()
        F.cross_entropy(probe(x), y).backward()
        if i >= 5:  # the first calls warm up the allocator
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=["hvd_dc", "horovod", "ddp"], default="hvd_dc")
    p.add_argument("--lr", type=float, default=0.01, help="the single-process lr; the script uses lr * hvd.size()")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--train-images", type=int, default=12000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slow-factor", type=float, default=1.0)
    p.add_argument("--snapshots-per-epoch", type=int, default=2)
    p.add_argument("--hvd-dc-options", default="{}", help="hvd_dc only: JSON of DistributedOptimizer keywords to "
                   "add (the study's 'before' runs pass the options hvd_dc used to default to); none by default")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)

    if args.backend == "hvd_dc":
        import hvd_dc as hvd
    elif args.backend == "horovod":
        import horovod.torch as hvd
    else:
        from benchmarks.convergence_lib import ddp_as_horovod as hvd

    hvd.init()  # under hvd_dc, world rank 0 becomes the parameter server here and never returns
    rank, size = hvd.rank(), hvd.size()

    x_all, y_all, x_val, y_val, x_test, y_test = common.load_task("fashion60k")
    x_all, y_all = torch.cat([x_all, x_val]), torch.cat([y_all, y_val])  # the 60,000
    pick = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(1))[: args.train_images]
    x_train, y_train = x_all[pick], y_all[pick]

    torch.manual_seed(args.seed)
    model = common.FashionCNN()
    base_lr = args.lr * size  # Horovod's scaling
    optimizer = torch.optim.SGD(model.parameters(), lr=base_lr, momentum=args.momentum)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    extra = json.loads(args.hvd_dc_options) if args.backend == "hvd_dc" else {}
    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(), op=hvd.Average, **extra)

    straggler = rank == size - 1 and args.slow_factor > 1.0
    # the straggler's extra time per step is (F - 1) x its own forward/backward, timed on a
    # private copy of the model, never the time it waited on the others (that would make a
    # slower network look like a slower worker, and slow synchronous backends most)
    extra_sleep = (args.slow_factor - 1.0) * compute_seconds(x_train[: args.batch], y_train[: args.batch]) \
        if straggler else 0.0
    steps_per_epoch = len(x_train) // size // args.batch
    snapshot_every = max(1, steps_per_epoch // args.snapshots_per_epoch)
    snapshots = []  # (seconds, epochs of this worker, weights)
    hvd.barrier()
    start = time.perf_counter()
    step = 0
    for epoch in range(args.epochs):
        lr = base_lr * (0.01 if epoch >= 3 * args.epochs // 4 else 0.1 if epoch >= args.epochs // 2 else 1.0)
        for group in optimizer.param_groups:
            group["lr"] = lr
        order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(1000 * args.seed + epoch))
        shard = order[rank::size]
        for i in range(steps_per_epoch):
            idx = shard[i * args.batch : (i + 1) * args.batch]
            optimizer.zero_grad()
            F.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
            optimizer.step()
            if straggler:
                time.sleep(extra_sleep)
            step += 1
            if rank == 0 and step % snapshot_every == 0:
                snapshots.append((time.perf_counter() - start, step / steps_per_epoch,
                                  [q.detach().clone() for q in model.parameters()]))
    my_seconds = time.perf_counter() - start
    if args.backend == "hvd_dc":
        optimizer.pull()  # the server's newest weights (the other workers may still be training)
        info = {"rank": rank, "seconds": my_seconds, **{k: optimizer.stats()[k] for k in ("pushes", "staleness_mean",
                                                                                          "server_updates")},
                "extra_sleep_s": extra_sleep}
    else:
        info = {"rank": rank, "seconds": my_seconds, "extra_sleep_s": extra_sleep}
    everyone = hvd.allgather_object(info)  # also waits for the slowest worker
    if args.backend == "hvd_dc":
        optimizer.pull()  # every worker has pushed everything: the final weights
    total_seconds = time.perf_counter() - start
    if rank == 0:
        curve = {"seconds": [], "epoch": [], "err": [], "loss": []}
        final = [q.detach().clone() for q in model.parameters()]
        for t, ep, weights in snapshots + [(total_seconds, float(args.epochs), final)]:
            with torch.no_grad():
                for q, w in zip(model.parameters(), weights):
                    q.copy_(w)
            err, loss = common.evaluate(model, x_test, y_test)
            for key, v in zip(("seconds", "epoch", "err", "loss"), (t, ep, err, loss)):
                curve[key].append(v)
        result = {"backend": args.backend, "workers": size, "args": vars(args), "curve": curve,
                  "final_error": curve["err"][-1], "seconds": total_seconds, "workers_info": everyone}
        print(f"{args.backend}: {size} workers, final test error {curve['err'][-1]:.2f}% after {total_seconds:.1f} s",
              flush=True)
        if args.out:
            with open(args.out + ".tmp", "w") as f:
                json.dump(result, f)
            os.replace(args.out + ".tmp", args.out)
    hvd.shutdown()


if __name__ == "__main__":
    main()

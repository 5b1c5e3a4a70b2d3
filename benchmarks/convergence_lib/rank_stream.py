"""One real-system run with a straggler; every MPI rank runs this file.

Launched by ``benchmarks/convergence_fashion.py`` (part ``mpi``)::

    mpiexec -n M+1 python rank_stream.py --backend hvd_dc --method dc-a --workers M ...   # 1 server + M workers
    mpiexec -n M   python rank_stream.py --backend ddp     --method ssgd --workers M ...
    mpiexec -n M   <horovod python> rank_stream.py --backend horovod --method ssgd ...

Every system trains for the same number of gradients: ``epochs`` x (N / B) minibatches of
B images, N the training subset. The last worker is a straggler: after each step it
sleeps ``slow_factor - 1`` times the time its own step took, so it is ``slow_factor``
times slower than the others.

* ``hvd_dc`` (ASGD, DC-ASGD-a or a staleness policy: ``--method`` as in
  ``common.VARIANT`` / ``common.POLICY``): each worker streams its own shard (minibatches
  r, r+M, ... of the per-epoch shuffle, the next epoch's shuffle when it runs out) and never
  waits for the others; the learning rate follows the *global* progress (server updates /
  (N / B)) through the step schedule; everyone stops when the server has applied the
  budget (a few extra pushes may be in flight).
* ``ddp`` / ``horovod`` (synchronous SGD: the SSGD of the simulator): at step i rank r
  takes minibatch i*M + r of the epoch's shuffle; the averaged gradient is applied; lr
  from the same schedule. Every step waits for the straggler.

Worker 0 (a fast one) copies the weights every 1/``snapshots_per_epoch`` epoch of
progress with a timestamp and evaluates all the copies on the test set after training,
so evaluation never slows training. Worker 0 writes the JSON: the curve (seconds,
epochs of gradients, test error and loss per snapshot) and, for hvd_dc, each worker's
pushes and mean staleness.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.convergence_lib import common  # noqa: E402

TASK = "fashion"


def env_int(*names):
    for n in names:
        if n in os.environ:
            return int(os.environ[n])
    raise RuntimeError(f"none of {names} is set: launch with mpiexec")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backend", required=True, choices=["hvd_dc", "ddp", "horovod"])
    p.add_argument("--method", required=True, choices=common.ALL_METHODS)
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--slow-factor", type=float, default=4.0)
    p.add_argument("--snapshots-per-epoch", type=int, default=2)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)

    if args.backend == "hvd_dc":
        import hvd_dc as hvd

        hvd.init()  # world rank 0 becomes the parameter server and never returns
        rank, size = hvd.rank(), hvd.size()
        allgather = hvd.allgather_object
        barrier = hvd.barrier
    elif args.backend == "horovod":
        import horovod.torch as hvd

        hvd.init()
        rank, size = hvd.rank(), hvd.size()
        allgather = hvd.allgather_object
        barrier = lambda: hvd.allreduce(torch.zeros(1), name="barrier")  # noqa: E731
    else:
        import torch.distributed as dist

        rank = env_int("PMI_RANK", "OMPI_COMM_WORLD_RANK")
        size = env_int("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
        if not args.port:
            raise SystemExit("--backend ddp needs --port (a free TCP port for gloo's rendezvous)")
        port = args.port
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)

        def allgather(obj):
            out = [None] * size
            dist.all_gather_object(out, obj)
            return out

        barrier = dist.barrier
    if size != args.workers:
        raise SystemExit(f"expected {args.workers} workers, got {size}")

    cfg = common.TASKS[TASK]
    x_tr, y_tr, _, _, x_te, y_te = common.load_task(TASK)
    n = len(x_tr)
    per_epoch = n // cfg.batch  # minibatches (gradients) per epoch of data
    budget = args.epochs * per_epoch
    model = common.make_model(TASK, args.seed)  # same init on every rank
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=args.lr)
    if args.backend == "hvd_dc":
        variant = common.VARIANT[args.method]
        opt = hvd.DistributedDCOptimizer(opt, named_parameters=model.named_parameters(), dc_variant=variant,
                                         dc_lambda=common.DC_LAMBDA[variant], dc_momentum=common.DC_MOMENTUM,
                                         staleness_policy=common.policy_of(args.method))
        net = model
    elif args.backend == "horovod":
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters())
        net = model
    else:
        net = torch.nn.parallel.DistributedDataParallel(model)

    straggler = rank == size - 1 and args.slow_factor > 1.0
    snapshot_every = per_epoch / args.snapshots_per_epoch
    snapshots = []  # (seconds, gradients applied, weights)

    def maybe_snapshot(applied, t):
        while rank == 0 and applied >= (len(snapshots) + 1) * snapshot_every and len(snapshots) < args.epochs * \
                args.snapshots_per_epoch:
            snapshots.append((t, (len(snapshots) + 1) * snapshot_every,
                              [q.detach().clone() for q in params]))

    def step(idx, lr):
        for g in opt.param_groups:
            g["lr"] = lr
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = F.cross_entropy(net(x_tr[idx]), y_tr[idx])
        loss.backward()
        opt.step()
        if straggler:
            time.sleep((args.slow_factor - 1.0) * (time.perf_counter() - t0))
        return float(loss.detach())

    barrier()
    start = time.perf_counter()
    steps = 0
    if args.backend == "hvd_dc":
        applied, local_epoch = 0, 0
        while applied < budget:
            mine = common.batch_order(n, cfg.batch, args.seed, local_epoch)[rank::size]
            local_epoch += 1
            for idx in mine:
                step(idx, common.lr_at(args.lr, min(applied // per_epoch, args.epochs - 1), args.epochs))
                steps += 1
                applied = opt.stats()["server_updates"]
                maybe_snapshot(applied, time.perf_counter() - start)
                if applied >= budget:
                    break
        train_seconds = time.perf_counter() - start
        barrier()
        opt.pull()
    else:
        sync_per_epoch = n // (cfg.batch * size)
        for i in range(args.epochs * sync_per_epoch):
            epoch = i // sync_per_epoch
            batches = common.batch_order(n, cfg.batch, args.seed, epoch)
            step(batches[(i % sync_per_epoch) * size + rank], common.lr_at(args.lr, epoch, args.epochs))
            steps += 1
            maybe_snapshot((i + 1) * size, time.perf_counter() - start)
        train_seconds = time.perf_counter() - start
    info = {"rank": rank, "steps": steps, "straggler": straggler}
    if args.backend == "hvd_dc":
        st = opt.stats()
        info.update(pushes=st["pushes"], staleness_mean=st["staleness_mean"], staleness_max=st["staleness_max"],
                    server_updates=st["server_updates"])
    everyone = allgather(info)
    if rank == 0:
        curve = {"seconds": [], "epoch": [], "err": [], "loss": []}
        for t, applied, weights in snapshots:
            with torch.no_grad():
                for q, w in zip(params, weights):
                    q.copy_(w)
            err, loss = common.evaluate(model, x_te, y_te)
            curve["seconds"].append(t)
            curve["epoch"].append(applied / per_epoch)
            curve["err"].append(err)
            curve["loss"].append(loss)
        result = {"curve": curve, "train_seconds": train_seconds, "workers_info": everyone, "backend": args.backend,
                  "gradients_per_epoch": per_epoch}
        with open(args.out + ".tmp", "w") as f:
            json.dump(result, f)
        os.replace(args.out + ".tmp", args.out)
    if args.backend == "hvd_dc":
        hvd.shutdown()
    elif args.backend == "horovod":
        barrier()
    else:
        dist.barrier()
        os._exit(0)  # no gloo teardown (see benchmarks/_workers/sync_worker.py)


if __name__ == "__main__":
    main()

"""One training run on the real distributed system; every MPI rank runs this file.

Launched by ``benchmarks/convergence.py --mode mpi`` as::

    mpiexec -n M+1 python benchmarks/convergence_lib/rank.py --task digits --method dc-a \
        --workers M --seed 0 --lr 0.1 --epochs 16 --out run.json

* ``asgd``/``dc-c``/``dc-a``: ``hvd_dc.init()`` (world rank 0 becomes the parameter
  server) and ``hvd_dc.DistributedDCOptimizer`` with ``dc_variant`` none/constant/adaptive;
  every worker pushes and pulls at its own pace.
* ``ssgd``: synchronous data parallelism. With Horovod installed (``import horovod.torch``
  works) it runs ``horovod.torch.DistributedOptimizer`` under ``mpiexec -n M``; otherwise the
  M workers average their gradients with ``hvd_dc.allreduce`` before every step (rank 0 of
  the ``mpiexec -n M+1`` world idles as hvd_dc's server and serves nothing).
* ``sgd``: ``mpiexec -n 1``: a world of one trains alone.

Worker ``r`` takes minibatches ``r, r+M, r+2M, ...`` of the same per-epoch stream the
simulator uses (:func:`common.batch_order`), so an epoch is one pass over the data. After
each epoch every asynchronous worker pulls the newest weights; worker 0 evaluates the test
set while the others wait at an allreduce (evaluation time is excluded from the clock).
Worker 0 writes the JSON.
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


def horovod_available() -> bool:
    try:
        import horovod.torch  # noqa: F401
    except Exception:
        return False
    return True


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--task", required=True, choices=sorted(common.TASKS))
    p.add_argument("--method", required=True, choices=common.METHODS)
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)

    use_horovod = args.method == "ssgd" and horovod_available()
    if use_horovod:
        import horovod.torch as hvd
    else:
        import hvd_dc as hvd
    hvd.init()  # hvd_dc: world rank 0 becomes the parameter server and never returns
    rank, size = hvd.rank(), hvd.size()
    if size != args.workers:
        raise SystemExit(f"expected {args.workers} workers, got {size}")

    cfg = common.TASKS[args.task]
    x_tr, y_tr, _, _, x_te, y_te = common.load_task(args.task)
    model = common.make_model(args.task, args.seed)  # same init on every rank
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=args.lr)
    if args.method in ("asgd", "dc-c", "dc-a"):
        variant = common.VARIANT[args.method]
        opt = hvd.DistributedDCOptimizer(opt, named_parameters=model.named_parameters(), dc_variant=variant,
                                         dc_lambda=common.DC_LAMBDA[variant], dc_momentum=common.DC_MOMENTUM)
    elif use_horovod:
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters())

    curve = {"epoch": [], "err": [], "loss": [], "train_loss": [], "seconds": []}
    train_seconds = 0.0
    n = len(x_tr)
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = common.lr_at(args.lr, epoch, args.epochs)
        batches = common.batch_order(n, cfg.batch, args.seed, epoch)
        if args.method == "ssgd":
            mine = [batches[i * size + rank] for i in range(len(batches) // size)]
        else:
            mine = batches[rank::size]
        total = 0.0
        for idx in mine:
            opt.zero_grad()
            loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
            loss.backward()
            if args.method == "ssgd" and not use_horovod and size > 1:
                flat = torch.cat([q.grad.reshape(-1) for q in params])
                flat = hvd.allreduce(flat, name="grad")  # average over the workers
                off = 0
                for q in params:
                    q.grad.copy_(flat[off : off + q.numel()].view_as(q))
                    off += q.numel()
            opt.step()
            total += float(loss.detach())
        if hasattr(opt, "pull"):
            opt.pull()  # the server's newest weights
        train_seconds += time.perf_counter() - t0
        if rank == 0:
            err, test_loss = common.evaluate(model, x_te, y_te)
        train_loss = float(hvd.allreduce(torch.tensor(total / max(len(mine), 1)), name="train_loss"))
        if rank == 0:
            curve["epoch"].append(epoch + 1)
            curve["err"].append(err)
            curve["loss"].append(test_loss)
            curve["train_loss"].append(train_loss)
            curve["seconds"].append(train_seconds)
    result = {"curve": curve, "backend": "horovod" if use_horovod else "hvd_dc"}
    if hasattr(opt, "stats") and args.method in ("asgd", "dc-c", "dc-a"):
        result["worker0_stats"] = opt.stats()
    if rank == 0:
        with open(args.out, "w") as f:
            json.dump(result, f)
    hvd.shutdown()


if __name__ == "__main__":
    main()

"""What Horovod computes, on torch.distributed: the few ``horovod.torch`` names a training
script calls, implemented with gloo collectives, so that one Horovod-shaped script runs
under synchronous data parallelism without Horovod installed.

``DistributedOptimizer``'s ``step()`` averages every gradient over the ranks
(``all_reduce`` then ``/ size()``, Horovod's ``op=Average``) and runs the wrapped
optimizer: every rank applies the same averaged gradient to the same weights, one step per
``size()`` minibatches, as Horovod and torch DDP do. Launched by ``mpiexec -n M`` (ranks from
the launcher's environment) with ``HVD_DC_DDP_PORT`` a free TCP port for the rendezvous.
"""

from __future__ import annotations

import os
from typing import Any, List

import torch
import torch.distributed as dist

Average = "average"


def _env_int(*names: str) -> int:
    for n in names:
        if n in os.environ:
            return int(os.environ[n])
    raise RuntimeError(f"none of {names} is set: launch with mpiexec")


def init() -> None:
    rank = _env_int("PMI_RANK", "OMPI_COMM_WORLD_RANK")
    size = _env_int("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
    port = os.environ.get("HVD_DC_DDP_PORT")
    if not port:
        raise RuntimeError("set HVD_DC_DDP_PORT to a free TCP port for gloo's rendezvous")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)


def size() -> int:
    return dist.get_world_size()


def rank() -> int:
    return dist.get_rank()


def broadcast_parameters(state: Any, root_rank: int) -> None:
    for t in state.values():
        dist.broadcast(t.data if isinstance(t, torch.nn.Parameter) else t, src=root_rank)


def allgather_object(obj: Any) -> List[Any]:
    out: List[Any] = [None] * size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    dist.barrier()


def DistributedOptimizer(optimizer: torch.optim.Optimizer, named_parameters=None, op: Any = Average):
    """``optimizer`` whose ``step()`` first replaces each gradient by its average over the ranks."""
    step = optimizer.step
    params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]

    def averaged_step(closure=None):
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad.div_(size())
        return step(closure)

    optimizer.step = averaged_step
    return optimizer


def shutdown() -> None:
    dist.barrier()
    os._exit(0)  # no gloo teardown: it can abort after the results are written (benchmarks/_workers/sync_worker.py)

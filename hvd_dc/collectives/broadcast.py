"""Broadcast among the workers of a process set: ``broadcast(_)(_async)`` and
``broadcast_object``.

``root_rank`` is a worker rank (``hvd.rank()``), as in Horovod even within a process set:
it must be a member of the set (a ``ValueError`` before anything is sent otherwise). The
data phase is one ``Ibcast`` of bytes from the root's set rank. Gradients are Horovod
0.28's: the output gradient averaged over the set, on the root only.
"""

from __future__ import annotations

import pickle
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from mpi4py import MPI

from ..negotiation import Engine, Verdict
from .allreduce import allreduce
from .handles import submit, synchronize
from .ops import Average, as_bytes, check_tensor, host, wants_grad
from .process_sets import global_process_set, resolve

__all__ = ["broadcast", "broadcast_", "broadcast_async", "broadcast_async_", "broadcast_object", "check_root"]


def check_root(root_rank: Any, eng: Engine) -> int:
    """``root_rank`` as a worker rank that is a member of ``eng``'s set (ValueError otherwise)."""
    if isinstance(root_rank, bool) or not isinstance(root_rank, (int, np.integer)):
        raise ValueError(f"root_rank must be a worker rank (an int); got {root_rank!r}")
    if eng.set_rank_of(int(root_rank)) is None:
        if eng.where:
            raise ValueError(f"root_rank {root_rank!r} is not a member of the process set{eng.where} (root_rank is "
                             "the root's hvd.rank(), as in Horovod)")
        raise ValueError(f"root_rank must be a worker rank in 0..{eng.size - 1}; got {root_rank!r}")
    return int(root_rank)


def _submit_broadcast(eng: Engine, tensor: torch.Tensor, root_rank: Any, name: Optional[str],
                      output: Optional[torch.Tensor]) -> int:
    tensor = check_tensor(tensor, "broadcast", False)
    root = check_root(root_rank, eng)
    root_in_set = eng.set_rank_of(root)
    data = host(tensor)
    n = eng.size

    def start(verdict: Verdict) -> List[MPI.Request]:
        if n == 1 or data.numel() == 0:
            return []
        return [eng.comm.Ibcast([as_bytes(data), MPI.BYTE], root=root_in_set)]

    def finish(verdict: Verdict) -> torch.Tensor:
        if output is not None:
            with torch.no_grad():
                output.copy_(data)
            return output
        return data.to(tensor.device)

    return submit(eng, "broadcast", name, [tensor], start, finish, root=root)


def broadcast_async(tensor: torch.Tensor, root_rank: int, name: Optional[str] = None,
                    process_set: Any = global_process_set) -> int:
    """Start broadcasting ``root_rank``'s ``tensor``; the handle's result is a new tensor."""
    return _submit_broadcast(resolve(process_set, "broadcast_async"), tensor, root_rank, name, None)


def broadcast_async_(tensor: torch.Tensor, root_rank: int, name: Optional[str] = None,
                     process_set: Any = global_process_set) -> int:
    """In-place :func:`broadcast_async`."""
    return _submit_broadcast(resolve(process_set, "broadcast_async_"), tensor, root_rank, name, tensor)


class _HorovodBroadcast(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, root_rank, name, process_set):
        ctx.root, ctx.ps = root_rank, process_set
        return synchronize(_submit_broadcast(resolve(process_set, "broadcast"), tensor, root_rank, name, None))

    @staticmethod
    def backward(ctx, grad_output):
        reduced = allreduce(grad_output, op=Average, process_set=ctx.ps)
        if resolve(ctx.ps, "broadcast").worker_rank != ctx.root:
            reduced = reduced * 0
        return reduced, None, None, None


def broadcast(tensor: torch.Tensor, root_rank: int, name: Optional[str] = None,
              process_set: Any = global_process_set) -> torch.Tensor:
    """``root_rank``'s value of ``tensor``, returned as a new tensor on every member
    (autograd flows through, as in Horovod)."""
    eng = resolve(process_set, "broadcast")
    if wants_grad(tensor):
        return _HorovodBroadcast.apply(tensor, root_rank, name, process_set)
    return synchronize(_submit_broadcast(eng, tensor, root_rank, name, None))


def broadcast_(tensor: torch.Tensor, root_rank: int, name: Optional[str] = None,
               process_set: Any = global_process_set) -> torch.Tensor:
    """Overwrite ``tensor`` on every member with its value on ``root_rank``."""
    return synchronize(broadcast_async_(tensor, root_rank, name, process_set))


def broadcast_object(obj: Any = None, root_rank: int = 0, name: Optional[str] = None,
                     process_set: Any = global_process_set) -> Any:
    """``root_rank``'s ``obj`` (any picklable object), returned on every member."""
    eng = resolve(process_set, "broadcast_object")
    root = check_root(root_rank, eng)
    root_in_set = eng.set_rank_of(root)
    mine = eng.worker_rank == root
    payload = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), dtype=np.uint8).copy() \
        if mine else None
    box: Dict[str, np.ndarray] = {}

    def start(verdict: Verdict) -> List[MPI.Request]:
        length = verdict.descriptors[root_in_set].extra  # type: ignore[index,union-attr]
        box["buf"] = payload if payload is not None else np.empty(length, dtype=np.uint8)
        if eng.size == 1 or length == 0:
            return []
        return [eng.comm.Ibcast([box["buf"], MPI.BYTE], root=root_in_set)]

    def finish(verdict: Verdict) -> Any:
        return obj if mine else pickle.loads(box["buf"].tobytes())

    return synchronize(submit(eng, "broadcast_object", name, [], start, finish, root=root,
                              extra=None if payload is None else int(payload.size)))

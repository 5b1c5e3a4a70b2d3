"""Alltoall among the workers of a process set: ``alltoall(_async)``.

Member ``i`` of the set receives rows ``[sum(splits[:i]), sum(splits[:i+1]))`` of every
member's tensor, concatenated in set-rank order; ``splits`` has one entry per member of
the set (without it the first dimension is split equally). The negotiation carries every
member's splits, so each knows what it receives; the data phase is one ``Ialltoallv`` of
bytes. The gradient sends each received row back where it came from.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np
import torch
from mpi4py import MPI

from ..negotiation import Engine, Verdict
from .handles import submit, synchronize
from .ops import as_bytes, check_tensor, host, wants_grad
from .process_sets import global_process_set, resolve

__all__ = ["alltoall", "alltoall_async"]


def _submit_alltoall(eng: Engine, tensor: torch.Tensor, splits: Any, name: Optional[str], both: bool = False) -> int:
    tensor = check_tensor(tensor, "alltoall", False)
    n = eng.size
    data = host(tensor)
    if data.dim() == 0:
        raise ValueError("hvd_dc.alltoall: the tensor must have at least one dimension")
    given = splits is not None
    if splits is None:
        if data.shape[0] % n:
            raise ValueError(f"hvd_dc.alltoall: the first dimension ({data.shape[0]}) must be a multiple of the "
                             f"number of workers{eng.where} ({n}) when splits are not given")
        split_list = [data.shape[0] // n] * n
    else:
        if isinstance(splits, torch.Tensor):
            if splits.dtype != torch.int32:
                raise ValueError(f"hvd_dc.alltoall: splits must be a tensor of int32; got {splits.dtype}")
            split_list = [int(s) for s in splits.reshape(-1).tolist()]
        else:
            split_list = [int(s) for s in splits]
        if len(split_list) != n:
            raise ValueError(f"hvd_dc.alltoall: splits must have one entry per worker{eng.where} ({n}); got "
                             f"{len(split_list)}")
        if any(s < 0 for s in split_list) or sum(split_list) > data.shape[0]:
            raise ValueError(f"hvd_dc.alltoall: the splits {split_list} sum to more than the first dimension "
                             f"({data.shape[0]}) of the tensor")
    row_elems = int(np.prod(data.shape[1:])) if data.dim() > 1 else 1
    row = data.element_size() * row_elems
    result: Dict[str, Any] = {}

    def start(verdict: Verdict) -> List[MPI.Request]:
        me = eng.rank
        recv_rows = [d.extra[me] for d in verdict.descriptors]  # type: ignore[union-attr]
        out = torch.empty((sum(recv_rows),) + tuple(data.shape[1:]), dtype=data.dtype)
        result["out"], result["recv"] = out, recv_rows
        if n == 1:
            out.copy_(data[: split_list[0]])
            return []
        scounts = [s * row for s in split_list]
        rcounts = [s * row for s in recv_rows]
        sdispl = np.concatenate([[0], np.cumsum(scounts)[:-1]]).astype(np.int64)
        rdispl = np.concatenate([[0], np.cumsum(rcounts)[:-1]]).astype(np.int64)
        send = as_bytes(data)
        recv = as_bytes(out)
        if send.size == 0:
            send = np.empty(1, dtype=np.uint8)
        if recv.size == 0:
            recv = np.empty(1, dtype=np.uint8)
        return [eng.comm.Ialltoallv([send, scounts, sdispl, MPI.BYTE], [recv, rcounts, rdispl, MPI.BYTE])]

    def finish(verdict: Verdict) -> Any:
        out = result["out"].to(tensor.device)
        if given or both:
            return out, torch.tensor(result["recv"], dtype=torch.int32)
        return out

    return submit(eng, "alltoall", name, [tensor], start, finish, extra=tuple(split_list))


def alltoall_async(tensor: torch.Tensor, splits: Any = None, name: Optional[str] = None,
                   process_set: Any = global_process_set) -> int:
    """Start :func:`alltoall`; the handle's result is what :func:`alltoall` returns."""
    return _submit_alltoall(resolve(process_set, "alltoall_async"), tensor, splits, name)


class _HorovodAlltoall(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, splits, name, process_set):
        out, received = synchronize(_submit_alltoall(resolve(process_set, "alltoall"), tensor, splits, name,
                                                     both=True))
        ctx.recv, ctx.ps = received, process_set
        ctx.mark_non_differentiable(received)
        return out, received

    @staticmethod
    def backward(ctx, grad_output, *dead):
        # what this member received goes back to where it came from
        return alltoall(grad_output, splits=ctx.recv, process_set=ctx.ps)[0], None, None, None


def alltoall(tensor: torch.Tensor, splits: Any = None, name: Optional[str] = None,
             process_set: Any = global_process_set) -> Any:
    """Send rows ``[sum(splits[:i]), sum(splits[:i+1]))`` of ``tensor`` to member ``i`` of
    the set and return what every member sent to this one, concatenated in set-rank
    order. ``splits``: int32 tensor (or list) of one row count per member; without it the
    first dimension is split equally. With ``splits`` the result is ``(tensor,
    received_splits)``."""
    eng = resolve(process_set, "alltoall")
    if wants_grad(tensor):
        out, received = _HorovodAlltoall.apply(tensor, splits, name, process_set)
        return (out, received) if splits is not None else out
    return synchronize(_submit_alltoall(eng, tensor, splits, name))

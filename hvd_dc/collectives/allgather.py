"""Allgather among the workers of a process set: ``allgather(_async)``,
``grouped_allgather(_async)`` and ``allgather_object``.

Every member's tensor is concatenated along dimension 0 in set-rank order; the first
dimensions may differ (the negotiation gives every member the others'), the other
dimensions must agree. The data phase is one ``Iallgatherv`` of bytes per tensor.
Gradients are Horovod 0.28's: the output gradient averaged over the set, then this
member's slice.
"""

from __future__ import annotations

import pickle
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from mpi4py import MPI

from ..negotiation import Engine, Verdict
from .allreduce import grouped_allreduce
from .handles import submit, synchronize
from .ops import Average, as_bytes, check_tensor, host, wants_grad
from .process_sets import global_process_set, resolve

__all__ = ["allgather", "allgather_async", "grouped_allgather", "grouped_allgather_async", "allgather_object",
           "submit_allgather"]


def submit_allgather(eng: Engine, tensors: Sequence[torch.Tensor], name: Optional[str], kind: str,
                     single: bool = False) -> int:
    """Submit an allgather of ``tensors`` (one collective) to ``eng``."""
    tensors = [check_tensor(t, kind, False) for t in tensors]
    hosts = [host(t) for t in tensors]
    for t in hosts:
        if t.dim() == 0:
            raise ValueError(f"hvd_dc.{kind}: a tensor must have at least one dimension to be gathered "
                             "(reshape a scalar to [1])")
    n = eng.size
    outs: List[torch.Tensor] = []

    def start(verdict: Verdict) -> List[MPI.Request]:
        reqs = []
        for i, t in enumerate(hosts):
            firsts = [d.tensors[i].shape[0] for d in verdict.descriptors]  # type: ignore[union-attr]
            out = torch.empty((sum(firsts),) + tuple(t.shape[1:]), dtype=t.dtype)
            outs.append(out)
            if n == 1:
                out.copy_(t)
                continue
            row = t.element_size() * (int(np.prod(t.shape[1:])) if t.dim() > 1 else 1)
            counts = [f * row for f in firsts]
            displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
            if sum(counts):
                reqs.append(eng.comm.Iallgatherv([as_bytes(t), MPI.BYTE], [as_bytes(out), counts, displs, MPI.BYTE]))
        return reqs

    def finish(verdict: Verdict) -> Any:
        results = [o.to(t.device) for o, t in zip(outs, tensors)]
        return results[0] if single else results

    return submit(eng, kind, name, tensors, start, finish)


def allgather_async(tensor: torch.Tensor, name: Optional[str] = None, process_set: Any = global_process_set) -> int:
    """Start concatenating every member's ``tensor`` along dimension 0 (first dims may
    differ, the others must agree); the handle's result is the concatenation."""
    return submit_allgather(resolve(process_set, "allgather_async"), [tensor], name, "allgather", single=True)


class _HorovodAllgather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, name, process_set):
        ctx.dim, ctx.ps = tensor.shape[0], process_set
        return synchronize(submit_allgather(resolve(process_set, "allgather"), [tensor], name, "allgather",
                                            single=True))

    @staticmethod
    def backward(ctx, grad_output):
        reduced, dims = _reduced_and_dims([grad_output], [ctx.dim], ctx.ps)
        offset = int(dims[0][: resolve(ctx.ps, "allgather").rank].sum())
        return reduced[0].narrow(0, offset, ctx.dim), None, None


def _reduced_and_dims(grads: List[torch.Tensor], mine: List[int], process_set: Any) -> Any:
    """The gradients averaged over the set, and every member's first dimensions."""
    reduced = grouped_allreduce(grads, op=Average, process_set=process_set)
    dims = grouped_allgather([torch.tensor([d], dtype=torch.int64) for d in mine], process_set=process_set)
    return reduced, dims


def allgather(tensor: torch.Tensor, name: Optional[str] = None, process_set: Any = global_process_set) -> torch.Tensor:
    """Concatenate every member's ``tensor`` along dimension 0 (autograd flows through)."""
    eng = resolve(process_set, "allgather")
    if wants_grad(tensor):
        return _HorovodAllgather.apply(tensor, name, process_set)
    return synchronize(submit_allgather(eng, [tensor], name, "allgather", single=True))


def grouped_allgather_async(tensors: Sequence[torch.Tensor], name: Optional[str] = None,
                            process_set: Any = global_process_set) -> int:
    """Start :func:`allgather` of every tensor of ``tensors`` in one collective."""
    return submit_allgather(resolve(process_set, "grouped_allgather_async"), list(tensors), name,
                            "grouped_allgather")


class _HorovodGroupedAllgather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, name, process_set, *tensors):
        ctx.dims, ctx.ps = [t.shape[0] for t in tensors], process_set
        return tuple(synchronize(submit_allgather(resolve(process_set, "grouped_allgather"), list(tensors), name,
                                                  "grouped_allgather")))

    @staticmethod
    def backward(ctx, *grads):
        reduced, dims = _reduced_and_dims(list(grads), ctx.dims, ctx.ps)
        r = resolve(ctx.ps, "grouped_allgather").rank
        return (None, None, *[g.narrow(0, int(d[:r].sum()), n) for g, d, n in zip(reduced, dims, ctx.dims)])


def grouped_allgather(tensors: Sequence[torch.Tensor], name: Optional[str] = None,
                      process_set: Any = global_process_set) -> List[torch.Tensor]:
    """:func:`allgather` of every tensor of ``tensors`` in one collective."""
    eng = resolve(process_set, "grouped_allgather")
    tensors = list(tensors)
    if wants_grad(*tensors):
        return list(_HorovodGroupedAllgather.apply(name, process_set, *tensors))
    return synchronize(submit_allgather(eng, tensors, name, "grouped_allgather"))


def allgather_object(obj: Any, name: Optional[str] = None, process_set: Any = global_process_set) -> List[Any]:
    """A list with every member's ``obj`` (any picklable object), in set-rank order."""
    eng = resolve(process_set, "allgather_object")
    payload = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), dtype=np.uint8).copy()
    n = eng.size
    box: Dict[str, Any] = {}

    def start(verdict: Verdict) -> List[MPI.Request]:
        sizes = [int(d.extra) for d in verdict.descriptors]  # type: ignore[union-attr]
        displs = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        out = np.empty(max(sum(sizes), 1), dtype=np.uint8)
        box.update(sizes=sizes, displs=displs, out=out)
        if n == 1:
            out[: payload.size] = payload
            return []
        return [eng.comm.Iallgatherv([payload, MPI.BYTE], [out, sizes, displs, MPI.BYTE])]

    def finish(verdict: Verdict) -> List[Any]:
        out = box["out"]
        return [pickle.loads(out[d: d + s].tobytes()) for d, s in zip(box["displs"], box["sizes"])]

    return synchronize(submit(eng, "allgather_object", name, [], start, finish, extra=int(payload.size)))

"""Allreduce among the workers of a process set: ``allreduce(_)(_async)`` and
``grouped_allreduce(_)(_async)``, with Horovod's signatures, positional order, dtype
rules (:mod:`.ops`), asynchronous handles (:mod:`.handles`) and gradients.

The data phase is one ``Iallreduce`` per tensor on the set's communicator; 16-bit floats
are reduced in float32, and ``Average`` divides by the set's size after the sum.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

import torch
from mpi4py import MPI

from ..compression import Compression
from ..negotiation import Engine, Verdict
from .handles import submit, synchronize
from .ops import MPI_OPS, WIDE, ReduceOp, check_tensor, compressor, host, resolve_op, scale, wants_grad
from .process_sets import global_process_set, resolve

__all__ = ["allreduce", "allreduce_", "allreduce_async", "allreduce_async_", "grouped_allreduce",
           "grouped_allreduce_", "grouped_allreduce_async", "grouped_allreduce_async_", "submit_allreduce"]


def submit_allreduce(eng: Engine, tensors: Sequence[torch.Tensor], op: ReduceOp, name: Optional[str],
                     prescale_factor: float, postscale_factor: float, outputs: Optional[Sequence] = None,
                     kind: str = "allreduce", single: bool = False) -> int:
    """Submit an allreduce of ``tensors`` (one collective) to ``eng``; the handle's result
    is a list of tensors (``outputs`` when given, written in place), or one with
    ``single``."""
    tensors = [check_tensor(t, kind, True) for t in tensors]
    n = eng.size
    work = []
    for t in tensors:
        h = scale(host(t), prescale_factor)
        work.append(h.to(WIDE[h.dtype]) if h.dtype in WIDE else h)

    def start(verdict: Verdict) -> List[MPI.Request]:
        if n == 1:
            return []
        return [eng.comm.Iallreduce(MPI.IN_PLACE, w.reshape(-1).numpy(), op=MPI_OPS[op]) for w in work if w.numel()]

    def finish(verdict: Verdict) -> Any:
        results = []
        for t, w in zip(tensors, work):
            r = w.to(t.dtype) if w.dtype != t.dtype else w
            r = scale(r, postscale_factor / n if op == ReduceOp.AVERAGE else postscale_factor)
            results.append(r.to(t.device))
        if outputs is not None:
            with torch.no_grad():
                for out, r in zip(outputs, results):
                    out.copy_(r)
            results = list(outputs)
        return results[0] if single else results

    return submit(eng, kind, name, tensors, start, finish, op=op)


def allreduce_async(tensor: torch.Tensor, average: Optional[bool] = None, name: Optional[str] = None,
                    op: Any = None, prescale_factor: float = 1.0, postscale_factor: float = 1.0,
                    process_set: Any = global_process_set) -> int:
    """Start reducing ``tensor`` over the workers of ``process_set``; returns a handle for
    :func:`poll` and :func:`synchronize` (which returns a new tensor). ``op``:
    ``Average`` (default), ``Sum``, ``Min``, ``Max``, ``Product``."""
    eng = resolve(process_set, "allreduce_async")
    op = resolve_op(average, op)
    return submit_allreduce(eng, [tensor], op, name, prescale_factor, postscale_factor, single=True)


def allreduce_async_(tensor: torch.Tensor, average: Optional[bool] = None, name: Optional[str] = None,
                     op: Any = None, prescale_factor: float = 1.0, postscale_factor: float = 1.0,
                     process_set: Any = global_process_set) -> int:
    """In-place :func:`allreduce_async`: :func:`synchronize` writes the result into
    ``tensor`` and returns it."""
    eng = resolve(process_set, "allreduce_async_")
    op = resolve_op(average, op)
    return submit_allreduce(eng, [tensor], op, name, prescale_factor, postscale_factor, outputs=[tensor],
                            single=True)


class _HorovodAllreduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, op, name, prescale_factor, postscale_factor, process_set):
        ctx.op, ctx.pre, ctx.post, ctx.ps = op, prescale_factor, postscale_factor, process_set
        return synchronize(submit_allreduce(resolve(process_set, "allreduce"), [tensor], op, name, prescale_factor,
                                            postscale_factor, single=True))

    @staticmethod
    def backward(ctx, grad_output):
        return allreduce(grad_output, op=ctx.op, prescale_factor=ctx.pre, postscale_factor=ctx.post,
                         process_set=ctx.ps), None, None, None, None, None


def allreduce(tensor: torch.Tensor, average: Optional[bool] = None, name: Optional[str] = None,
              compression: Any = Compression.none, op: Any = None, prescale_factor: float = 1.0,
              postscale_factor: float = 1.0, process_set: Any = global_process_set) -> torch.Tensor:
    """Reduce ``tensor`` over the workers of ``process_set`` and return the result (a new
    tensor; autograd flows through it, as in Horovod). Arguments and their order are
    Horovod's."""
    eng = resolve(process_set, "allreduce")
    op = resolve_op(average, op)
    comp = compressor(compression)
    compressed, cctx = comp.compress(tensor)
    if wants_grad(compressed):
        out = _HorovodAllreduce.apply(compressed, op, name, prescale_factor, postscale_factor, process_set)
    else:
        out = synchronize(submit_allreduce(eng, [compressed], op, name, prescale_factor, postscale_factor,
                                           single=True))
    return comp.decompress(out, cctx)


def allreduce_(tensor: torch.Tensor, average: Optional[bool] = None, name: Optional[str] = None, op: Any = None,
               prescale_factor: float = 1.0, postscale_factor: float = 1.0,
               process_set: Any = global_process_set) -> torch.Tensor:
    """In-place :func:`allreduce`; Horovod's argument order ``(tensor, average, name, op,
    prescale_factor, postscale_factor, process_set)``."""
    return synchronize(allreduce_async_(tensor, average, name, op, prescale_factor, postscale_factor, process_set))


def grouped_allreduce_async(tensors: Sequence[torch.Tensor], average: Optional[bool] = None,
                            name: Optional[str] = None, op: Any = None, prescale_factor: float = 1.0,
                            postscale_factor: float = 1.0, process_set: Any = global_process_set) -> int:
    """Start reducing every tensor of ``tensors`` (one collective); the handle's result is
    a list of new tensors."""
    eng = resolve(process_set, "grouped_allreduce_async")
    return submit_allreduce(eng, list(tensors), resolve_op(average, op), name, prescale_factor, postscale_factor,
                            kind="grouped_allreduce")


def grouped_allreduce_async_(tensors: Sequence[torch.Tensor], average: Optional[bool] = None,
                             name: Optional[str] = None, op: Any = None, prescale_factor: float = 1.0,
                             postscale_factor: float = 1.0, process_set: Any = global_process_set) -> int:
    """In-place :func:`grouped_allreduce_async`."""
    eng = resolve(process_set, "grouped_allreduce_async_")
    tensors = list(tensors)
    return submit_allreduce(eng, tensors, resolve_op(average, op), name, prescale_factor, postscale_factor,
                            outputs=tensors, kind="grouped_allreduce")


class _HorovodGroupedAllreduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, op, name, prescale_factor, postscale_factor, process_set, *tensors):
        ctx.op, ctx.pre, ctx.post, ctx.ps = op, prescale_factor, postscale_factor, process_set
        return tuple(synchronize(submit_allreduce(resolve(process_set, "grouped_allreduce"), list(tensors), op, name,
                                                  prescale_factor, postscale_factor, kind="grouped_allreduce")))

    @staticmethod
    def backward(ctx, *grads):
        return (None, None, None, None, None, *grouped_allreduce(list(grads), op=ctx.op, prescale_factor=ctx.pre,
                                                                 postscale_factor=ctx.post, process_set=ctx.ps))


def grouped_allreduce(tensors: Sequence[torch.Tensor], average: Optional[bool] = None, name: Optional[str] = None,
                      compression: Any = Compression.none, op: Any = None, prescale_factor: float = 1.0,
                      postscale_factor: float = 1.0, process_set: Any = global_process_set) -> List[torch.Tensor]:
    """Reduce every tensor of ``tensors`` in one collective; returns new tensors."""
    eng = resolve(process_set, "grouped_allreduce")
    op = resolve_op(average, op)
    comp = compressor(compression)
    pairs = [comp.compress(t) for t in tensors]
    compressed = [p[0] for p in pairs]
    if wants_grad(*compressed):
        outs = list(_HorovodGroupedAllreduce.apply(op, name, prescale_factor, postscale_factor, process_set,
                                                   *compressed))
    else:
        outs = synchronize(submit_allreduce(eng, compressed, op, name, prescale_factor, postscale_factor,
                                            kind="grouped_allreduce"))
    return [comp.decompress(o, c) for o, (_, c) in zip(outs, pairs)]


def grouped_allreduce_(tensors: Sequence[torch.Tensor], average: Optional[bool] = None, name: Optional[str] = None,
                       op: Any = None, prescale_factor: float = 1.0, postscale_factor: float = 1.0,
                       process_set: Any = global_process_set) -> List[torch.Tensor]:
    """In-place :func:`grouped_allreduce`."""
    return synchronize(grouped_allreduce_async_(tensors, average, name, op, prescale_factor, postscale_factor,
                                                process_set))

"""Horovod's collectives among the workers (the server takes no part), with Horovod's
signatures, dtype handling, asynchronous handles and autograd.

``allreduce(_)(_async)``, ``grouped_allreduce(_)(_async)``, ``allgather(_async)``,
``grouped_allgather(_async)``, ``broadcast(_)(_async)``, ``alltoall(_async)``,
``reducescatter(_async)``, ``grouped_reducescatter(_async)``, ``poll``, ``synchronize``,
``join``, ``barrier``, ``broadcast_object``, ``allgather_object``,
``broadcast_parameters``, ``broadcast_optimizer_state``.

Each call is first agreed on by the workers (:mod:`hvd_dc.negotiation`): a worker that
passes another shape, dtype, device, op, root rank or name than the others, or calls
another collective, gets :class:`~hvd_dc.negotiation.CollectiveMismatch` (a
``HorovodInternalError``, so a ``RuntimeError``) on every worker at once, naming the
tensor and the two workers; a worker that does not arrive within ``HVD_DC_TIMEOUT``
is named in an :class:`~hvd_dc.waiting.HvdDcTimeout` raised on every worker that did.
Local argument errors (a bad ``root_rank``, ``splits``, an unsupported dtype, a name
already in flight) are ``ValueError`` before anything is sent, as in Horovod.

Dtypes: ``uint8``, ``int8``, ``int16``, ``int32``, ``int64``, ``float16``, ``bfloat16``,
``float32``, ``float64`` (and ``bool`` for the data-moving collectives). As in Horovod,
integers are scaled (``prescale_factor``, ``postscale_factor``, ``Average``) in float64 and
cast back (truncating); 16-bit floats are reduced and scaled in float32 and rounded back.

Training never calls these: gradients go through the parameter server. The exception is
:func:`broadcast_parameters` after the optimizer is wrapped: when it overwrites served
parameters, the server's master weights become the broadcast ones too
(:mod:`hvd_dc.weights_sync`).
"""

from __future__ import annotations

import enum
import pickle
import time
import warnings
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from mpi4py import MPI

from .compression import Compression, compression_name
from .context import current as context
from .negotiation import CollectiveMismatch, Descriptor, Engine, Negotiation, TensorInfo, Verdict, engine
from .negotiation import WITHDRAW_GRACE_S
from .waiting import Backoff, HvdDcTimeout
from .weights_sync import sync_served_weights

__all__ = [
    "ReduceOp", "Average", "Sum", "Min", "Max", "Product", "Adasum",
    "ProcessSet", "global_process_set", "add_process_set", "remove_process_set",
    "allreduce", "allreduce_", "allreduce_async", "allreduce_async_",
    "grouped_allreduce", "grouped_allreduce_", "grouped_allreduce_async", "grouped_allreduce_async_",
    "allgather", "allgather_async", "grouped_allgather", "grouped_allgather_async",
    "broadcast", "broadcast_", "broadcast_async", "broadcast_async_",
    "alltoall", "alltoall_async",
    "reducescatter", "reducescatter_async", "grouped_reducescatter", "grouped_reducescatter_async",
    "poll", "synchronize", "join", "barrier",
    "allgather_object", "broadcast_object", "broadcast_parameters", "broadcast_optimizer_state",
]


class ReduceOp(enum.Enum):
    """Reduction of :func:`allreduce` (Horovod's ``hvd.Average``, ``hvd.Sum``, ...)."""

    AVERAGE = "average"
    SUM = "sum"
    MIN = "min"
    MAX = "max"
    PRODUCT = "product"
    ADASUM = "adasum"


Average = ReduceOp.AVERAGE
Sum = ReduceOp.SUM
Min = ReduceOp.MIN
Max = ReduceOp.MAX
Product = ReduceOp.PRODUCT
Adasum = ReduceOp.ADASUM

_MPI_OPS = {ReduceOp.AVERAGE: MPI.SUM, ReduceOp.SUM: MPI.SUM, ReduceOp.MIN: MPI.MIN, ReduceOp.MAX: MPI.MAX,
            ReduceOp.PRODUCT: MPI.PROD}


# -- process sets: only the global one ----------------------------------------------------


class ProcessSet:
    """Horovod's process set. hvd_dc runs every collective over all the workers: only
    :data:`global_process_set` (id 0) exists."""

    def __init__(self, ranks: Optional[Sequence[int]] = None) -> None:
        self.ranks = None if ranks is None else sorted(int(r) for r in ranks)
        self.process_set_id = 0 if ranks is None else None

    def size(self) -> int:
        """Number of workers in the set."""
        return context().workers.Get_size()

    def rank(self) -> int:
        """This worker's rank in the set."""
        return context().workers.Get_rank()

    def included(self) -> bool:
        """Whether this worker belongs to the set (always, for the global set)."""
        return True

    def __repr__(self) -> str:
        return "ProcessSet(global)" if self.ranks is None else f"ProcessSet({self.ranks})"


global_process_set = ProcessSet()


def _process_set_error() -> ValueError:
    return ValueError("hvd_dc runs collectives over all the workers only: pass process_set=hvd.global_process_set "
                      "(the default) or leave it out; process sets other than the global one are not supported")


def add_process_set(process_set: Any) -> ProcessSet:
    """Horovod's dynamic process sets are not supported: always raises ``ValueError``."""
    raise _process_set_error()


def remove_process_set(process_set: Any) -> bool:
    """Horovod's dynamic process sets are not supported: always raises ``ValueError``."""
    raise _process_set_error()


def _check_process_set(process_set: Any) -> None:
    if process_set is None or process_set is global_process_set:
        return
    if getattr(process_set, "process_set_id", None) == 0:  # Horovod's own global_process_set
        return
    raise _process_set_error()


# -- helpers ------------------------------------------------------------------------------

_SUPPORTED = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16, torch.bfloat16,
              torch.float32, torch.float64)
_MOVABLE = _SUPPORTED + (torch.bool,)
_WIDE = {torch.float16: torch.float32, torch.bfloat16: torch.float32}


def _check_tensor(t: Any, what: str, reducing: bool) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"hvd_dc.{what} takes torch tensors; got {type(t).__name__}")
    if t.is_sparse:
        raise ValueError(f"hvd_dc.{what}: sparse tensors are not supported; pass tensor.to_dense()")
    if t.dtype not in (_SUPPORTED if reducing else _MOVABLE):
        raise ValueError(f"hvd_dc.{what}: tensor type {t.dtype} is not supported")
    return t


def _info(t: torch.Tensor) -> TensorInfo:
    return TensorInfo(str(t.dtype).replace("torch.", ""), tuple(t.shape), t.device.type)


def _resolve_op(average: Optional[bool], op: Any, default: ReduceOp = Average) -> ReduceOp:
    if average is not None and op is not None:
        raise ValueError("pass either average= (deprecated in Horovod) or op=, not both")
    if op is None:
        op = default if average is None else (Average if average else Sum)
    if not isinstance(op, ReduceOp):
        raise ValueError(f"op must be hvd_dc.Average, Sum, Min, Max or Product; got {op!r}")
    if op == ReduceOp.ADASUM:
        raise ValueError("hvd_dc does not implement Adasum for collectives; use hvd_dc.Average or hvd_dc.Sum")
    return op


def _scale(t: torch.Tensor, factor: float) -> torch.Tensor:
    """``t * factor`` with Horovod's rules: integers in float64 (truncated back), 16-bit
    floats in float32 (rounded back)."""
    if factor == 1.0:
        return t
    if not t.dtype.is_floating_point:
        return (t.to(torch.float64) * factor).to(t.dtype)
    if t.dtype in _WIDE:
        return (t.to(torch.float32) * factor).to(t.dtype)
    return t * factor


def _host(t: torch.Tensor) -> torch.Tensor:
    """A private contiguous CPU copy."""
    return t.detach().to("cpu", copy=True).contiguous()


def _bytes(t: torch.Tensor) -> np.ndarray:
    """The bytes of a contiguous CPU tensor, as a numpy view (no copy)."""
    flat = t.reshape(-1)
    if flat.numel() == 0:
        return np.empty(0, dtype=np.uint8)
    return flat.view(torch.uint8).numpy() if flat.dtype != torch.uint8 else flat.numpy()


def _identity(op: ReduceOp, dtype: torch.dtype) -> float:
    """What a worker that joined contributes to an allreduce."""
    if op == ReduceOp.PRODUCT:
        return 1
    if op in (ReduceOp.MIN, ReduceOp.MAX):
        info = torch.finfo(dtype) if dtype.is_floating_point else torch.iinfo(dtype)
        return info.max if op == ReduceOp.MIN else info.min
    return 0


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


# -- operations and handles -----------------------------------------------------------------


class _Op:
    """One collective in flight: its negotiation, then its data phase."""

    def __init__(self, eng: Engine, desc: Descriptor, start: Callable[[Verdict], List[MPI.Request]],
                 finish: Callable[[Verdict], Any]) -> None:
        self.eng = eng
        self.desc = desc
        self.start = start
        self.finish = finish
        self.neg = Negotiation(eng, desc)
        self.requests: Optional[List[MPI.Request]] = None
        self.done = False
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.data_deadline: Optional[float] = None

    def advance(self, deadline: Optional[float]) -> bool:
        if self.done:
            return True
        if self.requests is None:
            if not self.neg.step(deadline):
                return False
            verdict = self.neg.verdict
            if verdict.error:  # type: ignore[union-attr]
                cls = HvdDcTimeout if verdict.timeout else CollectiveMismatch  # type: ignore[union-attr]
                self._fail(cls(f"hvd_dc worker {self.eng.rank}: {verdict.error}"))  # type: ignore[union-attr]
                return True
            try:
                self.requests = self.start(verdict)  # type: ignore[arg-type]
            except BaseException as exc:  # nothing was started on this worker: MPI's order is broken
                self.eng.broken = f"the data phase of {self.desc.label} could not start ({exc})"
                self._fail(exc)
                return True
            self.data_deadline = time.monotonic() + self.eng.timeout
        if all(r.Test() for r in self.requests):
            try:
                self.result = self.finish(self.neg.verdict)  # type: ignore[arg-type]
            except BaseException as exc:
                self.error = exc
            self.done = True
            return True
        if self.data_deadline is not None and time.monotonic() > self.data_deadline:
            self.eng.broken = f"the data phase of {self.desc.label} did not complete"
            self._fail(HvdDcTimeout(
                f"hvd_dc worker {self.eng.rank}: {self.desc.label} started on every worker but its data did not "
                f"arrive within {self.eng.timeout:g} s"))
            return True
        return False

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        self.done = True


_ops: Dict[int, _Op] = {}
_queue: List[_Op] = []
_in_flight_names: Dict[Tuple[str, str], int] = {}


def _engine() -> Engine:
    eng = engine(context())
    eng.check_usable()
    return eng


def _progress(deadline: Optional[float]) -> None:
    """Advance queued collectives in order; stop at the first whose negotiation is open
    (a later one may not start its data phase before it)."""
    while _queue:
        op = _queue[0]
        op.advance(deadline)
        if op.requests is None and not op.done:
            return
        if not op.done:
            # data phase started: later negotiations may proceed, data phases start in order
            for later in _queue[1:]:
                later.advance(None)
                if later.requests is None and not later.done:
                    break
            return
        _queue.pop(0)


def _submit(kind: str, name: Optional[str], tensors: Sequence[torch.Tensor], start, finish, op: Any = None,
            root: Optional[int] = None, extra: Any = None) -> int:
    eng = _engine()
    if name is not None:
        if not isinstance(name, str):
            raise ValueError(f"name must be a string; got {name!r}")
        if (kind, name) in _in_flight_names:
            raise ValueError(f"hvd_dc.{kind}: a {kind} named {name!r} is already in flight on this worker; "
                             "synchronize it before submitting another with the same name")
    desc = Descriptor(eng.next_seq(), kind, name, tuple(_info(t) for t in tensors),
                      None if op is None else op.value, root, extra)
    op_ = _Op(eng, desc, start, finish)
    handle = eng.new_handle()
    _ops[handle] = op_
    _queue.append(op_)
    if name is not None:
        _in_flight_names[(kind, name)] = handle
    _progress(None)
    return handle


def poll(handle: int) -> bool:
    """True once the asynchronous collective ``handle`` has completed (then
    :func:`synchronize` returns at once). Never blocks."""
    op = _ops.get(handle)
    if op is None:
        raise ValueError(f"unknown or already synchronized handle {handle!r}")
    _progress(None)
    return op.done


def synchronize(handle: int) -> Any:
    """Wait for the asynchronous collective ``handle`` and return its result (a tensor, or
    a tuple for ``alltoall`` with splits). Raises what the collective raised:
    ``HvdDcTimeout`` naming the worker that did not arrive, ``CollectiveMismatch`` naming
    the difference (both ``HorovodInternalError``, a ``RuntimeError``)."""
    op = _ops.get(handle)
    if op is None:
        raise ValueError(f"unknown or already synchronized handle {handle!r}")
    eng = op.eng
    deadline = time.monotonic() + eng.timeout
    backoff = Backoff()
    try:
        while not op.done:
            _progress(deadline)
            if op.done:
                break
            if time.monotonic() > deadline + (WITHDRAW_GRACE_S if eng.rank != 0 else 0) + 0.05:
                first = _queue[0] if _queue else op
                if eng.rank != 0 and first.requests is None:
                    first._fail(HvdDcTimeout(
                        f"hvd_dc worker {eng.rank}: {first.desc.label} among {eng.size} workers did not complete "
                        f"within {eng.timeout:g} s: worker 0 (world rank 1), which coordinates collectives, did not "
                        "reach it or answer (set HVD_DC_TIMEOUT to wait longer)"))
                    _queue.remove(first)
                    continue
            backoff.wait()
    finally:
        if op.done:
            _ops.pop(handle, None)
            for key in [k for k, h in _in_flight_names.items() if h == handle]:
                del _in_flight_names[key]
            if op in _queue:
                _queue.remove(op)
    if op.error is not None:
        raise op.error
    return op.result


def _run(handle: int) -> Any:
    return synchronize(handle)


# -- allreduce ------------------------------------------------------------------------------------


def _grouped_allreduce_submit(tensors: Sequence[torch.Tensor], op: ReduceOp, name: Optional[str],
                              prescale_factor: float, postscale_factor: float, outputs: Optional[Sequence] = None,
                              kind: str = "allreduce", single: bool = False) -> int:
    tensors = [_check_tensor(t, kind, True) for t in tensors]
    n = context().workers.Get_size()
    work = []
    for t in tensors:
        h = _scale(_host(t), prescale_factor)
        work.append(h.to(_WIDE[h.dtype]) if h.dtype in _WIDE else h)

    def start(verdict: Verdict) -> List[MPI.Request]:
        if n == 1:
            return []
        comm = _engine_comm()
        return [comm.Iallreduce(MPI.IN_PLACE, w.reshape(-1).numpy(), op=_MPI_OPS[op]) for w in work if w.numel()]

    def finish(verdict: Verdict) -> Any:
        results = []
        for t, w in zip(tensors, work):
            r = w.to(t.dtype) if w.dtype != t.dtype else w
            scale = postscale_factor / n if op == ReduceOp.AVERAGE else postscale_factor
            r = _scale(r, scale)
            results.append(r.to(t.device))
        if outputs is not None:
            with torch.no_grad():
                for out, r in zip(outputs, results):
                    out.copy_(r)
            results = list(outputs)
        return results[0] if single else results

    return _submit(kind, name, tensors, start, finish, op=op)


def _engine_comm() -> MPI.Comm:
    return engine(context()).comm


def allreduce_async(tensor: torch.Tensor, average: Optional[bool] = None, name: Optional[str] = None,
                    op: Any = None, prescale_factor: float = 1.0, postscale_factor: float = 1.0,
                    process_set: Any = global_process_set) -> int:
    """Start reducing ``tensor`` over the workers; returns a handle for :func:`poll` and
    :func:`synchronize` (which returns a new tensor). ``op``: ``Average`` (default),
    ``Sum``, ``Min``, ``Max``, ``Product``."""
    _check_process_set(process_set)
    op = _resolve_op(average, op)
    return _grouped_allreduce_submit([tensor], op, name, prescale_factor, postscale_factor, single=True)


def allreduce_async_(tensor: torch.Tensor, average: Optional[bool] = None, name: Optional[str] = None,
                     op: Any = None, prescale_factor: float = 1.0, postscale_factor: float = 1.0,
                     process_set: Any = global_process_set) -> int:
    """In-place :func:`allreduce_async`: :func:`synchronize` writes the result into
    ``tensor`` and returns it."""
    _check_process_set(process_set)
    op = _resolve_op(average, op)
    return _grouped_allreduce_submit([tensor], op, name, prescale_factor, postscale_factor, outputs=[tensor],
                                     single=True)


class _HorovodAllreduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, op, name, prescale_factor, postscale_factor):
        ctx.op, ctx.pre, ctx.post = op, prescale_factor, postscale_factor
        return synchronize(_grouped_allreduce_submit([tensor], op, name, prescale_factor, postscale_factor,
                                                     single=True))

    @staticmethod
    def backward(ctx, grad_output):
        return allreduce(grad_output, op=ctx.op, prescale_factor=ctx.pre, postscale_factor=ctx.post), None, None, \
            None, None


def _wants_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def allreduce(tensor: torch.Tensor, average: Optional[bool] = None, name: Optional[str] = None,
              compression: Any = Compression.none, op: Any = None, prescale_factor: float = 1.0,
              postscale_factor: float = 1.0, process_set: Any = global_process_set) -> torch.Tensor:
    """Reduce ``tensor`` over all workers and return the result (a new tensor; autograd
    flows through it, as in Horovod). Arguments and their order are Horovod's."""
    _check_process_set(process_set)
    op = _resolve_op(average, op)
    comp = Compression.fp16 if compression_name(compression) == "fp16" else Compression.none
    compressed, cctx = comp.compress(tensor)
    if _wants_grad(compressed):
        out = _HorovodAllreduce.apply(compressed, op, name, prescale_factor, postscale_factor)
    else:
        out = synchronize(_grouped_allreduce_submit([compressed], op, name, prescale_factor, postscale_factor,
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
    _check_process_set(process_set)
    return _grouped_allreduce_submit(list(tensors), _resolve_op(average, op), name, prescale_factor,
                                     postscale_factor, kind="grouped_allreduce")


def grouped_allreduce_async_(tensors: Sequence[torch.Tensor], average: Optional[bool] = None,
                             name: Optional[str] = None, op: Any = None, prescale_factor: float = 1.0,
                             postscale_factor: float = 1.0, process_set: Any = global_process_set) -> int:
    """In-place :func:`grouped_allreduce_async`."""
    _check_process_set(process_set)
    tensors = list(tensors)
    return _grouped_allreduce_submit(tensors, _resolve_op(average, op), name, prescale_factor, postscale_factor,
                                     outputs=tensors, kind="grouped_allreduce")


class _HorovodGroupedAllreduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, op, name, prescale_factor, postscale_factor, *tensors):
        ctx.op, ctx.pre, ctx.post = op, prescale_factor, postscale_factor
        return tuple(synchronize(_grouped_allreduce_submit(list(tensors), op, name, prescale_factor,
                                                           postscale_factor, kind="grouped_allreduce")))

    @staticmethod
    def backward(ctx, *grads):
        return (None, None, None, None, *grouped_allreduce(list(grads), op=ctx.op, prescale_factor=ctx.pre,
                                                           postscale_factor=ctx.post))


def grouped_allreduce(tensors: Sequence[torch.Tensor], average: Optional[bool] = None, name: Optional[str] = None,
                      compression: Any = Compression.none, op: Any = None, prescale_factor: float = 1.0,
                      postscale_factor: float = 1.0, process_set: Any = global_process_set) -> List[torch.Tensor]:
    """Reduce every tensor of ``tensors`` in one collective; returns new tensors."""
    _check_process_set(process_set)
    op = _resolve_op(average, op)
    comp = Compression.fp16 if compression_name(compression) == "fp16" else Compression.none
    pairs = [comp.compress(t) for t in tensors]
    compressed = [p[0] for p in pairs]
    if _wants_grad(*compressed):
        outs = list(_HorovodGroupedAllreduce.apply(op, name, prescale_factor, postscale_factor, *compressed))
    else:
        outs = synchronize(_grouped_allreduce_submit(compressed, op, name, prescale_factor, postscale_factor,
                                                     kind="grouped_allreduce"))
    return [comp.decompress(o, c) for o, (_, c) in zip(outs, pairs)]


def grouped_allreduce_(tensors: Sequence[torch.Tensor], average: Optional[bool] = None, name: Optional[str] = None,
                       op: Any = None, prescale_factor: float = 1.0, postscale_factor: float = 1.0,
                       process_set: Any = global_process_set) -> List[torch.Tensor]:
    """In-place :func:`grouped_allreduce`."""
    return synchronize(grouped_allreduce_async_(tensors, average, name, op, prescale_factor, postscale_factor,
                                                process_set))


# -- allgather ------------------------------------------------------------------------------------


def _grouped_allgather_submit(tensors: Sequence[torch.Tensor], name: Optional[str], kind: str,
                              single: bool = False) -> int:
    tensors = [_check_tensor(t, kind, False) for t in tensors]
    hosts = [_host(t) for t in tensors]
    for t in hosts:
        if t.dim() == 0:
            raise ValueError(f"hvd_dc.{kind}: a tensor must have at least one dimension to be gathered "
                             "(reshape a scalar to [1])")
    n = context().workers.Get_size()
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
                reqs.append(_engine_comm().Iallgatherv([_bytes(t), MPI.BYTE],
                                                       [_bytes(out), counts, displs, MPI.BYTE]))
        return reqs

    def finish(verdict: Verdict) -> Any:
        results = [o.to(t.device) for o, t in zip(outs, tensors)]
        return results[0] if single else results

    return _submit(kind, name, tensors, start, finish)


def allgather_async(tensor: torch.Tensor, name: Optional[str] = None, process_set: Any = global_process_set) -> int:
    """Start concatenating every worker's ``tensor`` along dimension 0 (first dims may
    differ, the others must agree); the handle's result is the concatenation."""
    _check_process_set(process_set)
    return _grouped_allgather_submit([tensor], name, "allgather", single=True)


class _HorovodAllgather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, name):
        ctx.dim = tensor.shape[0]
        return synchronize(_grouped_allgather_submit([tensor], name, "allgather", single=True))

    @staticmethod
    def backward(ctx, grad_output):
        reduced = allreduce(grad_output, op=Average)
        dims = allgather(torch.tensor([ctx.dim], dtype=torch.int64))
        offset = int(dims[: context().workers.Get_rank()].sum())
        return reduced.narrow(0, offset, ctx.dim), None


def allgather(tensor: torch.Tensor, name: Optional[str] = None, process_set: Any = global_process_set) -> torch.Tensor:
    """Concatenate every worker's ``tensor`` along dimension 0 (autograd flows through)."""
    _check_process_set(process_set)
    if _wants_grad(tensor):
        return _HorovodAllgather.apply(tensor, name)
    return synchronize(allgather_async(tensor, name))


def grouped_allgather_async(tensors: Sequence[torch.Tensor], name: Optional[str] = None,
                            process_set: Any = global_process_set) -> int:
    """Start :func:`allgather` of every tensor of ``tensors`` in one collective."""
    _check_process_set(process_set)
    return _grouped_allgather_submit(list(tensors), name, "grouped_allgather")


class _HorovodGroupedAllgather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, name, *tensors):
        ctx.dims = [t.shape[0] for t in tensors]
        return tuple(synchronize(_grouped_allgather_submit(list(tensors), name, "grouped_allgather")))

    @staticmethod
    def backward(ctx, *grads):
        reduced = grouped_allreduce(list(grads), op=Average)
        dims = grouped_allgather([torch.tensor([d], dtype=torch.int64) for d in ctx.dims])
        r = context().workers.Get_rank()
        return (None, *[g.narrow(0, int(d[:r].sum()), n) for g, d, n in zip(reduced, dims, ctx.dims)])


def grouped_allgather(tensors: Sequence[torch.Tensor], name: Optional[str] = None,
                      process_set: Any = global_process_set) -> List[torch.Tensor]:
    """:func:`allgather` of every tensor of ``tensors`` in one collective."""
    _check_process_set(process_set)
    tensors = list(tensors)
    if _wants_grad(*tensors):
        return list(_HorovodGroupedAllgather.apply(name, *tensors))
    return synchronize(grouped_allgather_async(tensors, name))


# -- broadcast ------------------------------------------------------------------------------------


def _check_root(root_rank: Any) -> int:
    n = context().workers.Get_size()
    if isinstance(root_rank, bool) or not isinstance(root_rank, (int, np.integer)) or not 0 <= int(root_rank) < n:
        raise ValueError(f"root_rank must be a worker rank in 0..{n - 1}; got {root_rank!r}")
    return int(root_rank)


def _broadcast_submit(tensor: torch.Tensor, root_rank: int, name: Optional[str], output: Optional[torch.Tensor]
                      ) -> int:
    tensor = _check_tensor(tensor, "broadcast", False)
    root_rank = _check_root(root_rank)
    host = _host(tensor)
    n = context().workers.Get_size()

    def start(verdict: Verdict) -> List[MPI.Request]:
        if n == 1 or host.numel() == 0:
            return []
        return [_engine_comm().Ibcast([_bytes(host), MPI.BYTE], root=root_rank)]

    def finish(verdict: Verdict) -> torch.Tensor:
        if output is not None:
            with torch.no_grad():
                output.copy_(host)
            return output
        return host.to(tensor.device)

    return _submit("broadcast", name, [tensor], start, finish, root=root_rank)


def broadcast_async(tensor: torch.Tensor, root_rank: int, name: Optional[str] = None,
                    process_set: Any = global_process_set) -> int:
    """Start broadcasting ``root_rank``'s ``tensor``; the handle's result is a new tensor."""
    _check_process_set(process_set)
    return _broadcast_submit(tensor, root_rank, name, None)


def broadcast_async_(tensor: torch.Tensor, root_rank: int, name: Optional[str] = None,
                     process_set: Any = global_process_set) -> int:
    """In-place :func:`broadcast_async`."""
    _check_process_set(process_set)
    return _broadcast_submit(tensor, root_rank, name, tensor)


class _HorovodBroadcast(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, root_rank, name):
        ctx.root = root_rank
        return synchronize(_broadcast_submit(tensor, root_rank, name, None))

    @staticmethod
    def backward(ctx, grad_output):
        reduced = allreduce(grad_output, op=Average)
        if context().workers.Get_rank() != ctx.root:
            reduced = reduced * 0
        return reduced, None, None


def broadcast(tensor: torch.Tensor, root_rank: int, name: Optional[str] = None,
              process_set: Any = global_process_set) -> torch.Tensor:
    """``root_rank``'s value of ``tensor``, returned as a new tensor on every worker
    (autograd flows through, as in Horovod)."""
    _check_process_set(process_set)
    if _wants_grad(tensor):
        return _HorovodBroadcast.apply(tensor, root_rank, name)
    return synchronize(broadcast_async(tensor, root_rank, name))


def broadcast_(tensor: torch.Tensor, root_rank: int, name: Optional[str] = None,
               process_set: Any = global_process_set) -> torch.Tensor:
    """Overwrite ``tensor`` on every worker with its value on ``root_rank``."""
    return synchronize(broadcast_async_(tensor, root_rank, name, process_set))


# -- alltoall -------------------------------------------------------------------------------------


def _alltoall_submit(tensor: torch.Tensor, splits: Any, name: Optional[str], both: bool = False) -> int:
    tensor = _check_tensor(tensor, "alltoall", False)
    n = context().workers.Get_size()
    host = _host(tensor)
    if host.dim() == 0:
        raise ValueError("hvd_dc.alltoall: the tensor must have at least one dimension")
    given = splits is not None
    if splits is None:
        if host.shape[0] % n:
            raise ValueError(f"hvd_dc.alltoall: the first dimension ({host.shape[0]}) must be a multiple of the "
                             f"number of workers ({n}) when splits are not given")
        split_list = [host.shape[0] // n] * n
    else:
        if isinstance(splits, torch.Tensor):
            if splits.dtype != torch.int32:
                raise ValueError(f"hvd_dc.alltoall: splits must be a tensor of int32; got {splits.dtype}")
            split_list = [int(s) for s in splits.reshape(-1).tolist()]
        else:
            split_list = [int(s) for s in splits]
        if len(split_list) != n:
            raise ValueError(f"hvd_dc.alltoall: splits must have one entry per worker ({n}); got {len(split_list)}")
        if any(s < 0 for s in split_list) or sum(split_list) > host.shape[0]:
            raise ValueError(f"hvd_dc.alltoall: the splits {split_list} sum to more than the first dimension "
                             f"({host.shape[0]}) of the tensor")
    row_elems = int(np.prod(host.shape[1:])) if host.dim() > 1 else 1
    row = host.element_size() * row_elems
    result: Dict[str, Any] = {}

    def start(verdict: Verdict) -> List[MPI.Request]:
        me = context().workers.Get_rank()
        recv_rows = [d.extra[me] for d in verdict.descriptors]  # type: ignore[union-attr]
        out = torch.empty((sum(recv_rows),) + tuple(host.shape[1:]), dtype=host.dtype)
        result["out"], result["recv"] = out, recv_rows
        if n == 1:
            out.copy_(host[: split_list[0]])
            return []
        scounts = [s * row for s in split_list]
        rcounts = [s * row for s in recv_rows]
        sdispl = np.concatenate([[0], np.cumsum(scounts)[:-1]]).astype(np.int64)
        rdispl = np.concatenate([[0], np.cumsum(rcounts)[:-1]]).astype(np.int64)
        send = _bytes(host)
        recv = _bytes(out)
        if send.size == 0:
            send = np.empty(1, dtype=np.uint8)
        if recv.size == 0:
            recv = np.empty(1, dtype=np.uint8)
        return [_engine_comm().Ialltoallv([send, scounts, sdispl, MPI.BYTE], [recv, rcounts, rdispl, MPI.BYTE])]

    def finish(verdict: Verdict) -> Any:
        out = result["out"].to(tensor.device)
        if given or both:
            return out, torch.tensor(result["recv"], dtype=torch.int32)
        return out

    return _submit("alltoall", name, [tensor], start, finish, extra=tuple(split_list))


def alltoall_async(tensor: torch.Tensor, splits: Any = None, name: Optional[str] = None,
                   process_set: Any = global_process_set) -> int:
    """Start :func:`alltoall`; the handle's result is what :func:`alltoall` returns."""
    _check_process_set(process_set)
    return _alltoall_submit(tensor, splits, name)


class _HorovodAlltoall(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, splits, name):
        out, received = synchronize(_alltoall_submit(tensor, splits, name, both=True))
        ctx.recv = received
        ctx.mark_non_differentiable(received)
        return out, received

    @staticmethod
    def backward(ctx, grad_output, *dead):
        # what this worker received goes back to where it came from
        return alltoall(grad_output, splits=ctx.recv)[0], None, None


def alltoall(tensor: torch.Tensor, splits: Any = None, name: Optional[str] = None,
             process_set: Any = global_process_set) -> Any:
    """Send rows ``[sum(splits[:r]), sum(splits[:r+1]))`` of ``tensor`` to worker ``r``
    and return what every worker sent to this one, concatenated in worker order.
    ``splits``: int32 tensor (or list) of one row count per worker; without it the first
    dimension is split equally. With ``splits`` the result is ``(tensor, received_splits)``."""
    _check_process_set(process_set)
    if _wants_grad(tensor):
        out, received = _HorovodAlltoall.apply(tensor, splits, name)
        return (out, received) if splits is not None else out
    return synchronize(_alltoall_submit(tensor, splits, name))


# -- reducescatter ------------------------------------------------------------------------------------


def _rows_of(total: int, n: int) -> List[int]:
    """How many rows of a ``total``-row reduction each worker receives: the first
    ``total % n`` workers one more."""
    return [total // n + (1 if r < total % n else 0) for r in range(n)]


def _grouped_reducescatter_submit(tensors: Sequence[torch.Tensor], op: ReduceOp, name: Optional[str],
                                  prescale_factor: float, postscale_factor: float, kind: str,
                                  single: bool = False) -> int:
    tensors = [_check_tensor(t, kind, True) for t in tensors]
    if op not in (ReduceOp.AVERAGE, ReduceOp.SUM):
        raise ValueError(f"hvd_dc.{kind} supports op=Average or op=Sum; got {op}")
    n = context().workers.Get_size()
    work = []
    for t in tensors:
        if t.dim() == 0:
            raise ValueError(f"hvd_dc.{kind}: a tensor must have at least one dimension to be scattered")
        h = _scale(_host(t), prescale_factor)
        work.append(h.to(_WIDE[h.dtype]) if h.dtype in _WIDE else h)
    outs: List[torch.Tensor] = []

    def start(verdict: Verdict) -> List[MPI.Request]:
        me = context().workers.Get_rank()
        reqs = []
        for w in work:
            rows = _rows_of(w.shape[0], n)
            out = torch.empty((rows[me],) + tuple(w.shape[1:]), dtype=w.dtype)
            outs.append(out)
            if n == 1:
                out.copy_(w)
                continue
            row = int(np.prod(w.shape[1:])) if w.dim() > 1 else 1
            counts = [r_ * row for r_ in rows]
            if sum(counts):
                recv = out.reshape(-1).numpy() if out.numel() else np.empty(0, dtype=w.numpy().dtype)
                reqs.append(_engine_comm().Ireduce_scatter(w.reshape(-1).numpy(), recv, counts, op=MPI.SUM))
        return reqs

    def finish(verdict: Verdict) -> Any:
        results = []
        for t, o in zip(tensors, outs):
            r = o.to(t.dtype) if o.dtype != t.dtype else o
            r = _scale(r, postscale_factor / n if op == ReduceOp.AVERAGE else postscale_factor)
            results.append(r.to(t.device))
        return results[0] if single else results

    return _submit(kind, name, tensors, start, finish, op=op)


def reducescatter_async(tensor: torch.Tensor, name: Optional[str] = None, op: Any = Average,
                        process_set: Any = global_process_set, prescale_factor: float = 1.0,
                        postscale_factor: float = 1.0) -> int:
    """Start :func:`reducescatter`; the handle's result is this worker's rows."""
    _check_process_set(process_set)
    return _grouped_reducescatter_submit([tensor], _resolve_op(None, op), name, prescale_factor, postscale_factor,
                                         "reducescatter", single=True)


class _HorovodReducescatter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, op, name, prescale_factor, postscale_factor):
        ctx.op, ctx.pre, ctx.post = op, prescale_factor, postscale_factor
        return synchronize(_grouped_reducescatter_submit([tensor], op, name, prescale_factor, postscale_factor,
                                                         "reducescatter", single=True))

    @staticmethod
    def backward(ctx, grad_output):
        g = grad_output * (context().workers.Get_size() if ctx.op == ReduceOp.SUM else 1) * ctx.pre * ctx.post
        return allgather(g), None, None, None, None


def reducescatter(tensor: torch.Tensor, name: Optional[str] = None, compression: Any = Compression.none,
                  op: Any = Average, process_set: Any = global_process_set, prescale_factor: float = 1.0,
                  postscale_factor: float = 1.0) -> torch.Tensor:
    """Reduce ``tensor`` over the workers (``Average`` or ``Sum``) and return this
    worker's rows of the result: worker ``r`` gets ``rows // n`` rows, one more for the
    first ``rows % n`` workers, in order. Autograd flows through."""
    _check_process_set(process_set)
    op = _resolve_op(None, op)
    comp = Compression.fp16 if compression_name(compression) == "fp16" else Compression.none
    compressed, cctx = comp.compress(tensor)
    if _wants_grad(compressed):
        out = _HorovodReducescatter.apply(compressed, op, name, prescale_factor, postscale_factor)
    else:
        out = synchronize(_grouped_reducescatter_submit([compressed], op, name, prescale_factor, postscale_factor,
                                                        "reducescatter", single=True))
    return comp.decompress(out, cctx)


def grouped_reducescatter_async(tensors: Sequence[torch.Tensor], name: Optional[str] = None, op: Any = Average,
                                process_set: Any = global_process_set, prescale_factor: float = 1.0,
                                postscale_factor: float = 1.0) -> int:
    """Start :func:`reducescatter` of every tensor of ``tensors`` in one collective."""
    _check_process_set(process_set)
    return _grouped_reducescatter_submit(list(tensors), _resolve_op(None, op), name, prescale_factor,
                                         postscale_factor, "grouped_reducescatter")


class _HorovodGroupedReducescatter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, op, name, prescale_factor, postscale_factor, *tensors):
        ctx.op, ctx.pre, ctx.post = op, prescale_factor, postscale_factor
        return tuple(synchronize(_grouped_reducescatter_submit(list(tensors), op, name, prescale_factor,
                                                               postscale_factor, "grouped_reducescatter")))

    @staticmethod
    def backward(ctx, *grads):
        k = (context().workers.Get_size() if ctx.op == ReduceOp.SUM else 1) * ctx.pre * ctx.post
        return (None, None, None, None, *grouped_allgather([g * k for g in grads]))


def grouped_reducescatter(tensors: Sequence[torch.Tensor], name: Optional[str] = None,
                          compression: Any = Compression.none, op: Any = Average,
                          process_set: Any = global_process_set, prescale_factor: float = 1.0,
                          postscale_factor: float = 1.0) -> List[torch.Tensor]:
    """:func:`reducescatter` of every tensor of ``tensors`` in one collective."""
    _check_process_set(process_set)
    op = _resolve_op(None, op)
    comp = Compression.fp16 if compression_name(compression) == "fp16" else Compression.none
    pairs = [comp.compress(t) for t in tensors]
    compressed = [p[0] for p in pairs]
    if _wants_grad(*compressed):
        outs = list(_HorovodGroupedReducescatter.apply(op, name, prescale_factor, postscale_factor, *compressed))
    else:
        outs = synchronize(_grouped_reducescatter_submit(compressed, op, name, prescale_factor, postscale_factor,
                                                         "grouped_reducescatter"))
    return [comp.decompress(o, c) for o, (_, c) in zip(outs, pairs)]


# -- barrier, join ----------------------------------------------------------------------------------


def barrier(process_set: Any = global_process_set) -> None:
    """Wait until every worker reaches this call (workers only; the server never does).
    A worker missing after ``HVD_DC_TIMEOUT`` is named in the error on all the others."""
    _check_process_set(process_set)
    synchronize(_submit("barrier", None, [], lambda v: [], lambda v: None))


def _drain() -> None:
    """Complete every queued asynchronous collective (their errors stay with their handles)."""
    eng = _engine()
    deadline = time.monotonic() + eng.timeout
    backoff = Backoff()
    while _queue:
        _progress(deadline)
        if _queue and time.monotonic() > deadline + WITHDRAW_GRACE_S + 0.1:
            raise HvdDcTimeout(f"hvd_dc worker {eng.rank}: {_queue[0].desc.label} did not complete within "
                               f"{eng.timeout:g} s")
        backoff.wait()


def join(device: int = -1) -> int:
    """Horovod's ``join``: this worker has no more data. Until every worker has joined it
    takes part in the others' ``allreduce`` and ``grouped_allreduce`` calls with its identity element (zeros for
    ``Sum``/``Average``, so an average still divides by ``size()``); any other collective
    called meanwhile is an error on the workers that called it. Returns the rank of the
    worker that joined last. Each wait for the others' next collective is bounded by
    ``HVD_DC_TIMEOUT``."""
    eng = _engine()
    _drain()
    began: Optional[int] = None
    while True:
        seq = eng.next_seq()
        began = seq if began is None else began
        verdict = eng.negotiate(Descriptor(seq, "join", None, extra=began))
        if verdict.error:
            if verdict.join_continues:
                continue
            cls = HvdDcTimeout if verdict.timeout else CollectiveMismatch
            raise cls(f"hvd_dc worker {eng.rank}: {verdict.error}")
        descs = verdict.descriptors or ()
        active = [d for d in descs if d.kind != "join"]
        if not active:
            last = max(range(len(descs)), key=lambda r: (descs[r].extra, r))
            return int(last)
        _serve_joined_allreduce(eng, active[0])


def _serve_joined_allreduce(eng: Engine, desc: Descriptor) -> None:
    """Take part in another worker's allreduce with identity elements."""
    op = ReduceOp(desc.op)
    reqs = []
    for info in desc.tensors:
        dtype = _dtype(info.dtype)
        wide = _WIDE.get(dtype, dtype)
        buf = torch.full(info.shape, _identity(op, wide), dtype=wide)
        if buf.numel():
            reqs.append((buf, eng.comm.Iallreduce(MPI.IN_PLACE, buf.reshape(-1).numpy(), op=_MPI_OPS[op])))
    deadline = time.monotonic() + eng.timeout
    backoff = Backoff()
    while not all(r.Test() for _, r in reqs):
        if time.monotonic() > deadline:
            eng.broken = f"the data phase of {desc.label} did not complete"
            raise HvdDcTimeout(f"hvd_dc worker {eng.rank}: {desc.label} (served from join()) did not complete")
        backoff.wait()


# -- objects ------------------------------------------------------------------------------------------


def broadcast_object(obj: Any = None, root_rank: int = 0, name: Optional[str] = None,
                     process_set: Any = global_process_set) -> Any:
    """``root_rank``'s ``obj`` (any picklable object), returned on every worker."""
    _check_process_set(process_set)
    root_rank = _check_root(root_rank)
    me = context().workers.Get_rank()
    n = context().workers.Get_size()
    payload = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), dtype=np.uint8).copy() \
        if me == root_rank else None
    box: Dict[str, np.ndarray] = {}

    def start(verdict: Verdict) -> List[MPI.Request]:
        length = verdict.descriptors[root_rank].extra  # type: ignore[index]
        box["buf"] = payload if payload is not None else np.empty(length, dtype=np.uint8)
        if n == 1 or length == 0:
            return []
        return [_engine_comm().Ibcast([box["buf"], MPI.BYTE], root=root_rank)]

    def finish(verdict: Verdict) -> Any:
        return obj if me == root_rank else pickle.loads(box["buf"].tobytes())

    return synchronize(_submit("broadcast_object", name, [], start, finish, root=root_rank,
                               extra=None if payload is None else int(payload.size)))


def allgather_object(obj: Any, name: Optional[str] = None, process_set: Any = global_process_set) -> List[Any]:
    """A list with every worker's ``obj``, in rank order."""
    _check_process_set(process_set)
    payload = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), dtype=np.uint8).copy()
    n = context().workers.Get_size()
    box: Dict[str, Any] = {}

    def start(verdict: Verdict) -> List[MPI.Request]:
        sizes = [int(d.extra) for d in verdict.descriptors]  # type: ignore[union-attr]
        displs = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        out = np.empty(max(sum(sizes), 1), dtype=np.uint8)
        box.update(sizes=sizes, displs=displs, out=out)
        if n == 1:
            out[: payload.size] = payload
            return []
        return [_engine_comm().Iallgatherv([payload, MPI.BYTE], [out, sizes, displs, MPI.BYTE])]

    def finish(verdict: Verdict) -> List[Any]:
        out = box["out"]
        return [pickle.loads(out[d: d + s].tobytes()) for d, s in zip(box["displs"], box["sizes"])]

    return synchronize(_submit("allgather_object", name, [], start, finish, extra=int(payload.size)))


# -- model and optimizer state ------------------------------------------------------------------------


def broadcast_parameters(params: Union[Dict[str, torch.Tensor], Iterable[Tuple[str, torch.Tensor]]],
                         root_rank: int, prefix: Optional[str] = None) -> None:
    """Overwrite, in place, every tensor in ``params`` (a ``state_dict()`` or
    ``named_parameters()``) with ``root_rank``'s values: one grouped broadcast per dtype.

    After ``DistributedOptimizer`` wrapped the model (e.g. a checkpoint loaded into the
    model on rank 0, then broadcast, as Horovod's examples do), the parameters it
    overwrites are served: the parameter server's master weights and every worker's
    ``w_bak(m)`` become the broadcast values too, so the next ``step()`` starts from them
    (:func:`hvd_dc.weights_sync.sync_served_weights`)."""
    root_rank = _check_root(root_rank)
    items = sorted(params.items()) if isinstance(params, dict) else list(params)
    tensors: List[torch.Tensor] = []
    for name, t in items:
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"broadcast_parameters: {name!r} is a {type(t).__name__}, not a tensor")
        tensors.append(t)
    ctx = context()
    if ctx.workers.Get_size() > 1 and tensors:
        by_dtype: Dict[torch.dtype, List[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for dtype, group in sorted(by_dtype.items(), key=lambda kv: str(kv[0])):
            flat = torch.cat([t.detach().reshape(-1).to("cpu") for t in group])
            broadcast_(flat, root_rank, name=f"broadcast_parameters.{str(dtype).replace('torch.', '')}")
            offset = 0
            with torch.no_grad():
                for t in group:
                    k = t.numel()
                    t.copy_(flat[offset: offset + k].view(t.shape))
                    offset += k
    if ctx.role == "worker":
        sync_served_weights(ctx, tensors, _negotiate_served)


def _negotiate_served(touched: Tuple[int, ...]) -> None:
    """Every worker must agree on which served models ``broadcast_parameters`` touched."""
    synchronize(_submit("set_weights", None, [], lambda v: [], lambda v: None, extra=touched))


def broadcast_optimizer_state(optimizer: torch.optim.Optimizer, root_rank: int, prefix: str = "Parameter.",
                              model: Any = None) -> None:
    """Give every worker's optimizer ``root_rank``'s ``state_dict()`` (hyperparameters and
    any state it holds).

    With the optimizer wrapped by ``DistributedOptimizer`` its running state (momentum
    buffers, Adam moments) lives on the parameter server and is *not* changed by this
    call: the server continues with its own. A state loaded into the wrapped optimizer
    (``optimizer.load_state_dict`` from a checkpoint) therefore does not reach the server:
    this warns when that is the case. Exact resumes use ``checkpoint_path=``."""
    root_rank = _check_root(root_rank)
    me = context().workers.Get_rank()
    state = broadcast_object(optimizer.state_dict() if me == root_rank else None, root_rank,
                             name="broadcast_optimizer_state")
    if me != root_rank:
        optimizer.load_state_dict(state)
    wrapped = getattr(optimizer, "_hvd_dc_worker", None) not in (None, "solo")
    if wrapped and state.get("state"):
        warnings.warn(
            "hvd_dc.broadcast_optimizer_state: the optimizer is wrapped, so its running state (momentum, Adam "
            "moments) lives on the parameter server; the state held by the workers' optimizer objects is not sent "
            "to the server, which continues with its own (use DistributedOptimizer(checkpoint_path=...) to resume "
            "exactly)", RuntimeWarning, stacklevel=2)

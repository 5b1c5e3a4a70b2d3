"""Collectives among the workers (metrics, broadcasts), each wait bounded by the timeout.

These are the synchronous, Horovod-shaped helpers that scripts use around training:
``allreduce``, ``allgather``, ``broadcast``, ``broadcast_parameters``,
``broadcast_optimizer_state``, ``broadcast_object``, ``barrier``. They run on the
workers' communicator (the server takes no part) with non-blocking MPI requests polled
against a deadline (:func:`hvd_dc.waiting.wait_request`), so a worker that never arrives
turns into an error instead of a hang.
Training itself never calls them: gradients go through the one-sided window protocol.
"""

from __future__ import annotations

import enum
import pickle
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np
import torch
from mpi4py import MPI

from .compression import Compression, compression_name
from .context import current as context
from .waiting import wait_request

__all__ = [
    "ReduceOp",
    "Average",
    "Sum",
    "Min",
    "Max",
    "Product",
    "Adasum",
    "allreduce",
    "allreduce_",
    "allgather",
    "allgather_object",
    "broadcast",
    "broadcast_",
    "broadcast_object",
    "broadcast_parameters",
    "broadcast_optimizer_state",
    "barrier",
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

_MPI_OPS = {
    ReduceOp.AVERAGE: MPI.SUM,
    ReduceOp.SUM: MPI.SUM,
    ReduceOp.MIN: MPI.MIN,
    ReduceOp.MAX: MPI.MAX,
    ReduceOp.PRODUCT: MPI.PROD,
}


def _collective_timeout(what: str, name: Optional[str]) -> Callable[[], str]:
    ctx = context()

    def describe() -> str:
        label = f"{what}(name={name!r})" if name else what
        return (
            f"worker {ctx.workers.Get_rank()}: {label} among {ctx.workers.Get_size()} workers did not complete "
            f"within {ctx.settings.timeout:g} s: at least one worker did not reach it (set HVD_DC_TIMEOUT to wait longer)"
        )

    return describe


def _check_process_set(process_set: Any) -> None:
    if process_set is not None and getattr(process_set, "process_set_id", 0) != 0:
        raise ValueError("hvd_dc supports only the global process set (all workers)")


# -- tensors <-> MPI buffers ------------------------------------------------------------


def _to_host(tensor: torch.Tensor) -> torch.Tensor:
    """A private contiguous CPU copy with a dtype MPI can reduce."""
    t = tensor.detach().to("cpu", copy=True).contiguous()
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.to(torch.float32)
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    return t


def _resolve_op(average: Optional[bool], op: Optional[ReduceOp]) -> ReduceOp:
    if average is not None and op is not None:
        raise ValueError("pass either average= (deprecated in Horovod) or op=, not both")
    if op is None:
        op = Average if (average is None or average) else Sum
    if op == ReduceOp.ADASUM:
        raise ValueError("hvd_dc does not implement Adasum; use hvd_dc.Average or hvd_dc.Sum")
    if not isinstance(op, ReduceOp):
        raise ValueError(f"op must be hvd_dc.Average, Sum, Min, Max or Product; got {op!r}")
    return op


def allreduce(
    tensor: torch.Tensor,
    average: Optional[bool] = None,
    name: Optional[str] = None,
    compression: Any = Compression.none,
    op: Optional[ReduceOp] = None,
    prescale_factor: float = 1.0,
    postscale_factor: float = 1.0,
    process_set: Any = None,
) -> torch.Tensor:
    """Reduce ``tensor`` over all workers and return the result (a new tensor).

    ``op`` is ``Average`` (default) or ``Sum`` (also ``Min``, ``Max``, ``Product``);
    arguments are Horovod's. Meant for metrics; training uses the parameter server.
    """
    _check_process_set(process_set)
    op = _resolve_op(average, op)
    ctx = context()
    comp = Compression.fp16 if compression_name(compression) == "fp16" else Compression.none
    src = tensor.detach()
    work = src.to("cpu", copy=True).contiguous()
    if prescale_factor != 1.0:
        work.mul_(prescale_factor)
    work, cctx = comp.compress(work)
    host = _to_host(work)
    n = ctx.workers.Get_size()
    if n > 1 and host.numel() > 0:
        arr = host.numpy()
        req = ctx.workers.Iallreduce(MPI.IN_PLACE, arr, op=_MPI_OPS[op])
        wait_request(req, ctx.settings.timeout, _collective_timeout("allreduce", name))
    result = comp.decompress(host.to(work.dtype), cctx)
    if op == ReduceOp.AVERAGE:
        if result.dtype.is_floating_point or result.is_complex():
            result = result / n
        else:
            result = torch.div(result, n, rounding_mode="floor")
    if postscale_factor != 1.0:
        result = result * postscale_factor
    return result.to(device=src.device, dtype=src.dtype)


def allreduce_(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """In-place :func:`allreduce`."""
    with torch.no_grad():
        tensor.copy_(allreduce(tensor, *args, **kwargs))
    return tensor


def allgather(tensor: torch.Tensor, name: Optional[str] = None, process_set: Any = None) -> torch.Tensor:
    """Concatenate every worker's ``tensor`` along dimension 0 (first dims may differ)."""
    _check_process_set(process_set)
    host = _to_host(tensor)
    if host.dim() == 0:
        host = host.reshape(1)
    parts = allgather_object(host, name=name)
    return torch.cat(parts, 0).to(device=tensor.device, dtype=tensor.dtype)


def allgather_object(obj: Any, name: Optional[str] = None, process_set: Any = None) -> List[Any]:
    """A list with every worker's ``obj``, in rank order."""
    _check_process_set(process_set)
    ctx = context()
    payload = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), dtype=np.uint8)
    n = ctx.workers.Get_size()
    sizes = np.zeros(n, dtype=np.int64)
    req = ctx.workers.Iallgather(np.array([payload.size], dtype=np.int64), sizes)
    wait_request(req, ctx.settings.timeout, _collective_timeout("allgather", name))
    displs = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    out = np.empty(int(sizes.sum()), dtype=np.uint8)
    req = ctx.workers.Iallgatherv(payload, [out, sizes, displs, MPI.BYTE])
    wait_request(req, ctx.settings.timeout, _collective_timeout("allgather", name))
    return [pickle.loads(out[d : d + s].tobytes()) for d, s in zip(displs, sizes)]


def _check_root(root_rank: int) -> None:
    n = context().workers.Get_size()
    if not isinstance(root_rank, int) or not 0 <= root_rank < n:
        raise ValueError(f"root_rank must be a worker rank in 0..{n - 1}; got {root_rank!r}")


def _bcast_buffer(arr: np.ndarray, root_rank: int, what: str, name: Optional[str]) -> None:
    ctx = context()
    if ctx.workers.Get_size() > 1 and arr.size > 0:
        req = ctx.workers.Ibcast(arr, root=root_rank)
        wait_request(req, ctx.settings.timeout, _collective_timeout(what, name))


def broadcast_(tensor: torch.Tensor, root_rank: int, name: Optional[str] = None, process_set: Any = None) -> torch.Tensor:
    """Overwrite ``tensor`` on every worker with its value on ``root_rank``."""
    _check_process_set(process_set)
    _check_root(root_rank)
    host = _to_host(tensor)
    _bcast_buffer(host.view(-1).view(torch.uint8).numpy(), root_rank, "broadcast", name)
    with torch.no_grad():
        tensor.copy_(host.to(tensor.dtype))
    return tensor


def broadcast(tensor: torch.Tensor, root_rank: int, name: Optional[str] = None, process_set: Any = None) -> torch.Tensor:
    """``root_rank``'s value of ``tensor``, returned as a new tensor on every worker."""
    return broadcast_(tensor.detach().clone(), root_rank, name=name, process_set=process_set)


def broadcast_object(obj: Any = None, root_rank: int = 0, name: Optional[str] = None, process_set: Any = None) -> Any:
    """``root_rank``'s ``obj`` (any picklable object), returned on every worker."""
    _check_process_set(process_set)
    _check_root(root_rank)
    ctx = context()
    if ctx.workers.Get_size() == 1:
        return obj
    mine = ctx.workers.Get_rank() == root_rank
    payload = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), dtype=np.uint8) if mine else None
    length = np.array([payload.size if mine else 0], dtype=np.int64)
    _bcast_buffer(length, root_rank, "broadcast_object", name)
    buf = payload.copy() if mine else np.empty(int(length[0]), dtype=np.uint8)
    _bcast_buffer(buf, root_rank, "broadcast_object", name)
    return obj if mine else pickle.loads(buf.tobytes())


def broadcast_parameters(
    params: Union[Dict[str, torch.Tensor], Iterable[Tuple[str, torch.Tensor]]], root_rank: int, prefix: Optional[str] = None
) -> None:
    """Overwrite, in place, every tensor in ``params`` (a ``state_dict()`` or
    ``named_parameters()``) with ``root_rank``'s values. One broadcast per dtype."""
    ctx = context()
    _check_root(root_rank)
    items = sorted(params.items()) if isinstance(params, dict) else list(params)
    tensors: List[torch.Tensor] = []
    for name, t in items:
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"broadcast_parameters: {name!r} is a {type(t).__name__}, not a tensor")
        tensors.append(t)
    if ctx.workers.Get_size() == 1 or not tensors:
        return
    by_dtype: Dict[torch.dtype, List[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for dtype, group in sorted(by_dtype.items(), key=lambda kv: str(kv[0])):
        flat = torch.cat([t.detach().reshape(-1).to("cpu") for t in group]) if group else None
        _bcast_buffer(flat.view(torch.uint8).numpy(), root_rank, "broadcast_parameters", None)
        offset = 0
        with torch.no_grad():
            for t in group:
                n = t.numel()
                t.copy_(flat[offset : offset + n].view(t.shape))
                offset += n


def broadcast_optimizer_state(optimizer: torch.optim.Optimizer, root_rank: int, prefix: str = "Parameter.", model: Any = None) -> None:
    """Give every worker's optimizer ``root_rank``'s ``state_dict()``.

    With :func:`hvd_dc.DistributedDCOptimizer` the optimizer's running state (momentum,
    Adam moments) lives on the parameter server; this keeps the workers' hyperparameters
    (and any local state) consistent, as Horovod scripts expect.
    """
    state = broadcast_object(optimizer.state_dict() if context().workers.Get_rank() == root_rank else None, root_rank)
    if context().workers.Get_rank() != root_rank:
        optimizer.load_state_dict(state)


def barrier(process_set: Any = None) -> None:
    """Wait until every worker reaches this call (workers only; the server never does)."""
    _check_process_set(process_set)
    ctx = context()
    if ctx.workers.Get_size() > 1:
        wait_request(ctx.workers.Ibarrier(), ctx.settings.timeout, _collective_timeout("barrier", None))

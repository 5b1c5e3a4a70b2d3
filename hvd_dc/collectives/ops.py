"""What every family of collectives shares: the reduction ops and Horovod's dtype rules.

``ReduceOp`` and its members (Horovod's ``hvd.Average``, ``hvd.Sum``, ...), the dtypes the
collectives take, and the helpers that make a private host copy of a tensor, view its
bytes for MPI, scale it with Horovod's rules (integers in float64 and truncated back,
16-bit floats in float32 and rounded back) and give a joined worker's identity element.
No MPI communication happens here.
"""

from __future__ import annotations

import enum
from typing import Any, Optional

import numpy as np
import torch
from mpi4py import MPI

from ..compression import Compression, compression_name
from ..negotiation import TensorInfo

__all__ = ["ReduceOp", "Average", "Sum", "Min", "Max", "Product", "Adasum", "MPI_OPS", "SUPPORTED", "MOVABLE",
           "WIDE", "check_tensor", "info", "resolve_op", "scale", "host", "as_bytes", "identity", "dtype_of",
           "wants_grad", "compressor"]


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

MPI_OPS = {ReduceOp.AVERAGE: MPI.SUM, ReduceOp.SUM: MPI.SUM, ReduceOp.MIN: MPI.MIN, ReduceOp.MAX: MPI.MAX,
           ReduceOp.PRODUCT: MPI.PROD}

SUPPORTED = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16, torch.bfloat16,
             torch.float32, torch.float64)
MOVABLE = SUPPORTED + (torch.bool,)
WIDE = {torch.float16: torch.float32, torch.bfloat16: torch.float32}


def check_tensor(t: Any, what: str, reducing: bool) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"hvd_dc.{what} takes torch tensors; got {type(t).__name__}")
    if t.is_sparse:
        raise ValueError(f"hvd_dc.{what}: sparse tensors are not supported; pass tensor.to_dense() "
                         "(or use sparse_allreduce_async)")
    if t.dtype not in (SUPPORTED if reducing else MOVABLE):
        raise ValueError(f"hvd_dc.{what}: tensor type {t.dtype} is not supported")
    return t


def info(t: torch.Tensor) -> TensorInfo:
    return TensorInfo(str(t.dtype).replace("torch.", ""), tuple(t.shape), t.device.type)


def resolve_op(average: Optional[bool], op: Any, default: ReduceOp = Average) -> ReduceOp:
    if average is not None and op is not None:
        raise ValueError("pass either average= (deprecated in Horovod) or op=, not both")
    if op is None:
        op = default if average is None else (Average if average else Sum)
    if not isinstance(op, ReduceOp):
        raise ValueError(f"op must be hvd_dc.Average, Sum, Min, Max or Product; got {op!r}")
    if op == ReduceOp.ADASUM:
        raise ValueError("hvd_dc does not implement Adasum for collectives; use hvd_dc.Average or hvd_dc.Sum")
    return op


def scale(t: torch.Tensor, factor: float) -> torch.Tensor:
    """``t * factor`` with Horovod's rules: integers in float64 (truncated back), 16-bit
    floats in float32 (rounded back)."""
    if factor == 1.0:
        return t
    if not t.dtype.is_floating_point:
        return (t.to(torch.float64) * factor).to(t.dtype)
    if t.dtype in WIDE:
        return (t.to(torch.float32) * factor).to(t.dtype)
    return t * factor


def host(t: torch.Tensor) -> torch.Tensor:
    """A private contiguous CPU copy."""
    return t.detach().to("cpu", copy=True).contiguous()


def as_bytes(t: torch.Tensor) -> np.ndarray:
    """The bytes of a contiguous CPU tensor, as a numpy view (no copy)."""
    flat = t.reshape(-1)
    if flat.numel() == 0:
        return np.empty(0, dtype=np.uint8)
    return flat.view(torch.uint8).numpy() if flat.dtype != torch.uint8 else flat.numpy()


def identity(op: ReduceOp, dtype: torch.dtype) -> float:
    """What a worker that joined contributes to an allreduce."""
    if op == ReduceOp.PRODUCT:
        return 1
    if op in (ReduceOp.MIN, ReduceOp.MAX):
        i = torch.finfo(dtype) if dtype.is_floating_point else torch.iinfo(dtype)
        return i.max if op == ReduceOp.MIN else i.min
    return 0


def dtype_of(name: str) -> torch.dtype:
    return getattr(torch, name)


def wants_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def compressor(compression: Any) -> Any:
    """Horovod's ``compression=`` argument as hvd_dc's compressor."""
    return Compression.fp16 if compression_name(compression) == "fp16" else Compression.none

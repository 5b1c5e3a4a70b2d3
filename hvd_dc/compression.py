"""Gradient compression choices, named as in Horovod (``Compression.none|fp16``).

For :func:`hvd_dc.DistributedDCOptimizer` the choice sets the *wire dtype* of the
gradient area in the window (float32/float64 gradients travel as float16; the server
widens them back before delay compensation). Weights always travel at full precision.
For :func:`hvd_dc.allreduce` the tensor is compressed before the reduction and restored
after it, as Horovod does.
"""

from __future__ import annotations

from typing import Any, Tuple

import torch

__all__ = ["Compression", "Compressor", "NoneCompressor", "FP16Compressor", "compression_name"]


class Compressor:
    """Interface: ``compress(tensor) -> (tensor, ctx)``, ``decompress(tensor, ctx) -> tensor``."""

    name = "base"

    @staticmethod
    def compress(tensor: torch.Tensor) -> Tuple[torch.Tensor, Any]:
        raise NotImplementedError

    @staticmethod
    def decompress(tensor: torch.Tensor, ctx: Any) -> torch.Tensor:
        raise NotImplementedError


class NoneCompressor(Compressor):
    """No compression."""

    name = "none"

    @staticmethod
    def compress(tensor: torch.Tensor) -> Tuple[torch.Tensor, Any]:
        return tensor, None

    @staticmethod
    def decompress(tensor: torch.Tensor, ctx: Any) -> torch.Tensor:
        return tensor


class FP16Compressor(Compressor):
    """Floating tensors wider than 16 bits travel as float16."""

    name = "fp16"

    @staticmethod
    def compress(tensor: torch.Tensor) -> Tuple[torch.Tensor, Any]:
        if tensor.dtype in (torch.float32, torch.float64):
            return tensor.to(torch.float16), tensor.dtype
        return tensor, None

    @staticmethod
    def decompress(tensor: torch.Tensor, ctx: Any) -> torch.Tensor:
        return tensor if ctx is None else tensor.to(ctx)


class Compression:
    """Namespace as in Horovod: ``Compression.none`` and ``Compression.fp16``."""

    none = NoneCompressor
    fp16 = FP16Compressor


def compression_name(compression: Any) -> str:
    """'none' or 'fp16' for ours or Horovod's compressor classes; ValueError otherwise."""
    if compression is None:
        return "none"
    name = getattr(compression, "name", None)
    if name in ("none", "fp16") and isinstance(compression, type) and issubclass(compression, Compressor):
        return name
    cls_name = getattr(compression, "__name__", type(compression).__name__)
    if cls_name == "NoneCompressor":
        return "none"
    if cls_name == "FP16Compressor":
        return "fp16"
    raise ValueError(
        f"compression must be hvd_dc.Compression.none or hvd_dc.Compression.fp16; got {compression!r}"
    )

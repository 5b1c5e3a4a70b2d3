"""Delay-compensation math of DC-ASGD, with no MPI and no I/O.

This module owns the one formula the project is about (Zheng et al., ICML 2017, Eq. 10
and Algorithm 2) and nothing else::

    g_dc = g + lambda_t * g * g * (w - w_bak(m))

``g`` is the gradient worker ``m`` computed on the weights ``w_bak(m)`` it pulled, and
``w`` the server's weights when the gradient arrives. The server hands ``g_dc`` to the
wrapped optimizer; with plain SGD the result is Eq. 10, ``w <- w - eta * g_dc``.

``lambda_t`` depends on the variant:

* ``"constant"`` (DC-ASGD-c): ``lambda_t = lambda0``.
* ``"adaptive"`` (DC-ASGD-a): element-wise
  ``MeanSquare <- m * MeanSquare + (1 - m) * g * g`` (updated with the arriving gradient
  first), then ``lambda_t = lambda0 / sqrt(MeanSquare + eps)``.
* ``"none"``: ``g_dc = g`` (plain ASGD).

Evaluation order is fixed and documented so that a plain reference written from the
formula reproduces the vectorised path bit for bit::

    ms     = (m * ms) + ((1 - m) * (g * g))
    lam    = lambda0 / sqrt(ms + eps)                      # adaptive only
    g_dc   = g + (((lam * g) * g) * (w - w_bak))

``sqrt`` is the correctly rounded IEEE square root. On the CPU it is numpy's: measured
with ``python benchmarks/sqrt_rounding.py`` (torch 2.13), ``torch.sqrt`` on CPU tensors
differs from the correctly rounded result for about 17% of float32 inputs (also with
``ATEN_CPU_CAPABILITY`` set to default, avx2 or avx512), while numpy, the fused C kernels
(:mod:`hvd_dc.kernels`) and CUDA's default ``sqrt`` round correctly, so every path of
hvd_dc gives the same bits.

Two implementations live here, as in ``torch/optim/sgd.py``: :func:`compensate_reference`,
a direct transcription used as documentation and for cross-checks, and
:class:`DelayCompensator`, the vectorised path the server runs on flat buffers with
scratch allocated once per segment (no allocation per update).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = [
    "DCVariant",
    "DCOptions",
    "VARIANTS",
    "PAPER_LAMBDA",
    "default_lambda",
    "validate_dc_options",
    "compensate_reference",
    "DelayCompensator",
    "exact_sqrt_",
    "STALENESS_POLICIES",
    "validate_staleness_policy",
    "ASYNC_MOMENTUM",
    "compute_dtype",
]


class DCVariant(enum.IntEnum):
    """Which ``lambda_t`` (the module docstring); the value is the fused kernels' code."""

    NONE = 0
    CONSTANT = 1
    ADAPTIVE = 2

    @property
    def label(self) -> str:
        """The name users pass as ``dc_variant``."""
        return self.name.lower()

    @classmethod
    def parse(cls, value: Union[str, "DCVariant"]) -> "DCVariant":
        if isinstance(value, cls):
            return value
        for v in cls:
            if v.label == value:
                return v
        raise ValueError(f"dc_variant must be one of {', '.join(repr(v) for v in VARIANTS)}; got {value!r}")


#: Accepted values of ``dc_variant``.
VARIANTS = ("adaptive", "constant", "none")

#: lambda0 the paper used on CIFAR-10 for each variant (Section 6).
PAPER_LAMBDA = {"constant": 0.04, "adaptive": 2.0, "none": 0.0}


def default_lambda(variant: Union[str, DCVariant]) -> float:
    """The paper's lambda0 for ``variant`` (0.04 constant, 2.0 adaptive, 0 for none)."""
    return PAPER_LAMBDA[DCVariant.parse(variant).label]


#: Accepted values of ``staleness_policy`` (the rules: :mod:`hvd_dc.staleness`).
STALENESS_POLICIES = ("none", "staleness_lr", "delay_adaptive", "gap_aware")


def validate_staleness_policy(policy: Any) -> str:
    """Return ``policy`` if it is one of :data:`STALENESS_POLICIES`, else raise ``ValueError``."""
    if policy not in STALENESS_POLICIES:
        raise ValueError(
            f"staleness_policy must be one of {', '.join(repr(p) for p in STALENESS_POLICIES)}; got {policy!r}"
        )
    return policy


#: Accepted values of ``async_momentum`` (the rules: :mod:`hvd_dc.async_momentum`).
ASYNC_MOMENTUM = ("shared", "dana", "reduced")


@dataclasses.dataclass(frozen=True)
class DCOptions:
    """The delay-compensation options of one served model, checked once by :meth:`create`.

    ``momentum`` and ``eps`` are the adaptive variant's MeanSquare momentum ``m`` and
    epsilon; ``mean_square`` is ``"per_worker"`` (one MeanSquare per worker, as the
    authors' server kept) or ``"global"``. ``staleness_policy`` damps the compensated
    gradient by the push's staleness or gap (:mod:`hvd_dc.staleness`; ``"none"``: not at
    all). ``async_momentum`` is what the server does with the optimizer's momentum under
    asynchrony (:mod:`hvd_dc.async_momentum`), ``lr_scale`` the factor the server applies
    to every push's learning rate (``1/size()`` when a push is ``1/size()`` of a Horovod
    step: :mod:`hvd_dc.optimizer_options`).
    """

    variant: DCVariant = DCVariant.ADAPTIVE
    lambda0: float = 2.0
    momentum: float = 0.95
    eps: float = 1e-7
    mean_square: str = "per_worker"
    staleness_policy: str = "none"
    async_momentum: str = "shared"
    lr_scale: float = 1.0

    @classmethod
    def create(
        cls,
        variant: Union[str, DCVariant] = "adaptive",
        dc_lambda: Optional[float] = None,
        momentum: float = 0.95,
        eps: float = 1e-7,
        mean_square: str = "per_worker",
        staleness_policy: str = "none",
        async_momentum: str = "shared",
        lr_scale: float = 1.0,
    ) -> "DCOptions":
        """Check the user's options (``ValueError`` naming the bad one); ``dc_lambda=None``
        selects the paper's value for the variant."""
        v = DCVariant.parse(variant)
        lam = default_lambda(v) if dc_lambda is None else dc_lambda
        if isinstance(lam, bool) or not isinstance(lam, (int, float)):
            raise ValueError(f"dc_lambda must be a real number or None; got {dc_lambda!r}")
        lam = float(lam)
        if not math.isfinite(lam) or lam < 0:
            raise ValueError(f"dc_lambda must be finite and >= 0; got {dc_lambda!r}")
        if v is DCVariant.NONE and lam != 0.0:
            raise ValueError(f"dc_variant='none' is plain ASGD and takes no dc_lambda; got {dc_lambda!r}")
        if isinstance(momentum, bool) or not (isinstance(momentum, (int, float)) and 0.0 <= float(momentum) < 1.0):
            raise ValueError(f"dc_momentum must be in [0, 1); got {momentum!r}")
        if isinstance(eps, bool) or not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
            raise ValueError(f"dc_eps must be a finite number > 0; got {eps!r}")
        if mean_square not in ("per_worker", "global"):
            raise ValueError(f"dc_mean_square must be 'per_worker' or 'global'; got {mean_square!r}")
        if async_momentum not in ASYNC_MOMENTUM:
            raise ValueError(f"async_momentum must be one of {', '.join(repr(a) for a in ASYNC_MOMENTUM)}; "
                             f"got {async_momentum!r}")
        if isinstance(lr_scale, bool) or not (isinstance(lr_scale, (int, float)) and math.isfinite(lr_scale)
                                               and lr_scale > 0):
            raise ValueError(f"lr_scale must be a finite number > 0; got {lr_scale!r}")
        return cls(v, lam, float(momentum), float(eps), mean_square, validate_staleness_policy(staleness_policy),
                   async_momentum, float(lr_scale))

    @property
    def adaptive(self) -> bool:
        return self.variant is DCVariant.ADAPTIVE

    def as_arguments(self) -> Dict[str, Any]:
        """The options under the names ``DistributedDCOptimizer`` takes them."""
        return {"dc_variant": self.variant.label, "dc_lambda": self.lambda0, "dc_momentum": self.momentum,
                "dc_eps": self.eps, "dc_mean_square": self.mean_square, "staleness_policy": self.staleness_policy,
                "async_momentum": self.async_momentum, "lr_scale": self.lr_scale}


def validate_dc_options(
    variant: str,
    dc_lambda: Optional[float],
    dc_momentum: float,
    dc_eps: float,
    mean_square: str = "per_worker",
) -> float:
    """Check the delay-compensation options and return the effective lambda0
    (:meth:`DCOptions.create`, for callers that want the number only)."""
    return DCOptions.create(variant, dc_lambda, dc_momentum, dc_eps, mean_square).lambda0


def compensate_reference(
    grad: torch.Tensor,
    weights: torch.Tensor,
    backup: torch.Tensor,
    variant: Union[str, DCVariant],
    lambda0: float,
    mean_square: Optional[torch.Tensor] = None,
    momentum: float = 0.95,
    eps: float = 1e-7,
) -> torch.Tensor:
    """Return the delay-compensated gradient, written straight from the formula.

    ``mean_square`` (adaptive only) is updated in place. Allocates freely; meant for
    reading and for cross-checking :class:`DelayCompensator`, not for the hot path.
    """
    variant = DCVariant.parse(variant)
    if variant is DCVariant.NONE:
        return grad.clone()
    if variant is DCVariant.CONSTANT:
        lam = lambda0
    else:
        if mean_square is None:
            raise ValueError("the adaptive variant needs a mean_square buffer")
        mean_square.copy_((momentum * mean_square) + ((1.0 - momentum) * (grad * grad)))
        lam = lambda0 / exact_sqrt_(mean_square + eps)
    return grad + (((lam * grad) * grad) * (weights - backup))


class DelayCompensator:
    """Vectorised DC-ASGD compensation over flat tensors, one call per dtype segment.

    It owns the MeanSquare buffers of the adaptive variant: one per worker
    (``options.mean_square="per_worker"``, the default and what the authors' server did)
    or one shared by all workers (``"global"``), allocated at construction. Two work buffers per
    segment are allocated on that segment's first :meth:`compensate` and reused; after that
    it allocates nothing.

    ``segment_sizes`` lists the element count of each flat segment; ``dtypes`` their dtypes.
    For 16-bit floating segments the MeanSquare buffer and the arithmetic are float32, so
    ``g * g`` neither underflows nor overflows; the result is rounded back once.
    """

    def __init__(
        self,
        options: DCOptions,
        num_workers: int,
        segment_sizes: Sequence[int],
        dtypes: Sequence[torch.dtype],
        device: torch.device | str = "cpu",
    ) -> None:
        self.options = options
        self.variant = options.variant
        self.lambda0 = options.lambda0
        self.momentum = options.momentum
        self.eps = options.eps
        self.mean_square_mode = options.mean_square
        self.num_workers = int(num_workers)
        self._compute_dtypes = [compute_dtype(dt) for dt in dtypes]
        self._sizes = list(segment_sizes)
        self._device = device
        # two segment-sized work buffers each, made on a segment's first compensate(): the
        # server's fused kernels (hvd_dc.kernels) never call it for float32/float64 segments
        self._scratch: List[Optional[Tuple[torch.Tensor, torch.Tensor]]] = [None] * len(self._sizes)
        self._lambda0_t = [torch.tensor(self.lambda0, dtype=cd, device=device) for cd in self._compute_dtypes]
        self.mean_square: Dict[int, list] = {}
        if options.adaptive:
            slots = range(self.num_workers) if options.mean_square == "per_worker" else [0]
            for slot in slots:
                self.mean_square[slot] = [
                    torch.zeros(n, dtype=cd, device=device)
                    for n, cd in zip(segment_sizes, self._compute_dtypes)
                ]

    def _work_buffers(self, segment: int) -> Tuple[torch.Tensor, torch.Tensor]:
        buffers = self._scratch[segment]
        if buffers is None:
            n, dtype = self._sizes[segment], self._compute_dtypes[segment]
            buffers = (torch.empty(n, dtype=dtype, device=self._device), torch.empty(n, dtype=dtype, device=self._device))
            self._scratch[segment] = buffers
        return buffers

    def mean_square_of(self, worker: int) -> list:
        """The MeanSquare buffers (one per segment) used for ``worker``'s gradients."""
        return self.mean_square[worker if self.mean_square_mode == "per_worker" else 0]

    def compensate(
        self,
        segment: int,
        worker: int,
        grad: torch.Tensor,
        weights: torch.Tensor,
        backup: torch.Tensor,
        out: torch.Tensor,
    ) -> None:
        """Write ``g + lambda_t * g*g*(w - w_bak)`` for one flat segment into ``out``.

        ``grad``, ``weights``, ``backup`` and ``out`` are 1-D tensors of the segment's
        length; ``out`` may alias ``grad``. ``worker`` selects the MeanSquare buffer.
        """
        if self.variant is DCVariant.NONE:
            if out.data_ptr() != grad.data_ptr():
                out.copy_(grad)
            return
        cd = self._compute_dtypes[segment]
        g = grad if grad.dtype == cd else grad.to(cd)
        w = weights if weights.dtype == cd else weights.to(cd)
        wb = backup if backup.dtype == cd else backup.to(cd)
        lam_g, drift = self._work_buffers(segment)
        if self.variant is DCVariant.CONSTANT:
            torch.mul(g, self.lambda0, out=lam_g)  # lam * g
        else:
            ms = self.mean_square_of(worker)[segment]
            torch.mul(g, g, out=drift)
            drift.mul_(1.0 - self.momentum)
            ms.mul_(self.momentum).add_(drift)  # (m * ms) + ((1 - m) * (g * g))
            torch.add(ms, self.eps, out=lam_g)
            exact_sqrt_(lam_g)
            torch.div(self._lambda0_t[segment], lam_g, out=lam_g)  # lambda0 / sqrt(ms + eps)
            lam_g.mul_(g)  # lam * g
        lam_g.mul_(g)  # (lam * g) * g
        torch.sub(w, wb, out=drift)
        lam_g.mul_(drift)  # ((lam * g) * g) * (w - w_bak)
        if out.dtype == cd:
            torch.add(g, lam_g, out=out)
        else:
            lam_g.add_(g)
            out.copy_(lam_g)


def exact_sqrt_(t: torch.Tensor) -> torch.Tensor:
    """In-place, correctly rounded square root (see the module docstring for why not
    ``torch.sqrt_`` on the CPU)."""
    if t.device.type == "cpu" and t.is_contiguous():
        arr = t.numpy()
        np.sqrt(arr, out=arr)
        return t
    return t.sqrt_()


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the server computes a segment in: float32 for 16-bit floats (so g*g neither
    underflows nor overflows), the segment's own otherwise."""
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    if not dtype.is_floating_point:
        raise TypeError(f"delay compensation needs floating-point parameters; got {dtype}")
    return dtype

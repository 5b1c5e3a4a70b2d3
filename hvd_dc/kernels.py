"""The server's fused kernels (an optional C extension) behind checked Python calls.

:mod:`hvd_dc._kernels` is built at install time when a C compiler is there; without it,
or with ``HVD_DC_KERNELS=torch``, the server uses the torch path of
:class:`hvd_dc.dc_math.DelayCompensator` and the wrapped optimizer, which gives the same
bits more slowly (:mod:`hvd_dc.server_state` chooses, once per served model). The kernels do in one pass over a float32/float64 segment what the torch
path does in eight to ten:

* :func:`compensate`: ``out = g + lambda_t * g*g*(w - w_bak)`` (MeanSquare updated for
  the adaptive variant), for optimizers other than SGD;
* :func:`sgd`: that, then ``torch.optim.SGD``'s step (weight decay, momentum, dampening,
  Nesterov, maximize) on the weights, and optionally the copy of the new weights into
  the worker's reply area (the pull that follows a push);
* :func:`dana`: DANA's push (:mod:`hvd_dc.async_momentum`): the look-ahead, the
  compensation to it, the per-worker momentum and its sum, the weights, and optionally
  the reply (the new look-ahead).

:func:`sgd` and :func:`dana` also run Gap-Aware (:mod:`hvd_dc.staleness`) in the same pass
when given its running average: the damping between the compensation and the step, the
average's update after it.

Every call checks dtypes, sizes and contiguity here, so the C code can trust its pointers.
"""

from __future__ import annotations

from typing import Optional

import torch

from .dc_math import DCVariant

try:
    from . import _kernels as _ext
except ImportError:  # no compiler at install time: the torch path serves
    _ext = None

__all__ = ["available", "simd", "all_finite", "compensate", "sgd", "dana", "FUSED_DTYPES"]

FUSED_DTYPES = (torch.float32, torch.float64)


def available(choice: str = "fused") -> bool:
    """True when the extension is built and ``choice`` (the ``HVD_DC_KERNELS`` setting)
    does not ask for the torch path."""
    if choice not in ("fused", "torch"):
        raise ValueError(f"HVD_DC_KERNELS must be 'fused' or 'torch'; got {choice!r}")
    return _ext is not None and choice == "fused"


def simd() -> str:
    """Which code path the extension runs ('avx2+fma' or 'baseline'), or 'unavailable'."""
    return _ext.simd() if _ext is not None else "unavailable"


def _check(*tensors: Optional[torch.Tensor], dtype: torch.dtype, n: int) -> None:
    for t in tensors:
        if t is None:
            continue
        if t.dtype != dtype or t.numel() != n or not t.is_contiguous() or t.device.type != "cpu":
            raise ValueError(
                f"fused kernel argument must be a contiguous CPU {dtype} tensor of {n} elements; "
                f"got {t.dtype} {tuple(t.shape)} on {t.device}"
            )


def _ptr(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def all_finite(t: torch.Tensor) -> bool:
    """True if every element of a contiguous float32/float64 tensor is finite (one pass)."""
    _check(t, dtype=t.dtype, n=t.numel())
    if t.dtype not in FUSED_DTYPES:
        raise ValueError(f"all_finite takes float32 or float64; got {t.dtype}")
    return _ext.all_finite(t.data_ptr(), t.numel(), t.dtype == torch.float64)


def compensate(variant: DCVariant, g, w, wb, mean_square, out, lambda0: float, momentum: float, eps: float) -> None:
    """``out = g + lambda_t * g*g*(w - wb)``; ``mean_square`` updated (adaptive only)."""
    n = g.numel()
    _check(g, w, wb, out, mean_square if variant is DCVariant.ADAPTIVE else None, dtype=g.dtype, n=n)
    _ext.compensate(
        g.dtype == torch.float64, n, g.data_ptr(), w.data_ptr(), wb.data_ptr(), _ptr(mean_square), out.data_ptr(),
        int(variant), float(lambda0), float(momentum), float(eps),
    )


def sgd(variant: DCVariant, g, w, wb, mean_square, momentum_buffer, copy, lambda0: float, ms_momentum: float, eps: float,
        group: dict, gap=None, gap_corr: float = 1.0, gap_damp: bool = False) -> None:
    """Compensate and apply ``torch.optim.SGD``'s step for ``group`` to ``w`` in place.

    ``momentum_buffer`` must exist when the group has momentum (the first step, which
    creates it, belongs to torch.optim.SGD). ``copy``, if given, receives the new weights.
    ``gap``, if given, is Gap-Aware's running average ``C`` of the segment
    (:mod:`hvd_dc.staleness`): with ``gap_damp`` the compensated gradient is divided by
    ``max(1, |w - w_bak| / (C / gap_corr))`` before the step, and ``C`` is updated with the
    step's size after it.
    """
    n = g.numel()
    mom = float(group["momentum"])
    _check(g, w, wb, copy, gap, mean_square if variant is DCVariant.ADAPTIVE else None,
           momentum_buffer if mom else None, dtype=g.dtype, n=n)
    if mom and momentum_buffer is None:
        raise ValueError("the fused SGD step needs the momentum buffer of an earlier step")
    _ext.sgd(
        g.dtype == torch.float64, n, g.data_ptr(), w.data_ptr(), wb.data_ptr(), _ptr(mean_square),
        _ptr(momentum_buffer) if mom else 0, _ptr(copy), _ptr(gap), int(variant), float(lambda0), float(ms_momentum),
        float(eps), float(group["lr"]), mom, float(group["dampening"]), float(group["weight_decay"]),
        bool(group["nesterov"]), bool(group.get("maximize", False)), False, float(gap_corr), bool(gap_damp),
    )


def dana(variant: DCVariant, g, w, wb, mean_square, velocity, total, copy, lambda0: float, ms_momentum: float,
         eps: float, hyper: dict, first: bool, gap=None, gap_corr: float = 1.0, gap_damp: bool = False) -> None:
    """One DANA push on one segment, in place: ``velocity`` (this worker's ``v``), ``total``
    (``S``), ``w`` and ``mean_square`` (adaptive) updated; ``copy``, if given, receives the
    look-ahead ``w - lr*mu*S``. ``hyper``: :func:`~hvd_dc.async_momentum.sgd_hyperparameters`.
    ``first``: this worker's first push (``v = g``). ``gap``: Gap-Aware, as in :func:`sgd`,
    the gap measured from the look-ahead."""
    n = g.numel()
    _check(g, w, wb, velocity, total, copy, gap, mean_square if variant is DCVariant.ADAPTIVE else None,
           dtype=g.dtype, n=n)
    _ext.dana(
        g.dtype == torch.float64, n, g.data_ptr(), w.data_ptr(), wb.data_ptr(), _ptr(mean_square),
        velocity.data_ptr(), total.data_ptr(), _ptr(copy), _ptr(gap), int(variant), float(lambda0),
        float(ms_momentum), float(eps), hyper["lr"], hyper["momentum"], hyper["dampening"], hyper["weight_decay"],
        bool(hyper["maximize"]), bool(first), float(gap_corr), bool(gap_damp),
    )

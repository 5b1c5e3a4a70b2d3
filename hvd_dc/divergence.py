"""Noticing that a run diverges, and saying once why and what to do (no MPI).

A worker learns that training went wrong in three ways: the server rejects its gradient
because it holds NaN/Inf (the loss already overflowed), the weights it pulls grow by orders
of magnitude (a step too large for the curvature throws them out, and the loss explodes;
with ReLUs the gradients may even shrink again, as dead units give none), or its
gradient's norm grows by orders of magnitude. The usual causes on an
asynchronous parameter server are the hyperparameters a synchronous script carries, so
the first sign gets one :class:`DivergenceWarning` that names the likely cause for *this*
configuration and the fix, instead of only a count of rejected pushes:

1. ``lr_scaling="per_push"`` with ``op=Average`` and M > 1: each push steps the script's
   whole lr, and a Horovod script's ``lr * hvd.size()`` is then M times the sequential lr
   per push. Fix: ``lr_scaling="per_step"`` (the default).
2. ``async_momentum="shared"`` with a momentum and M > 1: the explicit momentum adds to the
   implicit momentum of about ``1 - 1/M`` that M asynchronous workers already bring. Fix:
   ``async_momentum="dana"`` (the default for SGD).
3. Otherwise the lr is too large for M workers whose gradients arrive M - 1 updates late.
   Fix: a lower lr, or ``staleness_policy="gap_aware"``.

Every :data:`CHECK_EVERY` steps the worker samples the norms of the gradient it pushed and
of the weights it received (one pass over each, on the host copies it already has). The
weights' reference is their norm after the first step, and :data:`WEIGHT_GROWTH` times
it is the sign (weights grow a few times at most in a healthy run); the gradient's is the
median of its first :data:`REFERENCE_SAMPLES` samples, and :data:`GROWTH` times it is
the sign.
"""

from __future__ import annotations

import math
import statistics
import warnings
from typing import List, Optional, Sequence

import torch

__all__ = ["DivergenceWarning", "DivergenceWatch", "likely_cause", "CHECK_EVERY", "GROWTH", "WEIGHT_GROWTH",
           "REFERENCE_SAMPLES"]

CHECK_EVERY = 10
REFERENCE_SAMPLES = 5
#: a gradient norm this many times the early median is taken for an exploding loss
GROWTH = 1000.0
#: weights whose norm is this many times their norm after the first step have diverged
WEIGHT_GROWTH = 100.0


class DivergenceWarning(RuntimeWarning):
    """Training on the parameter server is diverging; the message names the likely cause."""


def likely_cause(num_workers: int, lr_scale: float, lr_scaling: str, averaged: bool, async_momentum: str,
                 momentum: float) -> str:
    """The cause and the fix, for this configuration (the module docstring's order)."""
    m = num_workers
    if lr_scaling == "per_push" and averaged and m > 1:
        return (f"lr_scaling='per_push' applies every push with the script's whole lr; a Horovod script's "
                f"lr * hvd.size() then steps {m} times the sequential lr on each of the {m} pushes that make one "
                f"Horovod step. Fix: lr_scaling='per_step' (the default: the server applies lr / size() per push), "
                f"or divide the lr by hvd.size()")
    if async_momentum == "shared" and momentum > 0 and m > 1:
        return (f"an explicit momentum of {momentum:g} on top of the implicit momentum (about 1 - 1/M = "
                f"{1 - 1 / m:.3g}) of {m} asynchronous workers overshoots. Fix: async_momentum='dana' (the default "
                f"for torch.optim.SGD: one momentum per worker, gradients computed at the look-ahead), or "
                f"async_momentum='reduced'")
    return (f"the learning rate (the server applies {lr_scale:g} x the script's) is too large for {m} asynchronous "
            f"workers, whose gradients arrive about {max(m - 1, 0)} updates late. Fix: lower the lr (halve it), "
            f"or staleness_policy='gap_aware', which damps stale gradients")


class DivergenceWatch:
    """One worker's watch over one served model."""

    def __init__(self, worker: int, cause: str) -> None:
        self.worker = worker
        self.cause = cause
        self.warned = False
        self._steps = 0
        self._samples: List[float] = []
        self._reference: Optional[float] = None
        self._weights_reference: Optional[float] = None

    def rejected(self) -> None:
        """The server rejected a push of this worker for NaN/Inf."""
        self._warn("the server rejected a gradient of this worker with NaN/Inf elements (the loss overflowed)")

    def step(self, gradient: Sequence[torch.Tensor], weights: Sequence[torch.Tensor]) -> None:
        """After an accepted push: on the first step and every CHECK_EVERY steps, sample the
        norms of the pushed ``gradient`` and the received ``weights`` (flat segments)."""
        self._steps += 1
        if self.warned or (self._steps > 1 and self._steps % CHECK_EVERY):
            return
        w = _norm(weights)
        if self._weights_reference is None:
            if w > 0 and math.isfinite(w):
                self._weights_reference = w
        elif not w <= WEIGHT_GROWTH * self._weights_reference:  # NaN too
            self._warn(f"the norm of the weights grew from {self._weights_reference:.3g} (after step 1) to "
                       f"{w:.3g} at step {self._steps}: the loss is exploding")
            return
        if self._steps % CHECK_EVERY:
            return
        norm = _norm(gradient)
        if not math.isfinite(norm):
            return  # a NaN gradient: the server rejects it and rejected() says so
        if self._reference is None:
            self._samples.append(norm)
            if len(self._samples) == REFERENCE_SAMPLES:
                self._reference = statistics.median(self._samples)
            return
        if self._reference > 0 and norm > GROWTH * self._reference:
            self._warn(f"the gradient norm grew from {self._reference:.3g} (median of steps {CHECK_EVERY}.."
                       f"{CHECK_EVERY * REFERENCE_SAMPLES}) to {norm:.3g} at step {self._steps}: the loss is exploding")

    def _warn(self, evidence: str) -> None:
        if self.warned:
            return
        self.warned = True
        warnings.warn(f"hvd_dc worker {self.worker}: training is diverging: {evidence}. Likely cause: {self.cause}.",
                      DivergenceWarning, stacklevel=4)


def _norm(segments: Sequence[torch.Tensor]) -> float:
    return math.sqrt(sum(float(torch.linalg.vector_norm(t, dtype=torch.float64)) ** 2 for t in segments))

"""Staleness policies: what the server does to a gradient because it is stale (no MPI).

DC-ASGD (:mod:`hvd_dc.dc_math`) corrects a stale gradient with a Taylor term. The
methods published since damp it instead. The server already knows, for every push, its
staleness ``tau`` (server updates applied since worker ``m`` pulled the weights it
computed on) and the backup ``w_bak(m)`` (those weights), so each of them is one option,
``staleness_policy=``, applied to the gradient after delay compensation and before the
wrapped optimizer::

    g_dc  = g + lambda_t * g*g*(w - w_bak(m))          # dc_variant (identity for "none")
    g_out = policy(g_dc, tau, w, w_bak(m))              # staleness_policy
    optimizer.step() with g_out as the gradient

``"none"``
    ``g_out = g_dc`` (the default; the server keeps its fused one-pass kernels).

``"staleness_lr"`` (Zhang, Gupta, Lian, Liu, "Staleness-aware Async-SGD for Distributed
Deep Learning", IJCAI 2016, arXiv 1511.05950)
    ``g_out = g_dc / max(1, tau)``: the learning rate of a gradient of staleness ``tau`` is
    divided by ``tau``. The paper divides by the staleness it measures; a push with
    ``tau = 0`` (no update landed since the pull) keeps the full rate, hence the ``max``.

``"delay_adaptive"`` (Koloskova, Stich, Jaggi, "Sharper Convergence Guarantees for
Asynchronous SGD for Distributed and Federated Learning", NeurIPS 2022, arXiv 2206.08307,
Section 4.3, Theorem 8, Eq. 11, and Section 4.4, "Tuning the stepsize")
    ``g_out = g_dc`` if ``tau <= tau_C``, else ``g_dc / tau``, with ``tau_C = M``.
    Eq. 11 keeps the stepsize ``eta`` for ``tau <= tau_C`` and allows any stepsize in
    ``[0, min(eta, 1 / (4 L tau))]`` above; Section 4.4 says how to implement it without
    knowing ``L``: "in case of tau_t > tau_C set stepsize eta_t <= eta / tau_t", and
    ``tau_C`` is the concurrency (the number of gradients computed in parallel, M here:
    each worker has one in flight), for which the average delay is about M. We take
    ``eta / tau``, the largest value that sentence allows. Only pushes staler than the
    concurrency are damped: a straggler's, or the long tail of a random order. Under
    round-robin order every push has ``tau = M - 1 < tau_C`` and this policy changes
    nothing.

``"gap_aware"`` (Barkai, Hakimi, Schuster, "Gap-Aware Mitigation of Gradient
Staleness", ICLR 2020, arXiv 1909.10802)
    element-wise ``g_out = g_dc / G`` with the *gap*
    ``G = max(1, |w - w_bak(m)| / C)``: how far each weight moved since worker ``m``
    pulled, in units of ``C``, a running average of how far one server update moves it.
    What is taken from the paper: the Gap measures the distance between the parameters a
    gradient was computed on and those it is applied to, and the gradient is penalised
    linearly in it (divided by it). The paper's full text was not at hand when this was
    written, so the following are our choices, stated so they can be checked against it:
    ``C`` is kept per element,
    as the exponential moving average of ``|w_{k+1} - w_k|`` over the server's updates
    (the step the optimizer actually took, momentum included) with factor
    ``GAP_MOMENTUM = 0.99`` and Adam's bias correction ``C_hat = C / (1 - 0.99**k)`` after
    ``k`` updates; where ``C_hat = 0`` (an element that never moved) ``G = 1``. ``G`` is never
    below 1, so a gradient is only ever damped. ``C`` and ``k`` are the policy's running
    state; checkpoints save and restore them.

The scalar policies multiply the gradient handed to the optimizer, which for plain SGD
is exactly dividing that push's learning rate (weight decay, added by the optimizer, is
not scaled; with momentum the scaled gradient enters the buffer, as Caffe-style
``v <- mu v - lr g`` does with a per-push lr). Adam-like optimizers normalise the
gradient's scale away, so these policies are meant for SGD.

Each policy combines with any ``dc_variant``; with ``"adaptive"`` the compensated gradient
is damped. Evaluation order (the reference in ``tests/reference.py`` follows it)::

    s     = 1 / max(1, tau)          | (1 if tau <= tau_C else 1 / tau)   (scalar policies)
    g_out = g_dc * s
    ratio = |w - w_bak| / C_hat   (0 where C_hat == 0);   G = max(ratio, 1)
    g_out = g_dc / G                                                  (gap_aware)
    after the optimizer step:  C <- (0.99 * C) + (|w_old - w_new| * (1 - 0.99));  k += 1
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch

from .dc_math import STALENESS_POLICIES as POLICIES, compute_dtype, validate_staleness_policy

__all__ = [
    "POLICIES",
    "GAP_MOMENTUM",
    "validate_staleness_policy",
    "staleness_lr_scale",
    "delay_adaptive_scale",
    "gap_reference",
    "StalenessPolicy",
]

#: Gap-Aware: factor of the moving average of update magnitudes ``C``.
GAP_MOMENTUM = 0.99


def staleness_lr_scale(staleness: int) -> float:
    """Zhang et al. 2016: the factor ``1 / max(1, tau)`` on a push of staleness ``tau``."""
    return 1.0 / max(1, int(staleness))


def delay_adaptive_scale(staleness: int, tau_c: int) -> float:
    """Koloskova et al. 2022's delay-adaptive step: 1 for ``tau <= tau_C``, ``1 / tau`` above."""
    tau = int(staleness)
    return 1.0 if tau <= tau_c else 1.0 / tau


def gap_reference(
    grad: torch.Tensor, weights: torch.Tensor, backup: torch.Tensor, c_avg: torch.Tensor, updates: int
) -> torch.Tensor:
    """Gap-Aware's damped gradient ``g / max(1, |w - w_bak| / C_hat)``, from the formula.

    ``c_avg`` is the (uncorrected) moving average ``C`` after ``updates`` server updates.
    Allocates freely; for reading and cross-checking :class:`StalenessPolicy`.
    """
    if updates == 0:
        return grad.clone()
    c_hat = c_avg / (1.0 - GAP_MOMENTUM**updates)
    ratio = torch.where(c_hat > 0, (weights - backup).abs() / torch.where(c_hat > 0, c_hat, 1.0), 0.0)
    return grad / ratio.clamp_min(1.0)


class StalenessPolicy:
    """One server's staleness policy over the flat segments of its model.

    :meth:`apply` damps the compensated gradient of a push in place (segment by
    segment); :meth:`before_step` / :meth:`after_step` bracket the optimizer step so that
    Gap-Aware can measure how far it moved the weights. ``active`` is False for
    ``"none"``: then the server calls nothing here and keeps its fused kernels.
    """

    def __init__(
        self,
        name: str,
        num_workers: int,
        segment_sizes: Sequence[int],
        dtypes: Sequence[torch.dtype],
        device: torch.device | str = "cpu",
    ) -> None:
        self.name = validate_staleness_policy(name)
        self.num_workers = int(num_workers)
        self.tau_c = self.num_workers
        self.active = name != "none"
        self.tracks_steps = name == "gap_aware"
        self.updates = 0  # optimizer steps seen (Gap-Aware's bias correction)
        self._compute = [compute_dtype(dt) for dt in dtypes]
        self.c_avg: List[torch.Tensor] = []
        self._prev: List[torch.Tensor] = []
        self._ratio: List[torch.Tensor] = []
        if self.tracks_steps:
            self.c_avg = [torch.zeros(n, dtype=cd, device=device) for n, cd in zip(segment_sizes, self._compute)]
            self._prev = [torch.empty(n, dtype=cd, device=device) for n, cd in zip(segment_sizes, self._compute)]
            self._ratio = [torch.empty(n, dtype=cd, device=device) for n, cd in zip(segment_sizes, self._compute)]

    def scale(self, staleness: int) -> Optional[float]:
        """The scalar factor of the scalar policies, None for the others."""
        if self.name == "staleness_lr":
            return staleness_lr_scale(staleness)
        if self.name == "delay_adaptive":
            return delay_adaptive_scale(staleness, self.tau_c)
        return None

    def apply(self, staleness: int, grads: Sequence[torch.Tensor], weights: Sequence[torch.Tensor],
              backups: Sequence[torch.Tensor]) -> None:
        """Damp the compensated gradient segments ``grads`` in place."""
        s = self.scale(staleness)
        if s is not None:
            if s != 1.0:
                for g in grads:
                    g.mul_(s)
            return
        if self.name != "gap_aware" or self.updates == 0:
            return
        corr = 1.0 - GAP_MOMENTUM**self.updates
        for i, (g, w, wb) in enumerate(zip(grads, weights, backups)):
            cd = self._compute[i]
            ratio, c_hat = self._ratio[i], self._prev[i]  # _prev is free between steps
            torch.div(self.c_avg[i], corr, out=c_hat)
            torch.sub(w.to(cd), wb.to(cd), out=ratio)
            ratio.abs_()
            still = c_hat == 0  # never moved: no scale to measure the gap against, G = 1
            c_hat.masked_fill_(still, 1.0)
            ratio.div_(c_hat).masked_fill_(still, 0.0).clamp_min_(1.0)
            if g.dtype == cd:
                g.div_(ratio)
            else:
                g.copy_(g.to(cd).div_(ratio))

    @property
    def fusable(self) -> bool:
        """The fused kernels can run this policy inside their pass (none or Gap-Aware)."""
        return self.name in ("none", "gap_aware")

    def fused_arguments(self, segment: int) -> Dict[str, Any]:
        """The Gap-Aware arguments of :func:`hvd_dc.kernels.sgd`/``dana`` for one segment
        (nothing for ``"none"``); after the fused step, call :meth:`count_step`."""
        if not self.tracks_steps:
            return {}
        return {"gap": self.c_avg[segment], "gap_corr": 1.0 - GAP_MOMENTUM**self.updates if self.updates else 1.0,
                "gap_damp": self.updates > 0}

    def count_step(self) -> None:
        """A fused kernel did one optimizer step and updated ``C``."""
        if self.tracks_steps:
            self.updates += 1

    def before_step(self, weights: Sequence[torch.Tensor]) -> None:
        if self.tracks_steps:
            for prev, w in zip(self._prev, weights):
                prev.copy_(w)

    def after_step(self, weights: Sequence[torch.Tensor]) -> None:
        """Gap-Aware: ``C <- 0.99 C + 0.01 |w_new - w_old|`` element-wise, one more update."""
        if not self.tracks_steps:
            return
        for prev, w, c in zip(self._prev, weights, self.c_avg):
            prev.sub_(w.to(prev.dtype)).abs_().mul_(1.0 - GAP_MOMENTUM)
            c.mul_(GAP_MOMENTUM).add_(prev)
        self.updates += 1

    # -- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        """The running state (Gap-Aware's ``C`` and update count), as CPU tensors and ints."""
        return {
            "name": self.name,
            "updates": int(self.updates),
            "c_avg": [c.detach().to("cpu", copy=True) for c in self.c_avg],
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state.get("name", "none") != self.name:
            raise ValueError(f"staleness policy state is for {state.get('name')!r}, this server runs {self.name!r}")
        saved = state.get("c_avg", [])
        if len(saved) != len(self.c_avg):
            raise ValueError(f"staleness policy state has {len(saved)} segments, this model {len(self.c_avg)}")
        for c, s in zip(self.c_avg, saved):
            c.copy_(s)
        self.updates = int(state.get("updates", 0))

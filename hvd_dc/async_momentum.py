"""Momentum under asynchrony, on the server (no MPI): DANA, and the lowered-momentum baseline.

With M asynchronous workers every gradient is applied M - 1 updates late, and that
staleness acts like an extra momentum of about ``1 - 1/M`` (Mitliagkas, Zhang, Hadjis,
Re, "Asynchrony begets momentum", 2016). An explicit momentum of 0.9 (every Horovod
script's) on top of it overshoots. ``async_momentum=`` says what the server does with
the wrapped ``torch.optim.SGD``'s momentum:

``"shared"``
    The optimizer's own step: one momentum buffer that every push goes into, in arrival
    order, as in a sequential run (what hvd_dc always did). Any optimizer.

``"dana"`` (Hakimi, Barkai, Gabel, Schuster, "Taming Momentum in a Distributed
Asynchronous Environment", arXiv 1907.11612, 2019-2020: DANA-Zero)
    One momentum vector per worker. A push ``g`` from worker ``i`` does::

        v_i <- mu * v_i + g
        w   <- w - lr * v_i

    and worker ``i`` is sent the estimated future position ``w - lr * mu * sum_j v_j``
    (Nesterov's look-ahead spread over the workers) instead of ``w``. The sum is kept
    incrementally (``S <- (S - v_i_old) + v_i``, one pass, not M). The look-ahead is
    what worker ``i`` computes its next gradient on, so it is ``w_bak(i)`` (Algorithm 2
    stays exact: the reply area holds it). ``torch.optim.SGD`` only.

``"reduced"`` (the cheap baseline)
    The optimizer's own step with a momentum lowered for the implicit momentum of M
    workers, by the rule :func:`reduced_momentum` (chosen by measurement:
    benchmarks/CONVERGENCE_HOROVOD.md). ``torch.optim.SGD`` only.

What DANA does with the rest of ``torch.optim.SGD``'s hyperparameters, and where the
other server options (delay compensation, staleness policies) look, are choices of ours,
made so that with **one worker DANA is exactly torch's ``SGD(nesterov=True)``** (up to
the change of variables: torch stores the look-ahead) and DC-ASGD and Gap-Aware change
nothing, as they change nothing for one worker under ``"shared"``:

* ``a = w - lr * mu * S``, the look-ahead the server would send worker ``i`` *now*
  (before its push), is the point the gradient should have been computed on. The gap
  worker ``i``'s gradient carries is ``a - w_bak(i)`` (zero with one worker): DC-ASGD
  compensates from ``w_bak(i)`` to ``a`` (``g + lambda * g*g*(a - w_bak(i))``) and
  Gap-Aware measures ``|a - w_bak(i)|``.
* Weight decay is the L2 term's gradient at the same point: ``g + wd * a``, as torch's
  Nesterov adds ``wd * p`` at its (look-ahead) parameters. ``maximize`` negates ``g``
  first, as torch does.
* A worker's first push sets ``v_i = g`` and later ones ``v_i = mu * v_i + (1 - dampening)
  * g``, torch's momentum buffer rule. torch's ``nesterov`` flag is not consulted:
  DANA's look-ahead is Nesterov's, so ``nesterov=False`` also gets it (with one worker:
  Nesterov, not heavy ball).
* ``lr`` and ``mu`` are the push's (the worker's scheduler drives them); the look-ahead a
  worker receives uses the push's own.

Evaluation order of one push from worker ``i`` on one flat segment (what
``tests/reference.py`` replays bit for bit; ``c = lr * mu`` in double precision first)::

    a   = w - (S * c)
    g   = g_out                                  # after compensation and policy, at a
    g   = -g                                     # maximize only
    g   = g + (a * wd)                           # weight_decay != 0 only
    S   = S - v_i
    v_i = g  (first push)  |  (v_i * mu) + (g * (1 - dampening))
    S   = S + v_i
    w   = w - (v_i * lr)
    reply (= w_bak(i)) = w - (S * c)

16-bit segments keep ``v``, ``S`` and ``a`` in float32 (as the MeanSquare buffers) and
round ``w`` and the reply once. Memory: M + 2 extra copies of the model per server (the
``v_i``, ``S`` and ``a``), besides the M backups.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

import torch

from .dc_math import ASYNC_MOMENTUM, compute_dtype

__all__ = ["ASYNC_MOMENTUM", "REDUCED_RULE", "reduced_momentum", "DanaState", "sgd_hyperparameters"]

#: which rule :func:`reduced_momentum` follows (the study's pilot compared them)
REDUCED_RULE = "additive"


def reduced_momentum(momentum: float, num_workers: int) -> float:
    """The lowered-momentum baseline's explicit momentum for ``num_workers`` workers: the
    additive rule, ``max(0, mu - (1 - 1/M))`` (the implicit momentum of M workers taken off;
    with one worker, ``mu`` itself)."""
    return max(0.0, float(momentum) - (1.0 - 1.0 / int(num_workers)))


def sgd_hyperparameters(group: Dict[str, Any]) -> Dict[str, float]:
    """What DANA reads from a ``torch.optim.SGD`` param group, as Python floats."""
    def f(key, default=0.0):
        v = group.get(key, default)
        return float(v.item() if isinstance(v, torch.Tensor) else v)

    return {"lr": f("lr"), "momentum": f("momentum"), "dampening": f("dampening"),
            "weight_decay": f("weight_decay"), "maximize": bool(group.get("maximize", False))}


class DanaState:
    """DANA's running state over the flat segments of one served model (or chunk): each
    worker's momentum ``v_i``, their sum ``S``, and which workers have pushed.

    :meth:`lookahead` writes ``a = w - lr*mu*S``; :meth:`step` applies one push (the
    gradient already compensated at ``a`` by the caller) and :meth:`lookahead` again gives
    the reply. No allocation after construction.
    """

    def __init__(self, num_workers: int, segment_sizes: Sequence[int], dtypes: Sequence[torch.dtype],
                 device: torch.device | str = "cpu") -> None:
        self.num_workers = int(num_workers)
        self._compute = [compute_dtype(dt) for dt in dtypes]
        self.velocity: List[List[torch.Tensor]] = [
            [torch.zeros(n, dtype=cd, device=device) for n, cd in zip(segment_sizes, self._compute)]
            for _ in range(self.num_workers)
        ]
        self.total = [torch.zeros(n, dtype=cd, device=device) for n, cd in zip(segment_sizes, self._compute)]
        self.started = [False] * self.num_workers
        self._work = [torch.empty(n, dtype=cd, device=device) for n, cd in zip(segment_sizes, self._compute)]
        self._grad = [torch.empty(n, dtype=cd, device=device) if cd != dt else None
                      for n, cd, dt in zip(segment_sizes, self._compute, dtypes)]

    def lookahead(self, segment: int, weights: torch.Tensor, lr: float, momentum: float,
                  out: torch.Tensor) -> torch.Tensor:
        """``out = w - (S * (lr * mu))`` for one segment; returns ``out``."""
        c = lr * momentum
        work = self._work[segment]
        torch.mul(self.total[segment], c, out=work)
        if out.dtype == work.dtype:
            torch.sub(weights.to(work.dtype), work, out=out)
        else:
            work.neg_().add_(weights.to(work.dtype))
            out.copy_(work)
        return out

    def step(self, segment: int, worker: int, grad: torch.Tensor, weights: torch.Tensor, lookahead: torch.Tensor,
             hyper: Dict[str, float]) -> None:
        """One push of ``worker`` on one segment: ``grad`` (compensated, segment dtype, may
        be modified) updates ``v_i``, ``S`` and the master ``weights`` in place."""
        cd = self._compute[segment]
        g = grad
        if g.dtype != cd:
            g = self._grad[segment]
            g.copy_(grad)
        if hyper["maximize"]:
            g.neg_()
        wd = hyper["weight_decay"]
        work = self._work[segment]
        if wd != 0.0:
            torch.mul(lookahead if lookahead.dtype == cd else lookahead.to(cd), wd, out=work)
            g.add_(work)
        v, total = self.velocity[worker][segment], self.total[segment]
        total.sub_(v)
        if not self.started[worker]:
            v.copy_(g)
        else:
            v.mul_(hyper["momentum"])
            torch.mul(g, 1.0 - hyper["dampening"], out=work)
            v.add_(work)
        total.add_(v)
        torch.mul(v, hyper["lr"], out=work)
        if weights.dtype == cd:
            weights.sub_(work)
        else:
            work.neg_().add_(weights.to(cd))
            weights.copy_(work)

    def finish_push(self, worker: int) -> None:
        """Every segment of ``worker``'s push is applied: its next push continues ``v_i``."""
        self.started[worker] = True

    # -- checkpoints ----------------------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        return {
            "velocity": [[v.detach().to("cpu", copy=True) for v in vs] for vs in self.velocity],
            "total": [t.detach().to("cpu", copy=True) for t in self.total],
            "started": list(self.started),
        }

    def load_state_dict(self, state: Dict[str, Any], same_workers: bool) -> None:
        """Restore ``v_i``, ``S`` and the started flags. With a different number of workers
        the per-worker momentum cannot be mapped: every ``v_i`` and ``S`` start at zero."""
        if not same_workers:
            for vs in self.velocity:
                for v in vs:
                    v.zero_()
            for t in self.total:
                t.zero_()
            self.started = [False] * self.num_workers
            return
        for vs, saved in zip(self.velocity, state["velocity"]):
            for v, s in zip(vs, saved):
                v.copy_(s)
        for t, s in zip(self.total, state["total"]):
            t.copy_(s)
        self.started = [bool(x) for x in state["started"]]

"""Horovod's ``DistributedOptimizer`` keywords, and what each means for asynchronous pushes.

``hvd.DistributedOptimizer`` is ``hvd.DistributedDCOptimizer``: it takes Horovod's
arguments in Horovod's order, then the DC options as keywords. This module checks
Horovod's ones (:func:`check`) and applies what they mean here (:func:`apply`):

* ``op`` and ``lr_scaling``. Horovod's optimizer applies one *reduced* gradient per step:
  ``Average``, the mean of the ``size()`` workers' gradients (computed on the same
  weights); ``Sum``, their sum, ``size()`` times the mean. Here the same ``size()``
  gradients arrive as ``size()`` pushes, each applied on its own. ``lr_scaling`` says how
  much of a Horovod step one push is:

  - ``"per_step"``: a push is ``1/size()`` of a Horovod step. With ``Average`` the server
    applies each push with ``lr / size()`` (the server-side lr is scaled, not the gradient,
    so the DC term ``lambda * g*g*(w - w_bak)`` keeps its meaning); with ``Sum`` with
    ``lr`` and the gradient as it is. A script's ``lr * hvd.size()`` thus lands on a
    per-push step of ``lr``, the sequential run's.
  - ``"per_push"``: every push is a whole step: ``Average`` pushes the gradient as it is
    at the script's lr, ``Sum`` pushes ``size()`` times it (a hook scales the gradient as
    backward produces it, so clipping after ``synchronize()`` sees the scaled gradient, as
    it sees the sum in Horovod). What hvd_dc did before; right for a script that keeps the
    single-process lr.
  - ``"auto"`` (default): ``"per_step"``, chosen by measurement
    (benchmarks/CONVERGENCE_HOROVOD.md: with Horovod's ``lr * size()`` and momentum,
    ``per_push`` diverges from M = 8 on).

  ``Adasum`` combines gradients of the same step across workers, which an asynchronous
  server never has: refused (with one worker, where Horovod's Adasum is the plain
  gradient, accepted). Every worker must pass the same ``op``.
* ``async_momentum``, ``staleness_policy`` and ``dc_variant`` default to ``"auto"``: what
  :data:`MEASURED_DEFAULTS` says for the wrapped optimizer, chosen on validation data by
  benchmarks/convergence_horovod.py (part ``select``; benchmarks/CONVERGENCE_HOROVOD.md).
  ``"dana"`` and ``"reduced"`` need ``torch.optim.SGD``.
* ``gradient_predivide_factor``: Horovod scales by ``1/f`` before the sum and ``f/size``
  after, which is the same average; there is no sum here, so nothing changes. Checked as
  Horovod does (``> 0``, only with ``op=Average``).
* ``num_groups`` / ``groups``: how Horovod fuses allreduce calls; hvd_dc pushes the whole
  model in one transfer already. Checked as Horovod does (``num_groups`` is deprecated
  in Horovod: a ``DeprecationWarning``), no other effect.
* ``sparse_as_dense``: sparse gradients are always pushed dense (the same values; the
  server applies them as dense), so both values give the same result.
* ``process_set``: only the global process set; any other is a ``ValueError`` saying
  why. Every worker pushes its gradients to the one parameter server, whatever the set,
  and a set of workers cannot train a model of its own: a model is registered with the
  server by a collective of all the workers, which allocates its windows over all of them
  (and the server takes part), so the server has one model per ``DistributedOptimizer``
  call of every worker, never one per set. Process sets work for the collectives
  (``hvd.allreduce(..., process_set=...)``).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Dict, List, NamedTuple

import torch

from .collectives import Adasum, Average, ReduceOp, Sum, is_global
from .dc_math import ASYNC_MOMENTUM

__all__ = ["HorovodOptions", "LR_SCALINGS", "MEASURED_DEFAULTS", "check", "agreed", "apply", "optimizer_kind",
           "resolve_defaults", "resolve_async_momentum", "lr_scale"]

#: Accepted values of ``lr_scaling`` (besides ``"auto"``).
LR_SCALINGS = ("per_step", "per_push")


class HorovodOptions(NamedTuple):
    op: ReduceOp
    gradient_predivide_factor: float
    lr_scaling: str = "per_step"


#: What ``"auto"`` means, per kind of optimizer: (dc_variant, staleness_policy, async_momentum).
#: The two SGD rows are the candidates with the lowest mean validation error over M = 4, 8,
#: 16, 32 in benchmarks/convergence_horovod.py's part ``select`` (Fashion-MNIST, Horovod's
#: lr * size(), momentum 0.9 or none; benchmarks/results/convergence_horovod/horovod.md):
#: with momentum DANA + DC-ASGD-a + Gap-Aware (9.59 %, against 9.80 % without DC-ASGD-a and
#: 10.94 % for Gap-Aware with a shared momentum; DANA alone diverged from M = 16 on), without
#: it Gap-Aware alone (10.17 %, DC-ASGD-a + Gap-Aware 10.23 %: within noise, the rule is the
#: lowest mean). Other optimizers keep DC-ASGD-a alone, hvd_dc's earlier default (not measured
#: there: Gap-Aware and DANA are SGD's).
MEASURED_DEFAULTS = {
    "sgd_momentum": ("adaptive", "gap_aware", "dana"),
    "sgd": ("none", "gap_aware", "shared"),
    "other": ("adaptive", "none", "shared"),
}


def optimizer_kind(optimizer: torch.optim.Optimizer) -> str:
    """The row of :data:`MEASURED_DEFAULTS` for ``optimizer``."""
    if type(optimizer) is not torch.optim.SGD:
        return "other"
    return "sgd_momentum" if any(float(g.get("momentum", 0.0)) > 0.0 for g in optimizer.param_groups) else "sgd"


def resolve_defaults(optimizer: torch.optim.Optimizer, dc_variant: Any, staleness_policy: Any) -> tuple:
    """``(dc_variant, staleness_policy)`` with ``"auto"`` replaced by the measured default."""
    variant, policy, _ = MEASURED_DEFAULTS[optimizer_kind(optimizer)]
    return (variant if dc_variant == "auto" else dc_variant, policy if staleness_policy == "auto" else staleness_policy)


def resolve_async_momentum(value: Any, optimizer: torch.optim.Optimizer) -> str:
    """``async_momentum`` as the server runs it: ``"auto"`` resolved for ``optimizer``;
    ``ValueError`` for an unknown value or DANA/reduced on another class than SGD."""
    if value == "auto":
        return MEASURED_DEFAULTS[optimizer_kind(optimizer)][2]
    if value not in ASYNC_MOMENTUM:
        raise ValueError(f"async_momentum must be 'auto' or one of {', '.join(repr(a) for a in ASYNC_MOMENTUM)}; "
                         f"got {value!r}")
    if value != "shared" and type(optimizer) is not torch.optim.SGD:
        raise ValueError(f"async_momentum={value!r} acts on torch.optim.SGD's momentum; this optimizer is "
                         f"{type(optimizer).__module__}.{type(optimizer).__qualname__} (use async_momentum='shared')")
    return value


def lr_scale(options: HorovodOptions, num_workers: int) -> float:
    """The factor the server applies to every push's lr: ``1/size()`` for a push that is
    ``1/size()`` of an ``Average`` step, else 1."""
    if options.lr_scaling == "per_step" and options.op == Average:
        return 1.0 / num_workers
    return 1.0


def check(op: Any, gradient_predivide_factor: Any, num_groups: Any, groups: Any, sparse_as_dense: Any,
          process_set: Any, num_workers: int, lr_scaling: Any = "auto") -> HorovodOptions:
    """Validate Horovod's keywords and ``lr_scaling`` (ValueError naming the problem)."""
    if lr_scaling == "auto":
        lr_scaling = "per_step"
    if lr_scaling not in LR_SCALINGS:
        raise ValueError(f"lr_scaling must be 'auto', 'per_step' or 'per_push'; got {lr_scaling!r}")
    if op is None:
        op = Average
    if not isinstance(op, ReduceOp) or op not in (Average, Sum, Adasum):
        raise ValueError(f"DistributedOptimizer: op must be hvd.Average or hvd.Sum; got {op!r}")
    if op == Adasum and num_workers > 1:
        raise ValueError(
            "DistributedOptimizer(op=hvd.Adasum): Adasum combines the gradients that all workers computed at the "
            "same step, and an asynchronous parameter server never has those together; hvd_dc cannot do it. Use "
            "op=hvd.Average (each worker's gradient applied as it is) and the single-process learning rate")
    if isinstance(gradient_predivide_factor, bool) or not isinstance(gradient_predivide_factor, (int, float)) \
            or not math.isfinite(gradient_predivide_factor) or gradient_predivide_factor <= 0:
        raise ValueError(f"gradient_predivide_factor must be a number > 0; got {gradient_predivide_factor!r}")
    if gradient_predivide_factor != 1.0 and op != Average:
        raise ValueError("gradient_predivide_factor not supported with op != Average")
    if num_groups:
        warnings.warn("Parameter `num_groups` has been replaced by `groups` (Horovod); hvd_dc pushes the whole "
                      "model at once and ignores both", DeprecationWarning, stacklevel=3)
        if groups is None:
            groups = num_groups
    if groups is not None:
        if isinstance(groups, bool) or not (isinstance(groups, list) or (isinstance(groups, int) and groups > 0)):
            raise ValueError("groups should be a non-negative integer or a list of list of torch.Tensor.")
        if isinstance(groups, list):
            seen = set()
            for group in groups:
                for p in group:
                    if not isinstance(p, torch.Tensor):
                        raise ValueError("groups must consist of torch.Tensor.")
                    if id(p) in seen:
                        raise ValueError("A parameter can only appear once in groups.")
                    seen.add(id(p))
    if not isinstance(sparse_as_dense, bool):
        raise ValueError(f"sparse_as_dense must be True or False; got {sparse_as_dense!r}")
    if not is_global(process_set):
        raise ValueError(
            f"DistributedOptimizer(process_set={process_set}): hvd_dc trains one model on the parameter server and "
            "every worker pushes its gradients there, so a process set cannot train a model of its own (a model is "
            "registered with the server by all the workers together, and the server's windows span all of them); "
            "leave process_set out (the global set). Process sets work for collectives: "
            "hvd.allreduce(..., process_set=...)")
    return HorovodOptions(op, float(gradient_predivide_factor), lr_scaling)


def agreed(options: HorovodOptions) -> Dict[str, Any]:
    """``op``, ``gradient_predivide_factor`` and ``lr_scaling`` under their argument names,
    for the registration's model check (:func:`hvd_dc.layout.diff_specs`): a worker that
    passed another value fails registration on every worker with the difference named, as a
    different model does (a collective of its own here would hang when a worker never
    reaches registration, where the check names that worker)."""
    return {"op": options.op.value,
            "gradient_predivide_factor": options.gradient_predivide_factor,
            "lr_scaling": options.lr_scaling}


def apply(optimizer: torch.optim.Optimizer, params: List[torch.nn.Parameter], options: HorovodOptions,
          num_workers: int) -> None:
    """After registration, for ``Sum`` under ``lr_scaling="per_push"``: scale each gradient
    by ``size()`` as backward produces it."""
    if options.op == Sum and num_workers > 1 and options.lr_scaling == "per_push":
        factor = float(num_workers)
        handles = [p.register_hook(lambda g, k=factor: g * k) for p in params]
        optimizer._hvd_dc_op_hooks = handles  # type: ignore[attr-defined]

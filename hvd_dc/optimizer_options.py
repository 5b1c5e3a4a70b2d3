"""Horovod's ``DistributedOptimizer`` keywords, and what each means for asynchronous pushes.

``hvd.DistributedOptimizer`` is ``hvd.DistributedDCOptimizer``: it takes Horovod's
arguments in Horovod's order, then the DC options as keywords. This module checks
Horovod's ones (:func:`check`) and applies what they mean here (:func:`apply`):

* ``op``. Horovod's optimizer applies one *reduced* gradient per step: ``Average``, the
  mean of the ``size()`` workers' gradients (computed on the same weights); ``Sum``, their
  sum, ``size()`` times the mean. A DC-ASGD push carries one worker's gradient, applied on
  its own. Its expectation is the mean's, so **``Average`` (the default) pushes the
  gradient as it is** (what hvd_dc always did), and **``Sum`` pushes ``size()`` times it**
  (the same ratio as in Horovod; a hook scales the gradient as backward produces it, so
  clipping after ``synchronize()`` sees the scaled gradient, as it sees the sum in
  Horovod). ``Adasum`` combines gradients of the same step across workers, which an
  asynchronous server never has: refused (with one worker, where Horovod's Adasum is the
  plain gradient, accepted). Every worker must pass the same ``op``.
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
from typing import Any, List, NamedTuple

import torch

from .collectives import Adasum, Average, ReduceOp, Sum, allgather_object, is_global

__all__ = ["HorovodOptions", "check", "apply"]


class HorovodOptions(NamedTuple):
    op: ReduceOp
    gradient_predivide_factor: float


def check(op: Any, gradient_predivide_factor: Any, num_groups: Any, groups: Any, sparse_as_dense: Any,
          process_set: Any, num_workers: int) -> HorovodOptions:
    """Validate Horovod's keywords (ValueError naming the problem)."""
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
    return HorovodOptions(op, float(gradient_predivide_factor))


def apply(optimizer: torch.optim.Optimizer, params: List[torch.nn.Parameter], options: HorovodOptions,
          num_workers: int) -> None:
    """After registration: check every worker passed the same ``op`` (a collective among
    the workers; a difference is the same ValueError on each), then, for ``Sum``, scale
    each gradient by ``size()`` as backward produces it."""
    mine = (options.op.value, options.gradient_predivide_factor)
    everyone = allgather_object(mine, name="DistributedOptimizer.op")
    for r, theirs in enumerate(everyone):
        if tuple(theirs) != mine:
            raise ValueError(f"hvd_dc: the workers passed different DistributedOptimizer op/gradient_predivide_factor:"
                             f" worker 0 passed {tuple(everyone[0])}, worker {r} passed {tuple(theirs)}")
    if options.op == Sum and num_workers > 1:
        factor = float(num_workers)
        handles = [p.register_hook(lambda g, k=factor: g * k) for p in params]
        optimizer._hvd_dc_op_hooks = handles  # type: ignore[attr-defined]

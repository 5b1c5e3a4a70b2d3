"""Deterministic delay simulator: M workers in one process, the server's own code.

The server side is a real :class:`hvd_dc.server_state.ServerState`, the object the
parameter server's loop drives (DC math from :mod:`hvd_dc.dc_math`, the staleness policy,
the asynchronous momentum, the user's optimizer on the master weights), built from the
same :class:`~hvd_dc.dc_math.DCOptions` a worker's ``DistributedDCOptimizer`` sends. Each
simulated worker ``m`` owns the weights it last pulled, which *are* the server's backup
``w_bak(m)`` (the state's backup buffer, written at pull time exactly as the server
writes it). One push:

1. pick the worker ``m`` (round robin ``0, 1, ..., M-1, 0, ...``: staleness ``M-1`` in
   steady state, or uniformly at random: ``pattern="random"``). :func:`run` continues the
   round robin across epochs; the earlier studies' :func:`simulate` restarts it at worker 0
   each epoch (kept so that their runs reproduce), which gives the workers skipped at an
   epoch's end one push of staleness up to ``2M - 2``;
2. compute the gradient of the next minibatch on ``w_bak(m)``;
3. ``ServerState.apply_push(m, g, hyper)`` (Algorithm 2, then the optimizer step) and
   ``ServerState.pull(m)`` (``w_bak(m) <-`` the weights the server sends), as a real
   worker's ``step()`` does.

Sequential SGD is the same loop with ``M = 1``. SSGD is exact synchronous data
parallelism: M minibatch gradients on the *same* weights, averaged, one optimizer step
(the same ServerState with one worker, no compensation).

Gradients (``gradients=``):

* ``"loop"``: one forward/backward per push, in push order (the reference).
* ``"batched"``: the gradients of pushes whose weights are already known are computed in
  one call. Under round robin the next M pushes (one per worker) are computed on the M
  current backups, none of which changes before its own push; under a random order, the
  pushes up to the next repeated worker. The group's gradients come from one
  ``vmap`` over the weight sets and minibatches (``torch.func``); SSGD's M minibatches,
  all on the same weights, are one forward/backward on their concatenation (the mean over
  M equal minibatches is the mean of their means). Same pushes, same staleness, same
  order of server updates; the gradients differ from the loop's only by floating-point
  rounding (tests/test_convergence_sim.py).

Minibatches come from one shuffled stream per epoch (the t-th push of an epoch takes the
t-th minibatch, whichever worker pushes), so an epoch is one pass over the data for
every method. Everything is seeded: a run is a pure function of its arguments.
"""

from __future__ import annotations

import dataclasses
import random
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from hvd_dc.dc_math import DCOptions
from hvd_dc.layout import ModelSpec, read_hyperparameters
from hvd_dc.server_state import ServerState

from . import common


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    """What the simulated parameter server runs: ``DistributedDCOptimizer``'s options
    (``dc_variant``, ``dc_lambda`` (None: the study's value for the variant),
    ``staleness_policy``, ``async_momentum``, the server-side ``lr_scale``) and the
    wrapped optimizer: ``torch.optim.SGD`` with ``momentum`` and ``nesterov``, or
    (``optimizer="adam"``) ``torch.optim.Adam`` with ``betas=(momentum, 0.999)``."""

    variant: str = "none"
    dc_lambda: Optional[float] = None
    staleness_policy: str = "none"
    async_momentum: str = "shared"
    lr_scale: float = 1.0
    momentum: float = 0.0
    nesterov: bool = False
    optimizer: str = "sgd"

    def make_optimizer(self, params, lr: float) -> torch.optim.Optimizer:
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=lr, betas=(self.momentum, 0.999))
        return torch.optim.SGD(params, lr=lr, momentum=self.momentum, nesterov=self.nesterov)

    def dc_options(self, dc_momentum: float = common.DC_MOMENTUM) -> DCOptions:
        lam = common.DC_LAMBDA[self.variant] if self.dc_lambda is None or self.variant == "none" else self.dc_lambda
        return DCOptions.create(self.variant, lam, dc_momentum, staleness_policy=self.staleness_policy,
                                async_momentum=self.async_momentum, lr_scale=self.lr_scale)


def make_server_state(optimizer: torch.optim.Optimizer, num_workers: int, options: ServerOptions) -> ServerState:
    """A ServerState built as the server builds it from a worker's registration
    (same ModelSpec fields as ``DistributedDCOptimizer``), initial weights = the
    optimizer's parameters."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    spec = ModelSpec.from_optimizer(optimizer, num_workers, dc=options.dc_options())
    layout = spec.layout()
    initial = torch.zeros(layout.nbytes, dtype=torch.uint8)
    for view, p in zip(layout.param_views(initial), params):
        view.copy_(p.detach())
    backups = [torch.zeros(layout.nbytes, dtype=torch.uint8) for _ in range(num_workers)]
    return ServerState(spec, initial, backups)


def simulate(task: str, method: str, m: int, seed: int, lr: float, epochs: int, pattern: str = "round_robin",
             split: str = "test", momentum: float = 0.0, dc_lambda: Optional[float] = None,
             eval_epochs: Optional[Sequence[int]] = None) -> Dict:
    """One run of a method of :data:`common.ALL_METHODS` (the earlier studies' interface):
    ``sgd`` (one worker), ``ssgd`` (M synchronous workers) or an asynchronous method at
    ``M = m``; ``momentum`` is the server's SGD momentum; see :func:`run`."""
    if method in ("sgd", "ssgd"):
        options = ServerOptions(momentum=momentum)
    else:
        options = ServerOptions(common.VARIANT[method], dc_lambda, common.policy_of(method), momentum=momentum)
    workers = 1 if method == "sgd" else m
    return run(task, workers, seed, lr, epochs, options, synchronous=method == "ssgd", pattern=pattern,
               split=split, eval_epochs=eval_epochs, round_robin_across_epochs=False)


def run(task: str, workers: int, seed: int, lr: float, epochs: int, options: ServerOptions,
        synchronous: bool = False, pattern: str = "round_robin", split: str = "test",
        eval_epochs: Optional[Sequence[int]] = None, gradients: str = "loop",
        lr_at: Callable[[float, int, int], float] = common.lr_at, train_on_val: bool = False,
        batch: Optional[int] = None, round_robin_across_epochs: bool = True) -> Dict:
    """Train one run; return per-epoch curves and the server's staleness summary.

    ``workers``: M (1: sequential). ``synchronous``: SSGD (M gradients on the same weights,
    averaged, one step at ``lr``). ``split``: the held-out set evaluated ("val" while
    tuning, "test"). ``eval_epochs``: the (1-based) epochs after which to evaluate (default:
    every epoch; the last is always evaluated). ``lr_at(lr, epoch, epochs)``: the schedule
    (the worker's lr; the server applies ``options.lr_scale`` times it). ``train_on_val``:
    train on the training and validation images together (final runs, once tuning is
    done). ``batch``: per-worker minibatch (default: the task's).
    ``round_robin_across_epochs=False``: the earlier studies' order (see the module docstring).
    """
    if gradients not in ("loop", "batched"):
        raise ValueError(f"gradients must be 'loop' or 'batched'; got {gradients!r}")
    if pattern not in ("round_robin", "random"):
        raise ValueError(f"pattern must be 'round_robin' or 'random'; got {pattern!r}")
    torch.set_num_threads(1)
    cfg = common.TASKS[task]
    batch = cfg.batch if batch is None else batch
    x_tr, y_tr, x_va, y_va, x_te, y_te = common.load_task(task)
    if train_on_val:
        x_tr, y_tr = torch.cat([x_tr, x_va]), torch.cat([y_tr, y_va])
    x_ev, y_ev = (x_va, y_va) if split == "val" else (x_te, y_te)
    model = common.make_model(task, seed)
    params = list(model.parameters())
    opt = options.make_optimizer(params, lr)
    state = make_server_state(opt, 1 if synchronous else workers, options)
    evaluate_after = set(range(1, epochs + 1)) if eval_epochs is None else set(eval_epochs) | {epochs}
    layout = state.layout
    server_params = layout.param_views(state.weights)
    wire = torch.zeros(layout.wire_nbytes, dtype=torch.uint8)
    wire_segments = layout.segment_views(wire, wire=True)
    wire_params = layout.param_views(wire)  # no compression: wire layout == layout
    backup_params = [layout.param_views(b) for b in state.backups]
    hyper = [0.0] * len(state.spec.hyper_slots)
    rng = random.Random(seed)
    grads = _Gradients(model, params, x_tr, y_tr, gradients == "batched")

    curve = {"epoch": [], "err": [], "loss": [], "train_loss": [], "seconds": []}
    start, eval_seconds = time.perf_counter(), 0.0
    for epoch in range(epochs):
        opt.param_groups[0]["lr"] = lr_at(lr, epoch, epochs)
        read_hyperparameters(opt.param_groups, state.spec.hyper_slots, hyper)
        batches = common.batch_order(len(x_tr), batch, seed, epoch)
        total, count = 0.0, 0
        if synchronous:
            for i in range(0, len(batches) - workers + 1, workers):
                group = batches[i : i + workers]
                total += grads.average(server_params, group, wire_params)
                count += len(group)
                state.apply_push(0, wire_segments, hyper)
                state.pull(0)  # every worker receives the new weights (staleness 0)
        else:
            first = epoch * len(batches) if round_robin_across_epochs else 0
            order = [(first + t) % workers if pattern == "round_robin" else rng.randrange(workers)
                     for t in range(len(batches))]
            for group in grads.groups(order):
                results = grads.at([backup_params[order[t]] for t in group], [batches[t] for t in group])
                for t, (loss, g) in zip(group, results):
                    total += loss
                    count += 1
                    for wp, gp in zip(wire_params, g):
                        wp.copy_(gp)
                    state.apply_push(order[t], wire_segments, hyper)
                    state.pull(order[t])
        if epoch + 1 not in evaluate_after:
            continue
        eval_start = time.perf_counter()
        with torch.no_grad():
            for p, w in zip(params, server_params):
                p.copy_(w)
        err, loss = common.evaluate(model, x_ev, y_ev)
        curve["epoch"].append(epoch + 1)
        curve["err"].append(err)
        curve["loss"].append(loss)
        curve["train_loss"].append(total / max(count, 1))
        curve["seconds"].append(eval_start - start - eval_seconds)  # training time only
        eval_seconds += time.perf_counter() - eval_start
    return {"curve": curve, "server": state.summary()}


class _Gradients:
    """Minibatch gradients of ``model`` at given weights, one at a time or batched."""

    def __init__(self, model: torch.nn.Module, params: List[torch.nn.Parameter], x: torch.Tensor, y: torch.Tensor,
                 batched: bool) -> None:
        self.model, self.params, self.x, self.y, self.batched = model, params, x, y, batched
        if batched:
            from torch.func import functional_call, grad_and_value, vmap

            names = [n for n, _ in model.named_parameters()]
            self.names = names

            def loss_fn(weights, xb, yb):
                return F.cross_entropy(functional_call(model, weights, (xb,)), yb)

            self._vmapped = vmap(grad_and_value(loss_fn))

    def groups(self, order: Sequence[int]) -> List[List[int]]:
        """Push indices in runs whose gradients can be computed together: each run ends
        before a worker that is already in it (its weights change at its own pull)."""
        if not self.batched:
            return [[t] for t in range(len(order))]
        out: List[List[int]] = []
        seen: set = set()
        for t, w in enumerate(order):
            if not out or w in seen:
                out.append([])
                seen = set()
            out[-1].append(t)
            seen.add(w)
        return out

    def _load(self, weights: Sequence[torch.Tensor]) -> None:
        with torch.no_grad():
            for p, w in zip(self.params, weights):
                p.copy_(w)
        for p in self.params:
            p.grad = None

    def at(self, weight_sets: Sequence[Sequence[torch.Tensor]], batches: Sequence[torch.Tensor]) -> List:
        """``[(loss, [grad per parameter]), ...]``, one per (weights, minibatch) pair."""
        if not self.batched or len(batches) == 1:
            out = []
            for weights, idx in zip(weight_sets, batches):
                self._load(weights)
                loss = F.cross_entropy(self.model(self.x[idx]), self.y[idx])
                loss.backward()
                out.append((float(loss.detach()), [p.grad for p in self.params]))
            return out
        stacked = {n: torch.stack([ws[k] for ws in weight_sets]) for k, n in enumerate(self.names)}
        xb = torch.stack([self.x[idx] for idx in batches])
        yb = torch.stack([self.y[idx] for idx in batches])
        g, losses = self._vmapped(stacked, xb, yb)
        return [(float(losses[j]), [g[n][j] for n in self.names]) for j in range(len(batches))]

    def average(self, weights: Sequence[torch.Tensor], batches: Sequence[torch.Tensor],
                out: Sequence[torch.Tensor]) -> float:
        """SSGD: write the mean of the minibatches' gradients at ``weights`` into ``out``;
        return the sum of their losses."""
        self._load(weights)
        if self.batched:
            idx = torch.cat(list(batches))
            loss = F.cross_entropy(self.model(self.x[idx]), self.y[idx])
            loss.backward()
            for o, p in zip(out, self.params):
                o.copy_(p.grad)
            return float(loss.detach()) * len(batches)
        total = 0.0
        for o in out:
            o.zero_()
        for idx in batches:
            self._load(weights)
            loss = F.cross_entropy(self.model(self.x[idx]), self.y[idx])
            loss.backward()
            total += float(loss.detach())
            for o, p in zip(out, self.params):
                o.add_(p.grad, alpha=1.0 / len(batches))
        return total

"""Deterministic delay simulator: M workers in one process, the server's own code.

The server side is a real :class:`hvd_dc.server_state.ServerState`, the object the
parameter server's loop drives (DC math from :mod:`hvd_dc.dc_math` plus the user's
optimizer on the master weights). Each simulated worker ``m`` owns the weights it last
pulled, which *are* the server's backup ``w_bak(m)`` (the state's backup buffer, copied
at pull time exactly as the server does). One push:

1. pick the worker ``m`` (round robin ``0, 1, ..., M-1, 0, ...``: staleness ``M-1`` in
   steady state, or uniformly at random: ``pattern="random"``);
2. load ``w_bak(m)`` into the model and compute the gradient of the next minibatch on it;
3. ``ServerState.apply_push(m, g, hyper)`` (Algorithm 2: ``g + lambda g*g*(w - w_bak(m))``,
   then the optimizer step) and ``ServerState.pull(m)`` (``w_bak(m) <- w``), as a real
   worker's ``step()`` does.

Sequential SGD is the same loop with ``M = 1`` (staleness 0, plain SGD). SSGD is exact
synchronous data parallelism: M minibatch gradients on the *same* weights, averaged,
one optimizer step (the same ServerState with ``dc_variant="none"``, one worker).

Minibatches come from one shuffled stream per epoch (the t-th push of an epoch takes the
t-th minibatch, whichever worker pushes), so an epoch is one pass over the data for
every method. Everything is seeded: a run is a pure function of its arguments.
"""

from __future__ import annotations

import random
import time
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from hvd_dc.dc_math import DCOptions
from hvd_dc.layout import ModelSpec, read_hyperparameters
from hvd_dc.server_state import ServerState

from . import common


def make_server_state(optimizer: torch.optim.Optimizer, num_workers: int, variant: str, dc_lambda: float,
                      dc_momentum: float = common.DC_MOMENTUM, staleness_policy: str = "none") -> ServerState:
    """A ServerState built as the server builds it from a worker's registration
    (same ModelSpec fields as ``DistributedDCOptimizer``), initial weights = the
    optimizer's parameters."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    dc = DCOptions.create(variant, dc_lambda, dc_momentum, staleness_policy=staleness_policy)
    spec = ModelSpec.from_optimizer(optimizer, num_workers, dc=dc)
    layout = spec.layout()
    initial = torch.zeros(layout.nbytes, dtype=torch.uint8)
    for view, p in zip(layout.param_views(initial), params):
        view.copy_(p.detach())
    backups = [torch.zeros(layout.nbytes, dtype=torch.uint8) for _ in range(num_workers)]
    return ServerState(spec, initial, backups)


def simulate(task: str, method: str, m: int, seed: int, lr: float, epochs: int, pattern: str = "round_robin",
             split: str = "test", momentum: float = 0.0, dc_lambda: Optional[float] = None,
             eval_epochs: Optional[Sequence[int]] = None) -> Dict:
    """Train one run; return per-epoch curves and the server's staleness summary.

    ``split``: the held-out set evaluated ("val" while tuning, "test"). ``momentum``: the
    server's SGD momentum (0: the paper's reported setting). ``dc_lambda``: lambda0 instead
    of the paper's value for the method's variant. ``eval_epochs``: the (1-based) epochs
    after which to evaluate (default: every epoch; the last is always evaluated).
    """
    torch.set_num_threads(1)
    cfg = common.TASKS[task]
    x_tr, y_tr, x_va, y_va, x_te, y_te = common.load_task(task)
    x_ev, y_ev = (x_va, y_va) if split == "val" else (x_te, y_te)
    model = common.make_model(task, seed)
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum)  # the paper's numbers are without momentum
    if method == "ssgd":
        workers, variant = 1, "none"
    elif method == "sgd":
        workers, variant = 1, "none"
    else:
        workers, variant = m, common.VARIANT[method]
    lam = common.DC_LAMBDA[variant] if dc_lambda is None or variant == "none" else dc_lambda
    policy = "none" if method in ("sgd", "ssgd") else common.policy_of(method)
    state = make_server_state(opt, workers, variant, lam, staleness_policy=policy)
    evaluate_after = set(range(1, epochs + 1)) if eval_epochs is None else set(eval_epochs) | {epochs}
    layout = state.layout
    server_params = layout.param_views(state.weights)
    wire = torch.zeros(layout.wire_nbytes, dtype=torch.uint8)
    wire_segments = layout.segment_views(wire, wire=True)
    wire_params = layout.param_views(wire)  # no compression: wire layout == layout
    backup_params = [layout.param_views(b) for b in state.backups]
    hyper = [0.0] * len(state.spec.hyper_slots)
    rng = random.Random(seed)

    def grad_at(weights: List[torch.Tensor], idx: torch.Tensor) -> float:
        with torch.no_grad():
            for p, w in zip(params, weights):
                p.copy_(w)
        for p in params:
            p.grad = None
        loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
        loss.backward()
        return float(loss.detach())

    curve = {"epoch": [], "err": [], "loss": [], "train_loss": [], "seconds": []}
    start, eval_seconds = time.perf_counter(), 0.0
    n = len(x_tr)
    for epoch in range(epochs):
        opt.param_groups[0]["lr"] = common.lr_at(lr, epoch, epochs)
        read_hyperparameters(opt.param_groups, state.spec.hyper_slots, hyper)
        batches = common.batch_order(n, cfg.batch, seed, epoch)
        total, count = 0.0, 0
        if method == "ssgd":
            for i in range(0, len(batches) - m + 1, m):
                for wp in wire_params:
                    wp.zero_()
                for idx in batches[i : i + m]:
                    total += grad_at(server_params, idx)
                    count += 1
                    for wp, p in zip(wire_params, params):
                        wp.add_(p.grad, alpha=1.0 / m)
                state.apply_push(0, wire_segments, hyper)
                state.pull(0)  # every worker receives the new weights (staleness 0)
        else:
            for t, idx in enumerate(batches):
                w = t % workers if pattern == "round_robin" else rng.randrange(workers)
                total += grad_at(backup_params[w], idx)
                count += 1
                for wp, p in zip(wire_params, params):
                    wp.copy_(p.grad)
                state.apply_push(w, wire_segments, hyper)
                state.pull(w)
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

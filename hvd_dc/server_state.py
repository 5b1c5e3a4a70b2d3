"""The parameter server's model state and Algorithm 2, independent of MPI.

:class:`ServerState` owns the master weights, the wrapped optimizer that updates them,
the delay compensator (with its MeanSquare buffers), and the per-worker bookkeeping
(counters and staleness). It is handed one *backup* byte buffer per worker: the server
loop passes the reply areas of the data window, so writing a backup is also what sends
the weights; the replay test passes plain tensors. Its two operations are Algorithm 2's:

* :meth:`apply_push`: ``g_dc = g + lambda_t * g*g*(w - w_bak(m))`` per flat segment, then
  one step of the user's optimizer on the master weights with ``g_dc`` as the gradient
  (with plain SGD: ``w <- w - eta * g_dc``, Eq. 10).
* :meth:`pull`: ``w_bak(m) <- w``, one memcpy of the whole flat model.

The optimizer runs on one flat tensor per (param group, dtype) segment when its class is
known to be element-wise (SGD, Adam, ...), which is exact and keeps the server free of
per-parameter loops; any other class runs on per-parameter views, also exact.
"""

from __future__ import annotations

import inspect
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .dc_math import DelayCompensator
from .layout import FlatLayout, ModelSpec, resolve_class, write_hyperparameters

__all__ = ["ServerState", "ELEMENTWISE_OPTIMIZERS", "build_layout"]

#: Optimizer classes whose update of an element depends only on that element's own
#: gradient and state, so running them on a flat concatenation is exact.
ELEMENTWISE_OPTIMIZERS = tuple(
    getattr(torch.optim, name)
    for name in ("SGD", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop", "Adagrad", "Adadelta", "Rprop", "ASGD")
    if hasattr(torch.optim, name)
)


def build_layout(spec: ModelSpec) -> FlatLayout:
    return FlatLayout(spec.params, wire_fp16=(spec.compression == "fp16"))


class ServerState:
    """Master weights, optimizer and DC state for one served model.

    ``initial_weights``: uint8 tensor in the model layout (worker 0's values).
    ``backups``: one uint8 tensor per worker, in the model layout; each is ``w_bak(m)``.
    """

    def __init__(
        self,
        spec: ModelSpec,
        initial_weights: torch.Tensor,
        backups: Sequence[torch.Tensor],
        flat_optimizer: Optional[bool] = None,
    ) -> None:
        self.spec = spec
        self.layout = build_layout(spec)
        self.num_workers = spec.num_workers
        if len(backups) != self.num_workers:
            raise ValueError(f"need {self.num_workers} backup buffers, got {len(backups)}")
        layout = self.layout
        self.weights = torch.zeros(layout.nbytes, dtype=torch.uint8)
        self.weights.copy_(initial_weights[: layout.nbytes])
        self.grad_buffer = torch.zeros(layout.nbytes, dtype=torch.uint8)
        self.weight_segments = layout.segment_views(self.weights)
        self.grad_segments = layout.segment_views(self.grad_buffer)
        self.backups = list(backups)
        self.backup_segments = [layout.segment_views(b) for b in self.backups]
        for b in self.backups:
            b.copy_(self.weights)  # Algorithm 2: w_bak(m) = w_0 for every worker

        opt_class = resolve_class(*spec.optimizer_class)
        if flat_optimizer is None:
            flat_optimizer = opt_class in ELEMENTWISE_OPTIMIZERS
        self.flat_optimizer = flat_optimizer
        self.master_params = self._make_master_params(flat_optimizer)
        self.optimizer = self._make_optimizer(opt_class)
        # groups with no trained parameter have no server-side group: drop their slots
        keep = [k for k, (gi, _, _) in enumerate(spec.hyper_slots) if gi in self._group_index]
        self._hyper_keep = keep
        self._hyper_slots = [
            (self._group_index.index(spec.hyper_slots[k][0]),) + tuple(spec.hyper_slots[k][1:]) for k in keep
        ]
        self.compensator = DelayCompensator(
            spec.dc_variant,
            spec.dc_lambda,
            self.num_workers,
            [s.numel for s in layout.segments],
            [s.dtype for s in layout.segments],
            momentum=spec.dc_momentum,
            eps=spec.dc_eps,
            mean_square=spec.dc_mean_square,
        )
        self._decompressed: List[Optional[torch.Tensor]] = [
            torch.empty(s.numel, dtype=s.dtype) if ws.dtype != s.dtype else None
            for s, ws in zip(layout.segments, layout.wire_segments)
        ]
        self.updates = 0
        self.accepted = np.zeros(self.num_workers, dtype=np.int64)
        self.rejected = np.zeros(self.num_workers, dtype=np.int64)
        self.pulls = np.zeros(self.num_workers, dtype=np.int64)
        self.updates_at_pull = np.zeros(self.num_workers, dtype=np.int64)
        self.staleness_sum = np.zeros(self.num_workers, dtype=np.int64)
        self.staleness_max = np.zeros(self.num_workers, dtype=np.int64)
        self.staleness_hist: Dict[int, int] = {}

    # -- construction -------------------------------------------------------------------

    def _make_master_params(self, flat: bool) -> List[List[torch.nn.Parameter]]:
        """Parameters the optimizer sees, per group: flat segments or per-parameter views."""
        groups: List[List[torch.nn.Parameter]] = [[] for _ in self.spec.groups]
        if flat:
            for seg, w, g in zip(self.layout.segments, self.weight_segments, self.grad_segments):
                p = torch.nn.Parameter(w, requires_grad=True)
                p.grad = g
                groups[seg.group].append(p)
        else:
            weights = self.layout.param_views(self.weights)
            grads = self.layout.param_views(self.grad_buffer)
            for info, w, g in zip(self.layout.params, weights, grads):
                p = torch.nn.Parameter(w, requires_grad=True)
                p.grad = g
                groups[info.group].append(p)
        return groups

    def _make_optimizer(self, opt_class: type) -> torch.optim.Optimizer:
        groups = []
        for params, hyper in zip(self.master_params, self.spec.groups):
            if params:
                groups.append({**hyper, "params": params})
        self._group_index = [i for i, params in enumerate(self.master_params) if params]
        accepted = inspect.signature(opt_class.__init__).parameters
        kwargs = {k: v for k, v in self.spec.defaults.items() if k in accepted}
        try:
            return opt_class(groups, **kwargs)
        except Exception as exc:  # a custom class whose constructor does not take its defaults
            raise RuntimeError(
                f"the parameter server could not build {'.'.join(self.spec.optimizer_class)} from the workers' "
                f"hyperparameters ({exc})"
            ) from exc

    # -- Algorithm 2 ----------------------------------------------------------------------

    def apply_push(self, worker: int, wire_grad: Sequence[torch.Tensor], hyper: Sequence[float]) -> tuple:
        """Apply worker ``worker``'s gradient (wire-layout segments) to the master weights.

        Returns ``(accepted, staleness)``. A gradient with any non-finite element is
        rejected whole and counted; the master weights are not touched.
        """
        staleness = int(self.updates - self.updates_at_pull[worker])
        for g in wire_grad:
            if not bool(torch.isfinite(g).all()):
                self.rejected[worker] += 1
                return False, staleness
        self._set_hyperparameters(hyper)
        comp = self.compensator
        for i, (g, w, wb, out) in enumerate(
            zip(wire_grad, self.weight_segments, self.backup_segments[worker], self.grad_segments)
        ):
            dec = self._decompressed[i]
            if dec is not None:
                dec.copy_(g)
                g = dec
            comp.compensate(i, worker, g, w, wb, out)
        self.optimizer.step()
        self.updates += 1
        self.accepted[worker] += 1
        self.staleness_sum[worker] += staleness
        if staleness > self.staleness_max[worker]:
            self.staleness_max[worker] = staleness
        self.staleness_hist[staleness] = self.staleness_hist.get(staleness, 0) + 1
        return True, staleness

    def pull(self, worker: int) -> None:
        """``w_bak(worker) <- w``: the copy worker ``worker`` receives and computes on."""
        self.backups[worker].copy_(self.weights)
        self.updates_at_pull[worker] = self.updates
        self.pulls[worker] += 1

    def _set_hyperparameters(self, values: Sequence[float]) -> None:
        if self._hyper_slots:
            write_hyperparameters(self.optimizer.param_groups, self._hyper_slots, [values[k] for k in self._hyper_keep])

    # -- reporting ------------------------------------------------------------------------

    def summary(self) -> dict:
        acc = self.accepted
        total = int(acc.sum())
        mean = float(self.staleness_sum.sum() / total) if total else 0.0
        return {
            "updates": int(self.updates),
            "rejected": int(self.rejected.sum()),
            "accepted_per_worker": acc.tolist(),
            "rejected_per_worker": self.rejected.tolist(),
            "staleness_mean": mean,
            "staleness_max": int(self.staleness_max.max()) if total else 0,
            "finite": all(bool(torch.isfinite(w).all()) for w in self.weight_segments),
        }

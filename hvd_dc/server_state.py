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

When the fused kernels (:mod:`hvd_dc.kernels`) are built, float32/float64 segments are
compensated in one pass, and with ``torch.optim.SGD`` the compensation, the SGD step and
the copy into the worker's reply area are one pass; the results are bit-identical to the
torch path, which remains the fallback and the reference.

With ``device`` given (a CUDA device: ``server_device``, see :mod:`hvd_dc.devices`) the
state is *staged*: master weights, every ``w_bak(m)``, MeanSquare and the optimizer's
state live on that device, each arriving gradient is copied there from the window, and
each reply is copied back into the worker's reply area; the math is the torch path, run
on the device. ``device="cpu"`` stages through separate CPU buffers, which is how that
path is tested without a GPU.
"""

from __future__ import annotations

import inspect
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from . import kernels
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
        device: Optional[torch.device | str] = None,
    ) -> None:
        self.spec = spec
        self.layout = build_layout(spec)
        self.num_workers = spec.num_workers
        if len(backups) != self.num_workers:
            raise ValueError(f"need {self.num_workers} backup buffers, got {len(backups)}")
        layout = self.layout
        self.staged = device is not None
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        dev = self.device
        self.weights = torch.zeros(layout.nbytes, dtype=torch.uint8, device=dev)
        self.weights.copy_(initial_weights[: layout.nbytes])
        self.grad_buffer = torch.zeros(layout.nbytes, dtype=torch.uint8, device=dev)
        self.weight_segments = layout.segment_views(self.weights)
        self.grad_segments = layout.segment_views(self.grad_buffer)
        #: the buffers the workers read their weights from (the window's reply areas)
        self.replies = list(backups)
        if self.staged:
            self.backups = [torch.empty(layout.nbytes, dtype=torch.uint8, device=dev) for _ in self.replies]
            self._wire_grad = torch.zeros(layout.wire_nbytes, dtype=torch.uint8, device=dev)
            self._wire_grad_segments = layout.segment_views(self._wire_grad, wire=True)
        else:
            self.backups = self.replies  # writing w_bak(m) is sending it
        self.backup_segments = [layout.segment_views(b) for b in self.backups]
        for b in self.backups:
            b.copy_(self.weights)  # Algorithm 2: w_bak(m) = w_0 for every worker
        self.refresh_replies()

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
            device=dev,
        )
        fused_dtypes = all(seg.dtype in kernels.FUSED_DTYPES for seg in layout.segments)
        self.fused = kernels.available() and dev.type == "cpu"
        self.fused_segments = [self.fused and seg.dtype in kernels.FUSED_DTYPES for seg in layout.segments]
        self.fused_sgd = self.fused and fused_dtypes and flat_optimizer and opt_class is torch.optim.SGD and not any(
            g.get("differentiable", False) for g in self.optimizer.param_groups
        )
        # segment i's master parameter and its param group (flat layout only)
        self._segment_params = [p for params in self.master_params for p in params] if flat_optimizer else []
        self._segment_groups = []
        if flat_optimizer:
            for group in self.optimizer.param_groups:
                self._segment_groups.extend([group] * len(group["params"]))
        self._decompressed: List[Optional[torch.Tensor]] = [
            torch.empty(s.numel, dtype=s.dtype, device=dev) if ws.dtype != s.dtype else None
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

    def apply_push(self, worker: int, wire_grad: Sequence[torch.Tensor], hyper: Sequence[float], pull: bool = False) -> tuple:
        """Apply worker ``worker``'s gradient (wire-layout segments) to the master weights;
        with ``pull=True`` also answer the pull that follows it (Algorithm 1).

        Returns ``(accepted, staleness)``. A gradient with any non-finite element is
        rejected whole and counted; the master weights and MeanSquare are not touched.
        """
        staleness = int(self.updates - self.updates_at_pull[worker])
        if self.staged:
            for dst, src in zip(self._wire_grad_segments, wire_grad):
                dst.copy_(src)
            wire_grad = self._wire_grad_segments
        if not self._all_finite(wire_grad):
            self.rejected[worker] += 1
            if pull:
                self.pull(worker)
            return False, staleness
        self._set_hyperparameters(hyper)
        grads = list(wire_grad)
        for i, dec in enumerate(self._decompressed):
            if dec is not None:
                dec.copy_(grads[i])
                grads[i] = dec
        copied = False
        if self.fused_sgd and self._momentum_buffers_ready():
            self._fused_sgd_step(worker, grads, self.backup_segments[worker] if pull else None)
            copied = pull
        else:
            self._compensate(worker, grads)
            self.optimizer.step()
        self.updates += 1
        self.accepted[worker] += 1
        self.staleness_sum[worker] += staleness
        if staleness > self.staleness_max[worker]:
            self.staleness_max[worker] = staleness
        self.staleness_hist[staleness] = self.staleness_hist.get(staleness, 0) + 1
        if pull:
            if copied:
                self._send_backup(worker)
                self._note_pull(worker)
            else:
                self.pull(worker)
        return True, staleness

    def _all_finite(self, wire_grad: Sequence[torch.Tensor]) -> bool:
        if self.device.type != "cpu":
            # one reduction per segment on the device and a single transfer of the verdict
            return bool(torch.stack([torch.isfinite(g).all() for g in wire_grad]).all())
        for g, fused in zip(wire_grad, self.fused_segments):
            ok = kernels.all_finite(g) if fused and g.dtype in kernels.FUSED_DTYPES else bool(torch.isfinite(g).all())
            if not ok:
                return False
        return True

    def _compensate(self, worker: int, grads: Sequence[torch.Tensor]) -> None:
        """g_dc into the master gradient buffer, segment by segment."""
        comp = self.compensator
        adaptive = comp.variant == "adaptive"
        for i, (g, w, wb, out) in enumerate(zip(grads, self.weight_segments, self.backup_segments[worker], self.grad_segments)):
            if self.fused_segments[i]:
                ms = comp.mean_square_of(worker)[i] if adaptive else None
                kernels.compensate(comp.variant, g, w, wb, ms, out, comp.lambda0, comp.momentum, comp.eps)
            else:
                comp.compensate(i, worker, g, w, wb, out)

    def _momentum_buffers_ready(self) -> bool:
        """The fused SGD step needs existing momentum buffers; the first step is torch's."""
        state = self.optimizer.state
        for p, group in zip(self._segment_params, self._segment_groups):
            if group["momentum"] and state.get(p, {}).get("momentum_buffer") is None:
                return False
        return True

    def _fused_sgd_step(self, worker: int, grads: Sequence[torch.Tensor], copies) -> None:
        comp = self.compensator
        adaptive = comp.variant == "adaptive"
        state = self.optimizer.state
        for i, (g, w, wb, p, group) in enumerate(
            zip(grads, self.weight_segments, self.backup_segments[worker], self._segment_params, self._segment_groups)
        ):
            ms = comp.mean_square_of(worker)[i] if adaptive else None
            buf = state[p].get("momentum_buffer") if group["momentum"] else None
            kernels.sgd(comp.variant, g, w, wb, ms, buf, None if copies is None else copies[i], comp.lambda0,
                        comp.momentum, comp.eps, group)

    def pull(self, worker: int) -> None:
        """``w_bak(worker) <- w``: the copy worker ``worker`` receives and computes on."""
        self.backups[worker].copy_(self.weights)
        self._send_backup(worker)
        self._note_pull(worker)

    def _send_backup(self, worker: int) -> None:
        if self.staged:
            self.replies[worker].copy_(self.backups[worker])

    def refresh_replies(self) -> None:
        """Make every reply area hold its worker's ``w_bak(m)`` (after start or a restore)."""
        for m in range(self.num_workers):
            self._send_backup(m)

    def _note_pull(self, worker: int) -> None:
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

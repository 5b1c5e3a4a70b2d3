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

With a staleness policy (``spec.dc.staleness_policy``, :mod:`hvd_dc.staleness`) the
compensated gradient is damped by the push's staleness or gap between the compensation and
the optimizer step; the compensation may still be fused, the SGD step is then torch's.

``spec.dc.async_momentum`` (:mod:`hvd_dc.async_momentum`) decides what happens to SGD's
momentum: ``"shared"`` is the optimizer's own step; ``"reduced"`` lowers the momentum the
workers send for the implicit momentum of M workers; ``"dana"`` replaces the optimizer's
step by DANA's (one momentum per worker) and makes every reply, hence every ``w_bak(m)``,
the look-ahead ``w - lr*mu*sum_j v_j`` instead of ``w``. ``spec.dc.lr_scale`` multiplies
every learning rate the workers send (``1/size()``: a push is ``1/size()`` of a Horovod
step).

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
from typing import List, Optional, Sequence

import numpy as np
import torch

from . import kernels
from .async_momentum import DanaState, reduced_momentum, sgd_hyperparameters
from .chunks import chunk_spec
from .dc_math import DelayCompensator
from .staleness import StalenessPolicy
from .layout import ELEMENTWISE_OPTIMIZERS, ModelSpec, resolve_class, write_hyperparameters
from .stats import StalenessRecord, summarize_hist

__all__ = ["ServerState", "ShardState"]

class ServerState:
    """Master weights, optimizer and DC state for one served model.

    ``initial_weights``: uint8 tensor in the model layout (worker 0's values).
    ``backups``: one uint8 tensor per worker, in the model layout; each is ``w_bak(m)``.
    ``kernels``: the ``HVD_DC_KERNELS`` setting (``"fused"`` or ``"torch"``).
    """

    def __init__(
        self,
        spec: ModelSpec,
        initial_weights: torch.Tensor,
        backups: Sequence[torch.Tensor],
        flat_optimizer: Optional[bool] = None,
        device: Optional[torch.device | str] = None,
        kernels: str = "fused",
    ) -> None:
        self.spec = spec
        self.layout = spec.layout()
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
        #: what the server applies instead of the values the workers send (lr_scale, reduced momentum)
        self._hyper_map = _HyperparameterMap(spec.dc, self.num_workers, self._hyper_slots)
        self._hyper_map.apply_to_groups(self.optimizer.param_groups)
        self.compensator = DelayCompensator(
            spec.dc, self.num_workers, [s.numel for s in layout.segments], [s.dtype for s in layout.segments],
            device=dev,
        )
        #: damps g_dc by the push's staleness or gap (identity for "none")
        self.policy = StalenessPolicy(
            spec.dc.staleness_policy, self.num_workers, [s.numel for s in layout.segments],
            [s.dtype for s in layout.segments], device=dev,
        )
        self._decompressed: List[Optional[torch.Tensor]] = [
            torch.empty(s.numel, dtype=s.dtype, device=dev) if ws.dtype != s.dtype else None
            for s, ws in zip(layout.segments, layout.wire_segments)
        ]
        #: DANA's per-worker momentum (async_momentum="dana"), else None
        self.dana = (DanaState(self.num_workers, [s.numel for s in layout.segments], [s.dtype for s in layout.segments],
                               device=dev) if spec.dc.async_momentum == "dana" else None)
        #: how a push is applied, chosen once (see _choose_update)
        self.update = _choose_update(self, opt_class, kernels)
        self.updates = 0
        self.accepted = np.zeros(self.num_workers, dtype=np.int64)
        self.rejected = np.zeros(self.num_workers, dtype=np.int64)
        self.pulls = np.zeros(self.num_workers, dtype=np.int64)
        self.updates_at_pull = np.zeros(self.num_workers, dtype=np.int64)
        #: every accepted push's staleness, per worker (checkpointed)
        self.staleness = StalenessRecord(self.num_workers)

    @property
    def fused_sgd(self) -> bool:
        """The fused compensation + SGD step serves this model."""
        return isinstance(self.update, _FusedSGDUpdate)

    @property
    def fused_segments(self) -> List[bool]:
        """Per segment: compensated by the fused kernel."""
        return list(self.update.fused_segments)

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
        if not self.update.all_finite(wire_grad):
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
        replied = self.update.apply(worker, staleness, grads, self.backup_segments[worker] if pull else None)
        self.updates += 1
        self.accepted[worker] += 1
        self.staleness.add(worker, staleness)
        if pull:
            if replied:
                self._send_backup(worker)
                self._note_pull(worker)
            else:
                self.pull(worker)
        return True, staleness

    def pull(self, worker: int) -> None:
        """``w_bak(worker) <- w`` (with DANA: the look-ahead): the copy worker ``worker``
        receives and computes on."""
        self.update.write_pull(worker)
        self._send_backup(worker)
        self._note_pull(worker)

    def _send_backup(self, worker: int) -> None:
        if self.staged:
            self.replies[worker].copy_(self.backups[worker])

    def refresh_replies(self) -> None:
        """Make every reply area hold its worker's ``w_bak(m)`` (after start or a restore)."""
        for m in range(self.num_workers):
            self._send_backup(m)

    def set_weights(self, weights: torch.Tensor) -> None:
        """Replace the master weights with ``weights`` (uint8, model layout) and make every
        worker's ``w_bak(m)`` (and its reply area) hold them: each worker then computes on
        exactly these weights, so Algorithm 2 stays exact. The optimizer's state, the
        MeanSquare buffers and the counters are kept."""
        self.weights.copy_(weights[: self.layout.nbytes].to(self.device))
        for m in range(self.num_workers):
            self.update.write_pull(m)
        self.refresh_replies()

    def _note_pull(self, worker: int) -> None:
        self.updates_at_pull[worker] = self.updates
        self.pulls[worker] += 1

    def _set_hyperparameters(self, values: Sequence[float]) -> None:
        if self._hyper_slots:
            write_hyperparameters(self.optimizer.param_groups, self._hyper_slots,
                                  self._hyper_map([values[k] for k in self._hyper_keep]))

    # -- reporting ------------------------------------------------------------------------

    def summary(self) -> dict:
        staleness = summarize_hist(self.staleness.merged())
        return {
            "updates": int(self.updates),
            "rejected": int(self.rejected.sum()),
            "accepted_per_worker": self.accepted.tolist(),
            "rejected_per_worker": self.rejected.tolist(),
            "staleness_mean": staleness["mean"],
            "staleness_max": int(staleness["max"]),
            "finite": all(bool(torch.isfinite(w).all()) for w in self.weight_segments),
        }


# -- how one push is applied ------------------------------------------------------------------
#
# Three implementations give the same bits (tests/test_kernels.py); _choose_update picks one
# when the state is built, as torch.optim picks between its single-tensor, foreach and fused
# paths, so apply_push does not re-decide on every push:
#
# * _TorchUpdate: DelayCompensator per segment, then the optimizer's own step. The reference,
#   and the only path on a GPU server or without the C extension (HVD_DC_KERNELS=torch).
# * _FusedCompensationUpdate: the C kernel compensates float32/float64 segments in one pass
#   (others as above), then the optimizer's own step. Any optimizer.
# * _FusedSGDUpdate: torch.optim.SGD on flat float32/float64 segments: compensation, the SGD
#   step and the copy into the worker's reply area in one pass per segment, Gap-Aware
#   included. Not with the scalar staleness policies (they take the two paths above).


def _choose_update(state: ServerState, opt_class: type, choice: str) -> "_TorchUpdate":
    if state.dana is not None:
        if opt_class is not torch.optim.SGD or not state.flat_optimizer:
            raise ValueError(f"async_momentum='dana' runs torch.optim.SGD's hyperparameters; the workers wrap "
                             f"{'.'.join(state.spec.optimizer_class)}")
        fused = kernels.available(choice) and state.device.type == "cpu"
        return _DanaUpdate(state, _FusedCompensationUpdate(state) if fused else _TorchUpdate(state))
    if not kernels.available(choice) or state.device.type != "cpu":
        return _TorchUpdate(state)
    fused_dtypes = all(seg.dtype in kernels.FUSED_DTYPES for seg in state.layout.segments)
    differentiable = any(g.get("differentiable", False) for g in state.optimizer.param_groups)
    if (state.flat_optimizer and opt_class is torch.optim.SGD and fused_dtypes and not differentiable
            and state.policy.fusable):
        return _FusedSGDUpdate(state)
    return _FusedCompensationUpdate(state)


class _TorchUpdate:
    """``g_dc`` by :class:`DelayCompensator` into the master gradient, then the optimizer."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.compensator = state.compensator
        self.fused_segments = [False] * len(state.layout.segments)

    def all_finite(self, wire_grad: Sequence[torch.Tensor]) -> bool:
        if self.state.device.type != "cpu":
            # one reduction per segment on the device and a single transfer of the verdict
            return bool(torch.stack([torch.isfinite(g).all() for g in wire_grad]).all())
        return all(bool(torch.isfinite(g).all()) for g in wire_grad)

    def apply(self, worker: int, staleness: int, grads: Sequence[torch.Tensor],
              reply: Optional[Sequence[torch.Tensor]]) -> bool:
        """Update the master weights with worker ``worker``'s gradient, ``staleness`` updates
        old; return True if the new weights were also written into ``reply`` (never, here)."""
        s = self.state
        self._compensate(worker, grads)
        policy = s.policy
        if not policy.active:
            s.optimizer.step()
            return False
        policy.apply(staleness, s.grad_segments, s.weight_segments, s.backup_segments[worker])
        policy.before_step(s.weight_segments)
        s.optimizer.step()
        policy.after_step(s.weight_segments)
        return False

    def _compensate(self, worker: int, grads: Sequence[torch.Tensor],
                    weights: Optional[Sequence[torch.Tensor]] = None) -> None:
        """``g_dc`` into the master gradient, compensated from ``w_bak(worker)`` to
        ``weights`` (default: the master weights)."""
        s = self.state
        weights = s.weight_segments if weights is None else weights
        for i, (g, w, wb, out) in enumerate(zip(grads, weights, s.backup_segments[worker], s.grad_segments)):
            self.compensator.compensate(i, worker, g, w, wb, out)

    def write_pull(self, worker: int) -> None:
        """``w_bak(worker) <- w``."""
        self.state.backups[worker].copy_(self.state.weights)


class _FusedCompensationUpdate(_TorchUpdate):
    """The C kernel compensates float32/float64 segments; the optimizer's own step follows."""

    def __init__(self, state: ServerState) -> None:
        super().__init__(state)
        self.fused_segments = [seg.dtype in kernels.FUSED_DTYPES for seg in state.layout.segments]
        comp = self.compensator
        self._mean_square = (
            [comp.mean_square_of(m) for m in range(state.num_workers)] if comp.options.adaptive
            else [[None] * len(self.fused_segments)] * state.num_workers
        )

    def all_finite(self, wire_grad: Sequence[torch.Tensor]) -> bool:
        for g, fused in zip(wire_grad, self.fused_segments):
            ok = kernels.all_finite(g) if fused and g.dtype in kernels.FUSED_DTYPES else bool(torch.isfinite(g).all())
            if not ok:
                return False
        return True

    def _compensate(self, worker: int, grads: Sequence[torch.Tensor],
                    weights: Optional[Sequence[torch.Tensor]] = None) -> None:
        s, comp = self.state, self.compensator
        ms = self._mean_square[worker]
        weights = s.weight_segments if weights is None else weights
        for i, (g, w, wb, out) in enumerate(zip(grads, weights, s.backup_segments[worker], s.grad_segments)):
            if self.fused_segments[i] and w.dtype == g.dtype:
                kernels.compensate(comp.variant, g, w, wb, ms[i], out, comp.lambda0, comp.momentum, comp.eps)
            else:
                comp.compensate(i, worker, g, w, wb, out)


class _FusedSGDUpdate(_FusedCompensationUpdate):
    """Compensation, ``torch.optim.SGD``'s step and the reply copy in one kernel pass.

    The first step of a group with momentum is torch.optim.SGD's own (it creates the
    momentum buffers, which the kernel then updates in place).
    """

    def __init__(self, state: ServerState) -> None:
        super().__init__(state)
        self._params = [p for params in state.master_params for p in params]
        self._groups = [group for group in state.optimizer.param_groups for _ in group["params"]]

    def apply(self, worker: int, staleness: int, grads: Sequence[torch.Tensor],
              reply: Optional[Sequence[torch.Tensor]]) -> bool:
        # checked on every push: a scheduler may turn a group's momentum on at any time
        if not self._momentum_buffers_exist():
            return super().apply(worker, staleness, grads, reply)
        s, comp = self.state, self.compensator
        ms = self._mean_square[worker]
        opt_state = s.optimizer.state
        for i, (g, w, wb, p, group) in enumerate(
            zip(grads, s.weight_segments, s.backup_segments[worker], self._params, self._groups)
        ):
            buf = opt_state[p].get("momentum_buffer") if group["momentum"] else None
            kernels.sgd(comp.variant, g, w, wb, ms[i], buf, None if reply is None else reply[i], comp.lambda0,
                        comp.momentum, comp.eps, group, **s.policy.fused_arguments(i))
        s.policy.count_step()
        return reply is not None

    def _momentum_buffers_exist(self) -> bool:
        state = self.state.optimizer.state
        return all(
            not group["momentum"] or state.get(p, {}).get("momentum_buffer") is not None
            for p, group in zip(self._params, self._groups)
        )


class _DanaUpdate:
    """DANA (:mod:`hvd_dc.async_momentum`): the look-ahead ``a = w - lr*mu*S`` is where
    worker ``m``'s gradient is compensated to and its gap measured, DANA's step replaces the
    optimizer's, and the reply (``w_bak(m)``) is the new look-ahead. ``base`` (the torch or
    fused-compensation path) checks finiteness. With no staleness policy or Gap-Aware,
    float32/float64 segments take the fused kernel (:func:`hvd_dc.kernels.dana`: the whole
    push in one pass, the same bits); otherwise the torch path of
    :class:`~hvd_dc.async_momentum.DanaState`."""

    def __init__(self, state: ServerState, base: _TorchUpdate) -> None:
        self.state = state
        self.base = base
        self.dana = state.dana
        groups = state.optimizer.param_groups
        self._groups = [groups[state._group_index.index(seg.group)] for seg in state.layout.segments]
        self._ahead = [torch.empty(seg.numel, dtype=v.dtype, device=state.device)
                       for seg, v in zip(state.layout.segments, state.dana.total)]
        fused = isinstance(base, _FusedCompensationUpdate) and state.policy.fusable
        self.fused_segments = [fused and seg.dtype in kernels.FUSED_DTYPES for seg in state.layout.segments]
        comp = state.compensator
        self._mean_square = ([comp.mean_square_of(m) for m in range(state.num_workers)] if comp.options.adaptive
                             else [[None] * len(self.fused_segments)] * state.num_workers)

    def all_finite(self, wire_grad: Sequence[torch.Tensor]) -> bool:
        return self.base.all_finite(wire_grad)

    def apply(self, worker: int, staleness: int, grads: Sequence[torch.Tensor],
              reply: Optional[Sequence[torch.Tensor]]) -> bool:
        s, dana = self.state, self.dana
        hyper = [sgd_hyperparameters(g) for g in self._groups]
        if all(self.fused_segments):
            comp, first = s.compensator, not dana.started[worker]
            for i, (g, w, wb, h) in enumerate(zip(grads, s.weight_segments, s.backup_segments[worker], hyper)):
                kernels.dana(comp.variant, g, w, wb, self._mean_square[worker][i], dana.velocity[worker][i],
                             dana.total[i], None if reply is None else reply[i], comp.lambda0, comp.momentum,
                             comp.eps, h, first, **s.policy.fused_arguments(i))
            dana.finish_push(worker)
            s.policy.count_step()
            return reply is not None
        for i, (w, a, h) in enumerate(zip(s.weight_segments, self._ahead, hyper)):
            dana.lookahead(i, w, h["lr"], h["momentum"], a)
        self.base._compensate(worker, grads, self._ahead)
        policy = s.policy
        if policy.active:
            policy.apply(staleness, s.grad_segments, self._ahead, s.backup_segments[worker])
            policy.before_step(s.weight_segments)
        for i, (g, w, a, h) in enumerate(zip(s.grad_segments, s.weight_segments, self._ahead, hyper)):
            dana.step(i, worker, g, w, a, h)
        dana.finish_push(worker)
        if policy.active:
            policy.after_step(s.weight_segments)
        if reply is None:
            return False
        for i, (w, out, h) in enumerate(zip(s.weight_segments, reply, hyper)):
            dana.lookahead(i, w, h["lr"], h["momentum"], out)
        return True

    def write_pull(self, worker: int) -> None:
        """``w_bak(worker) <-`` the look-ahead, with the hyperparameters of the last push."""
        s = self.state
        for i, (w, out, g) in enumerate(zip(s.weight_segments, s.backup_segments[worker], self._groups)):
            h = sgd_hyperparameters(g)
            self.dana.lookahead(i, w, h["lr"], h["momentum"], out)


class _HyperparameterMap:
    """The hyperparameters the server applies, from those a worker sends: every ``lr``
    times ``dc.lr_scale``; with ``async_momentum="reduced"`` every ``momentum`` lowered by
    :func:`~hvd_dc.async_momentum.reduced_momentum`. Identity otherwise."""

    def __init__(self, dc, num_workers: int, slots: Sequence[tuple]) -> None:
        self.lr_scale = dc.lr_scale
        self.reduce = dc.async_momentum == "reduced"
        self.num_workers = num_workers
        self.active = self.lr_scale != 1.0 or self.reduce
        self._lr = [k for k, (_, key, _) in enumerate(slots) if key == "lr"]
        self._momentum = [k for k, (_, key, _) in enumerate(slots) if key == "momentum"] if self.reduce else []

    def __call__(self, values: List[float]) -> List[float]:
        if self.active:
            for k in self._lr:
                values[k] = values[k] * self.lr_scale
            for k in self._momentum:
                values[k] = reduced_momentum(values[k], self.num_workers)
        return values

    def apply_to_groups(self, groups: Sequence[dict]) -> None:
        """The same on the optimizer's groups as built from the spec (values no slot carries)."""
        if not self.active:
            return
        for g in groups:
            if "lr" in g and not isinstance(g["lr"], torch.Tensor):
                g["lr"] = g["lr"] * self.lr_scale
            if self.reduce and "momentum" in g:
                g["momentum"] = reduced_momentum(g["momentum"], self.num_workers)


class ShardState:
    """The chunks of one model that one server rank owns: one :class:`ServerState` per
    chunk (the chunk as a model of its own), so Algorithm 2 runs on each chunk alone and
    stays exact element by element.

    ``initial_weights``: the whole model (uint8, model layout); ``replies[m][j]``: worker
    ``m``'s reply area of the server's ``j``-th chunk. The counters this server reports
    (``updates``, ``accepted``, ``rejected``, ``staleness``) are those of its first chunk:
    every request reaches every chunk, so all its chunks count the same pushes.
    """

    def __init__(self, spec: ModelSpec, chunks: Sequence, initial_weights: torch.Tensor,
                 replies: Sequence[Sequence[torch.Tensor]], device: Optional[torch.device | str] = None,
                 kernels: str = "fused") -> None:
        self.spec = spec
        self.chunks = list(chunks)
        self.num_workers = spec.num_workers
        self.states: List[ServerState] = []
        for j, c in enumerate(self.chunks):
            sub = chunk_spec(spec, c)
            initial = torch.zeros(sub.layout().nbytes, dtype=torch.uint8)
            initial[: c.nbytes] = initial_weights[c.offset : c.offset + c.nbytes]
            self.states.append(ServerState(sub, initial, [replies[m][j] for m in range(self.num_workers)],
                                           device=device, kernels=kernels))
        self.device = self.states[0].device if self.states else torch.device("cpu")
        self.staged = device is not None
        #: the whole model's layout (the chunks are slices of it)
        self.layout = spec.layout()

    @property
    def chunk_layouts(self) -> List:
        return [st.layout for st in self.states]

    def set_weights(self, weights: torch.Tensor) -> None:
        """Make this server's chunks of ``weights`` (uint8, the whole model's layout) the
        master weights and every worker's ``w_bak(m)`` (:meth:`ServerState.set_weights`)."""
        for c, st in zip(self.chunks, self.states):
            piece = torch.zeros(st.layout.nbytes, dtype=torch.uint8)
            piece[: c.nbytes] = weights[c.offset : c.offset + c.nbytes]
            st.set_weights(piece)

    def pushes_settled(self) -> bool:
        """Every worker's pushes reached every chunk alike (no push half applied): the
        moment a checkpoint can be written."""
        if not self.states:
            return True
        first = self.states[0].accepted + self.states[0].rejected
        return all(np.array_equal(first, st.accepted + st.rejected) for st in self.states[1:])

    @property
    def updates(self) -> int:
        return self.states[0].updates if self.states else 0

    @property
    def accepted(self) -> np.ndarray:
        return self.states[0].accepted if self.states else np.zeros(self.num_workers, dtype=np.int64)

    @property
    def rejected(self) -> np.ndarray:
        return self.states[0].rejected if self.states else np.zeros(self.num_workers, dtype=np.int64)

    @property
    def staleness(self) -> StalenessRecord:
        return self.states[0].staleness if self.states else StalenessRecord(self.num_workers)

    @property
    def update_path(self) -> str:
        return type(self.states[0].update).__name__ if self.states else "none"

    def summary(self) -> dict:
        out = self.states[0].summary() if self.states else {"updates": 0, "rejected": 0, "staleness_mean": 0.0,
                                                             "staleness_max": 0, "finite": True}
        out["finite"] = all(st.summary()["finite"] for st in self.states)
        return out

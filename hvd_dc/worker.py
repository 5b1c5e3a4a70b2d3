"""The worker's optimizer: push gradients, pull weights, keep the user's optimizer.

:func:`DistributedDCOptimizer` registers the model with the parameter server (the
workers first agree that their models match) and returns the *same* optimizer object the
user passed, with its ``step``, ``zero_grad`` and ``synchronize`` bound to a
:class:`DCWorker` and with ``pull()`` and ``stats()`` added. So it is still an instance
of its class, keeps its param groups and state, and works with ``state_dict()``,
``load_state_dict()`` and lr schedulers; no class is created at run time.

Memory: each trained parameter's ``.data`` is re-pointed at a view of one flat byte
buffer, the worker's reply area, and each ``.grad`` at a view of the flat gradient
buffer, the push area (or a staging buffer when fp16 compression is on). Autograd
accumulates into those views in place, a push is one ``Put`` and a pull is one ``Get``
straight into the model's memory. ``zero_grad`` clears the flat gradient buffer in one
call instead of dropping the gradients.

CUDA parameters (and CPU ones under ``HVD_DC_STAGING=always``) are bound to flat device
buffers instead, which :class:`hvd_dc.staging.DeviceStaging` copies to and from the
channel's pinned host areas around each exchange, overlapping the gradient copy with the
backward pass.
"""

from __future__ import annotations

import contextlib
import functools
import time
import logging
import operator
import os
import types
import warnings
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from mpi4py import MPI

from .collectives import recv_with_timeout, wait_request
from .compression import Compression, compression_name
from .dc_math import validate_dc_options
from .devices import parse_server_device, staging_forced, worker_device
from .layout import (
    FlatLayout,
    ModelSpec,
    ParamInfo,
    diff_specs,
    dtype_name,
    read_hyperparameters,
    scalar_hyperparameters,
)
from .metrics import worker_stats_extra
from .protocol import KIND_PULL, KIND_PUSH, RM_REJECTED, RM_STALENESS, RM_STATUS, RM_UPDATES, STATUS_OK, WindowLayout, WorkerChannel
from .runtime import SERVER_RANK, TAG_CONTROL, TAG_REGISTERED, TAG_WEIGHTS, context
from .staging import DeviceStaging
from .waiting import Backoff, Deadline, HvdDcTimeout

__all__ = ["DistributedDCOptimizer", "DCWorker"]

log = logging.getLogger("hvd_dc.worker")

_UNSUPPORTED = ("LBFGS", "SparseAdam")


def DistributedDCOptimizer(
    optimizer: torch.optim.Optimizer,
    named_parameters: Optional[Iterable[Tuple[str, torch.nn.Parameter]]] = None,
    compression: Any = Compression.none,
    backward_passes_per_step: int = 1,
    dc_variant: str = "adaptive",
    dc_lambda: Optional[float] = None,
    dc_momentum: float = 0.95,
    dc_eps: float = 1e-7,
    dc_mean_square: str = "per_worker",
    nonfinite: str = "skip",
    checkpoint_path: Optional[str] = None,
    checkpoint_every_updates: Optional[int] = None,
    checkpoint_every_seconds: Optional[float] = None,
    server_device: Any = "auto",
) -> torch.optim.Optimizer:
    """Make ``optimizer`` train asynchronously through the DC-ASGD parameter server.

    Returns the same optimizer object. ``step()`` pushes this worker's gradients and pulls
    the server's newest weights (which include them) into the model in place; ``pull()``
    fetches the newest weights without pushing; ``stats()`` reports counters.

    ``dc_variant``: ``"adaptive"`` (DC-ASGD-a), ``"constant"`` (DC-ASGD-c) or ``"none"``
    (plain ASGD). ``dc_lambda=None`` takes the paper's lambda0 (2.0 adaptive, 0.04
    constant). ``dc_momentum`` and ``dc_eps`` are the adaptive variant's MeanSquare
    momentum and epsilon. ``dc_mean_square``: ``"per_worker"`` (default) or ``"global"``.
    The wrapped optimizer's class and hyperparameters run on the server, fed with the
    compensated gradient; the learning rate (and every float hyperparameter) a worker's
    optimizer holds when it pushes is the one applied to that gradient.

    ``nonfinite``: what a gradient with NaN/Inf does. The server always rejects it whole
    and counts it (the model is not touched); ``"skip"`` (default) warns, rate-limited,
    and goes on; ``"raise"`` raises ``FloatingPointError`` from ``step()``.

    ``checkpoint_path``: the server writes its full state there (atomically) every
    ``checkpoint_every_updates`` updates and/or ``checkpoint_every_seconds`` seconds, and
    at shutdown. If the file exists when the job starts, the server resumes from it and
    every worker starts from the weights it held then; ``stats()["pushes"]`` is then this
    worker's push count at the checkpoint, so a loop can skip what was already done.

    ``server_device``: where the server keeps the master weights and runs the update:
    ``"auto"`` (default: the server rank's CUDA device if it has one, else the CPU),
    ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (a device the server rank must have). The
    parameters may live on the CPU or on one CUDA device per worker; CUDA gradients and
    weights are staged through pinned host memory (:mod:`hvd_dc.staging`).

    In a world of one process the optimizer trains alone, as with Horovod.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"DistributedDCOptimizer wraps a torch.optim.Optimizer; got {type(optimizer).__name__}")
    if getattr(optimizer, "_hvd_dc_worker", None) is not None:
        raise ValueError("this optimizer is already wrapped by hvd_dc.DistributedDCOptimizer")
    if type(optimizer).__name__ in _UNSUPPORTED:
        raise ValueError(f"{type(optimizer).__name__} is not supported by hvd_dc: its step does not take one gradient")
    if not isinstance(backward_passes_per_step, int) or backward_passes_per_step < 1:
        raise ValueError(f"backward_passes_per_step must be an int >= 1; got {backward_passes_per_step!r}")
    lam = validate_dc_options(dc_variant, dc_lambda, dc_momentum, dc_eps, dc_mean_square)
    comp = compression_name(compression)
    if nonfinite not in ("skip", "raise"):
        raise ValueError(f"nonfinite must be 'skip' or 'raise'; got {nonfinite!r}")
    _validate_checkpointing(checkpoint_path, checkpoint_every_updates, checkpoint_every_seconds)
    server_device = parse_server_device(server_device)
    ctx = context()
    params, names = _trained_parameters(optimizer, named_parameters)
    device = worker_device((n, p) for (p, _), n in zip(params, names))
    if ctx.role == "solo":
        _attach_solo(optimizer)
        return optimizer
    spec = ModelSpec(
        params=[ParamInfo(n, tuple(p.shape), dtype_name(p.dtype), g) for (p, g), n in zip(params, names)],
        optimizer_class=(type(optimizer).__module__, type(optimizer).__qualname__),
        defaults=dict(optimizer.defaults),
        groups=[{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups],
        hyper_slots=scalar_hyperparameters(optimizer.param_groups),
        dc_variant=dc_variant,
        dc_lambda=lam,
        dc_momentum=float(dc_momentum),
        dc_eps=float(dc_eps),
        dc_mean_square=dc_mean_square,
        compression=comp,
        num_workers=ctx.num_workers,
        checkpoint_path=None if checkpoint_path is None else os.path.abspath(checkpoint_path),
        checkpoint_every_updates=checkpoint_every_updates,
        checkpoint_every_seconds=None if checkpoint_every_seconds is None else float(checkpoint_every_seconds),
        server_device=server_device,
    )
    worker = DCWorker(optimizer, [p for p, _ in params], spec, backward_passes_per_step, nonfinite, device)
    ctx.engines.append(worker)
    return optimizer


def _validate_checkpointing(path, every_updates, every_seconds) -> None:
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"checkpoint_path must be a file path; got {path!r}")
    if every_updates is not None and (isinstance(every_updates, bool) or not isinstance(every_updates, int) or every_updates < 1):
        raise ValueError(f"checkpoint_every_updates must be an int >= 1; got {every_updates!r}")
    if every_seconds is not None and (not isinstance(every_seconds, (int, float)) or not every_seconds > 0):
        raise ValueError(f"checkpoint_every_seconds must be a number > 0; got {every_seconds!r}")
    if path is None and (every_updates is not None or every_seconds is not None):
        raise ValueError("checkpoint_every_updates/checkpoint_every_seconds need a checkpoint_path")


def _step(optimizer, closure=None):
    """Push this worker's gradient, then pull weights that include it (DC-ASGD)."""
    return optimizer._hvd_dc_worker.step(closure)


def _step_tracked(optimizer, closure=None):
    optimizer._opt_called = True  # what an lr scheduler's own step wrapper records
    return optimizer._hvd_dc_worker.step(closure)


_step_tracked._wrapped_by_lr_sched = True  # type: ignore[attr-defined]


def _zero_grad(optimizer, set_to_none: bool = True):
    """Clear the gradients (they stay bound to hvd_dc's flat buffer)."""
    return optimizer._hvd_dc_worker.zero_grad(set_to_none)


def _pull(optimizer):
    """Fetch the server's newest weights into the model without pushing."""
    return optimizer._hvd_dc_worker.pull()


def _stats(optimizer):
    """This worker's counters: pushes, pulls, rejected pushes, staleness, server updates."""
    return optimizer._hvd_dc_worker.stats()


def _synchronize(optimizer):
    """Horovod's call before editing gradients by hand: the next ``step()`` pushes the
    gradients as they are then, whatever the edit (see :mod:`hvd_dc.staging`)."""
    optimizer._hvd_dc_worker.synchronize()


def _skip_synchronize(optimizer):
    """Horovod compatibility: a no-op context manager."""
    return contextlib.nullcontext()


def _trained_parameters(optimizer, named_parameters):
    """The optimizer's parameters that require grad, with their group and name."""
    params: List[Tuple[torch.nn.Parameter, int]] = []
    seen = set()
    for gi, group in enumerate(optimizer.param_groups):
        for p in group["params"]:
            if id(p) in seen:
                raise ValueError("a parameter appears twice in the optimizer's param groups")
            seen.add(id(p))
            if p.requires_grad:
                params.append((p, gi))
    if not params:
        raise ValueError("the optimizer has no parameter that requires grad; there is nothing to train")
    for p, _ in params:
        dtype_name(p.dtype)  # raises for non-floating dtypes
        if p.is_sparse:
            raise ValueError("sparse parameters are not supported")
    if named_parameters is None:
        names = [f"param.{gi}.{i}" for i, (_, gi) in enumerate(params)]
        return params, names
    named = list(named_parameters)
    by_id: Dict[int, str] = {}
    for item in named:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise ValueError("named_parameters must be (name, parameter) pairs, as model.named_parameters() gives")
        name, p = item
        if id(p) in by_id and by_id[id(p)] != name:
            continue  # a shared parameter under two names: keep the first name
        by_id[id(p)] = name
    if len(set(by_id.values())) != len(by_id):
        dupes = sorted({n for n in by_id.values() if list(by_id.values()).count(n) > 1})
        raise ValueError(f"named_parameters has duplicate names: {', '.join(dupes[:5])}")
    missing = [i for i, (p, _) in enumerate(params) if id(p) not in by_id]
    if missing:
        raise ValueError(
            f"named_parameters was given but {len(missing)} of the optimizer's parameters are not in it "
            f"(first: shape {list(params[missing[0]][0].shape)}); pass model.named_parameters() of the model "
            "the optimizer trains"
        )
    return params, [by_id[id(p)] for p, _ in params]


def _attach_solo(optimizer: torch.optim.Optimizer) -> None:
    """World of one: train with the wrapped optimizer; keep the extra methods callable."""
    optimizer._hvd_dc_worker = "solo"  # type: ignore[attr-defined]
    optimizer.pull = lambda: None  # type: ignore[attr-defined]
    optimizer.stats = lambda: {"mode": "solo"}  # type: ignore[attr-defined]
    optimizer.synchronize = lambda: None  # type: ignore[attr-defined]
    optimizer.skip_synchronize = contextlib.nullcontext  # type: ignore[attr-defined]


class DCWorker:
    """A worker's half of one served model: buffers, channel, counters, and the
    methods bound onto the user's optimizer."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        params: List[torch.nn.Parameter],
        spec: ModelSpec,
        backward_passes_per_step: int,
        nonfinite: str = "skip",
        device: torch.device = torch.device("cpu"),
    ) -> None:
        ctx = context()
        self.ctx = ctx
        self.optimizer = optimizer
        self.params = params
        self.spec = spec
        self.backward_passes_per_step = backward_passes_per_step
        self.nonfinite = nonfinite
        self.layout = FlatLayout(spec.params, wire_fp16=(spec.compression == "fp16"))
        self.wl = WindowLayout(self.layout, len(spec.hyper_slots), ctx.num_workers)
        self._agree_on_model()
        world = ctx.world
        me = ctx.workers.Get_rank()
        if me == 0:
            world.send(("register", spec), dest=SERVER_RANK, tag=TAG_CONTROL)
        self.device = device
        staged = device.type != "cpu" or staging_forced()
        self.channel = WorkerChannel(world, self.wl, me, SERVER_RANK, ctx.timeout,
                                     pin_memory=device.type == "cuda")  # collective
        layout = self.layout
        if me == 0:
            initial = torch.zeros(layout.nbytes, dtype=torch.uint8)
            with torch.no_grad():
                for view, p in zip(layout.param_views(initial), params):
                    view.copy_(p.detach())
            req = world.Isend([initial.numpy(), layout.nbytes, MPI.BYTE], dest=SERVER_RANK, tag=TAG_WEIGHTS)
            wait_request(req, ctx.start_timeout, self._server_silent("receive the initial weights"))
        verdict = recv_with_timeout(world, SERVER_RANK, TAG_REGISTERED, ctx.start_timeout, self._server_silent("register the model"))
        if not verdict["ok"]:
            self.channel.free()
            ctx.registration_failed = True
            raise RuntimeError(f"hvd_dc: {verdict['error']}")
        self.channel.open()
        self.channel.fetch_reply()  # w_0, identical on every worker and equal to w_bak(m)
        self.staging: Optional[DeviceStaging] = None
        if staged:
            self.staging = DeviceStaging(layout, device, self.channel.grad_area, self.channel.weights_area,
                                         wire_fp16=spec.compression == "fp16")
            self.staging.weights_to_device()
        self._bind_weights()
        self._bind_grads()
        self._grad_getter = operator.attrgetter("grad")
        self._hook_handles = [params[0].register_post_accumulate_grad_hook(self._count_backward)]
        self._grad_passes = [0] * len(params)
        if self.staging is not None:
            for i, p in enumerate(params):
                self._hook_handles.append(p.register_post_accumulate_grad_hook(functools.partial(self._grad_ready, i)))
        self._backward_passes = 0
        self.resumed_from = verdict["resumed_from"]
        self.server_device = verdict["server_device"]
        self.pushes = int(verdict["pushes"][me])  # > 0 only when resuming from a checkpoint
        self.pulls = 1
        self.rejected = 0
        self.server_updates = int(verdict["updates"])
        self.staleness_sum = 0
        self.staleness_max = 0
        self.staleness_hist: Dict[int, int] = {}  # this worker's staleness, as the server measured it
        self._started = time.monotonic()
        self._closed = False
        self._install()

    # -- set-up ---------------------------------------------------------------------------

    def _server_silent(self, what: str):
        def describe() -> str:
            return (
                f"worker {self.ctx.workers.Get_rank()}: the parameter server (world rank {SERVER_RANK}) did not "
                f"{what} within {self.ctx.start_timeout:g} s (set HVD_DC_START_TIMEOUT to wait longer)"
            )

        return describe

    def _agree_on_model(self) -> None:
        """Every worker checks in with worker 0, which compares the models; a mismatch
        becomes the same ValueError on every worker and an abort on the server."""
        ctx = self.ctx
        workers = ctx.workers
        me = workers.Get_rank()
        n = workers.Get_size()
        if me == 0:
            specs = {0: self.spec}
            pending = {r: workers.irecv(source=r, tag=TAG_CONTROL) for r in range(1, n)}
            deadline, backoff = Deadline(ctx.start_timeout), Backoff()
            while pending:
                for r in list(pending):
                    done, msg = pending[r].test()
                    if done:
                        specs[r] = msg
                        del pending[r]
                if pending:
                    if deadline.expired():
                        missing = ", ".join(f"worker {r} (world rank {r + 1})" for r in sorted(pending))
                        message = (
                            f"{missing} did not reach DistributedDCOptimizer within {ctx.start_timeout:g} s "
                            "(set HVD_DC_START_TIMEOUT to wait longer)"
                        )
                        for r in specs:
                            if r != 0:
                                workers.send(("timeout", message), dest=r, tag=TAG_CONTROL)
                        ctx.world.send(("abort", message), dest=SERVER_RANK, tag=TAG_CONTROL)
                        ctx.registration_failed = True
                        raise HvdDcTimeout(f"hvd_dc worker 0: {message}")
                    backoff.wait()
            verdict = None
            for r in range(1, n):
                verdict = diff_specs(self.spec, specs[r], r)
                if verdict:
                    break
            for r in range(1, n):
                workers.send(verdict, dest=r, tag=TAG_CONTROL)
            if verdict:
                ctx.world.send(("abort", f"the workers' models differ: {verdict}"), dest=SERVER_RANK, tag=TAG_CONTROL)
        else:
            workers.send(self.spec, dest=0, tag=TAG_CONTROL)
            # worker 0 decides at start_timeout; wait longer so that its diagnosis arrives
            verdict = recv_with_timeout(
                workers,
                0,
                TAG_CONTROL,
                2 * ctx.start_timeout,
                lambda: f"worker {me}: worker 0 (world rank 1) did not confirm the model within {2 * ctx.start_timeout:g} s",
            )
            if isinstance(verdict, tuple):
                ctx.registration_failed = True
                raise HvdDcTimeout(f"hvd_dc worker {me}: {verdict[1]}")
        if verdict:
            ctx.registration_failed = True
            raise ValueError(f"hvd_dc: the workers' models differ: {verdict}")

    def _bind_weights(self) -> None:
        """Point every parameter's data at its view of the reply area (now holding w_0),
        or of the device weights when staging."""
        if self.staging is not None:
            self._weight_views = self.staging.weight_views
        else:
            self._weight_views = self.layout.param_views(self.channel.weights_area)
        with torch.no_grad():
            for p, view in zip(self.params, self._weight_views):
                p.data = view

    def _bind_grads(self) -> None:
        if self.staging is not None:
            # the staging owns the device gradient buffer and rounds to the wire dtype itself
            self._grad_buffer = self.staging.grads
            self._grad_views = self.staging.grad_views
            self._wire_segments = None
        else:
            fp16 = self.spec.compression == "fp16"
            self._grad_buffer = torch.zeros(self.layout.nbytes, dtype=torch.uint8) if fp16 else self.channel.grad_area
            self._grad_views = self.layout.param_views(self._grad_buffer)
            self._grad_segments = self.layout.segment_views(self._grad_buffer)
            self._wire_segments = self.layout.segment_views(self.channel.grad_area, wire=True) if fp16 else None
        self._grad_buffer.zero_()
        with torch.no_grad():
            for p, view in zip(self.params, self._grad_views):
                if p.grad is not None:
                    view.copy_(p.grad.to_dense() if p.grad.is_sparse else p.grad)
                p.grad = view

    def _install(self) -> None:
        """Bind the DC methods onto the optimizer object itself.

        The bound methods' ``__self__`` is the optimizer (not this object), because lr
        schedulers re-bind ``optimizer.step.__func__`` to the optimizer when they wrap it.
        If a scheduler wrapped ``step`` before us, keep its call tracking.
        """
        opt = self.optimizer
        opt._hvd_dc_worker = self  # type: ignore[attr-defined]
        step = _step_tracked if hasattr(opt.step, "_wrapped_by_lr_sched") else _step
        opt.step = types.MethodType(step, opt)  # type: ignore[method-assign]
        opt.zero_grad = types.MethodType(_zero_grad, opt)  # type: ignore[method-assign]
        opt.pull = types.MethodType(_pull, opt)  # type: ignore[attr-defined]
        opt.stats = types.MethodType(_stats, opt)  # type: ignore[attr-defined]
        opt.synchronize = types.MethodType(_synchronize, opt)  # type: ignore[attr-defined]
        opt.skip_synchronize = types.MethodType(_skip_synchronize, opt)  # type: ignore[attr-defined]

    def _count_backward(self, _param: torch.Tensor) -> None:
        self._backward_passes += 1

    def _grad_ready(self, index: int, param: torch.Tensor) -> None:
        """A staged parameter's gradient is final for this step: start its copy to host."""
        passes = self._grad_passes[index] + 1
        self._grad_passes[index] = passes
        if passes == self.backward_passes_per_step and param.grad is self._grad_views[index]:
            self.staging.stage_parameter(index)  # type: ignore[union-attr]

    def _reset_passes(self) -> None:
        self._backward_passes = 0
        if self.staging is not None:
            self._grad_passes = [0] * len(self._grad_passes)
            self.staging.reset_gradient_staging()

    # -- the optimizer's methods ----------------------------------------------------------

    def step(self, closure=None):
        """Push this worker's gradient and pull the weights that include it."""
        self._check_open()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._backward_passes > self.backward_passes_per_step:
            raise RuntimeError(
                f"gradients were accumulated over {self._backward_passes} backward passes but "
                f"backward_passes_per_step={self.backward_passes_per_step}; call step() every "
                f"{self.backward_passes_per_step} backward passes or raise backward_passes_per_step"
            )
        self._gather_grads()
        if self.staging is not None:
            self.staging.gradients_to_host()
        elif self._wire_segments is not None:
            for wire, seg in zip(self._wire_segments, self._grad_segments):
                wire.copy_(seg)
        read_hyperparameters(self.optimizer.param_groups, self.spec.hyper_slots, self.channel.hyper)
        meta = self._exchange(KIND_PUSH)
        self._after_reply(meta, pushed=True)
        self._reset_passes()
        return loss

    def pull(self) -> None:
        """Fetch the server's newest weights into the model without pushing."""
        self._check_open()
        meta = self._exchange(KIND_PULL)
        self._after_reply(meta, pushed=False)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients (one fill of the flat buffer).

        The gradients stay bound to the flat buffer whatever ``set_to_none`` says, so that
        the next backward pass accumulates into it in place; a parameter that gets no
        gradient pushes zeros.
        """
        self._grad_buffer.zero_()
        grads = list(map(self._grad_getter, self.params))
        if not all(map(operator.is_, grads, self._grad_views)):
            for p, view in zip(self.params, self._grad_views):
                p.grad = view
        self._reset_passes()

    def synchronize(self) -> None:
        """Gradients may now be edited by any means: the next push copies them whole."""
        if self.staging is not None:
            self.staging.forbid_eager_copy()

    def stats(self) -> Dict[str, Any]:
        """Counters of this worker and the server's total at the last reply, with this
        worker's staleness p50/p99 and the server's updates/s (see :mod:`hvd_dc.metrics`)."""
        return {
            "worker": self.ctx.workers.Get_rank(),
            "pushes": self.pushes,
            "pulls": self.pulls,
            "rejected_pushes": self.rejected,
            "server_updates": self.server_updates,
            "staleness_mean": self.staleness_sum / max(self.pushes - self.rejected, 1),
            "staleness_max": self.staleness_max,
            "resumed_from": self.resumed_from,
            "device": str(self.device),
            "server_device": self.server_device,
            **self._staging_stats(),
            **worker_stats_extra(self.staleness_hist, self.server_updates, time.monotonic() - self._started),
        }

    def _staging_stats(self) -> Dict[str, Any]:
        if self.staging is None:
            return {"staged": False}
        return {"staged": True, "pushes_copied_during_backward": self.staging.eager_pushes,
                "pushes_copied_at_step": self.staging.full_pushes}

    # -- internals ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed or self.ctx.shut_down:
            raise RuntimeError("hvd_dc has been shut down; this optimizer can no longer step or pull")

    def _exchange(self, kind: int) -> np.ndarray:
        if self.staging is not None:
            self.staging.before_host_weights_written()
        try:
            meta = self.channel.exchange(kind)
        except HvdDcTimeout:
            self.ctx.server_lost = True  # shutdown must not wait on the server collectively
            raise
        if self.staging is not None:
            self.staging.weights_to_device()
        return meta

    def _gather_grads(self) -> None:
        """Make the flat gradient buffer hold every parameter's gradient.

        The fast path is one identity check per parameter done in C (map/operator.is_):
        autograd accumulated into the bound views. Only when something re-pointed a
        ``.grad`` (``model.zero_grad()`` sets them to None, user code may assign) are
        the loose gradients copied in and the views re-bound.
        """
        grads = list(map(self._grad_getter, self.params))
        if all(map(operator.is_, grads, self._grad_views)):
            return
        with torch.no_grad():
            for p, g, view in zip(self.params, grads, self._grad_views):
                if g is view:
                    continue
                if g is None:
                    view.zero_()
                else:
                    view.copy_(g.to_dense() if g.is_sparse else g)
                p.grad = view

    def _after_reply(self, meta: np.ndarray, pushed: bool) -> None:
        torch.autograd.graph.increment_version(self._weight_views)
        self.pulls += 1
        self.server_updates = int(meta[RM_UPDATES])
        if not pushed:
            return
        self.pushes += 1
        if int(meta[RM_STATUS]) != STATUS_OK:
            self.rejected += 1
            if self.nonfinite == "raise":
                raise FloatingPointError(
                    f"hvd_dc worker {self.ctx.workers.Get_rank()}: the gradient has NaN/Inf elements; the server "
                    "rejected it and the model was not changed (nonfinite='raise')"
                )
            if self.rejected in (1, 10, 100) or self.rejected % 1000 == 0:
                warnings.warn(
                    f"hvd_dc worker {self.ctx.workers.Get_rank()}: the server rejected a gradient with NaN/Inf "
                    f"({self.rejected} rejected so far); the model was not changed by it",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return
        staleness = int(meta[RM_STALENESS])
        self.staleness_sum += staleness
        self.staleness_max = max(self.staleness_max, staleness)
        self.staleness_hist[staleness] = self.staleness_hist.get(staleness, 0) + 1

    def _close(self) -> None:
        """Release the windows (collective with the server, in registration order)."""
        if self._closed:
            return
        self._closed = True
        for handle in self._hook_handles:
            handle.remove()
        if self.staging is not None:
            self.staging.synchronize()
        # the model keeps its weights: they live in the channel's local buffers, not in the window
        self.channel.free()


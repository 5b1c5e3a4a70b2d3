"""The worker's optimizer: push gradients, pull weights, keep the user's optimizer.

:func:`DistributedDCOptimizer` checks the options, describes the model
(:meth:`~hvd_dc.layout.ModelSpec.from_optimizer`), registers it with the parameter server
(:func:`hvd_dc.handshake.join`) and returns the *same* optimizer object the user passed,
with its ``step``, ``zero_grad`` and ``synchronize`` bound to a :class:`DCWorker` and
with ``pull()`` and ``stats()`` added. So it is still an instance of its class, keeps its
param groups and state, and works with ``state_dict()``, ``load_state_dict()`` and lr
schedulers; no class is created at run time.

:class:`DCWorker` is the step path: the gradients leave through the channel's push area,
the server's reply (new weights that include them) arrives in the reply area, which the
parameters are views of (:mod:`hvd_dc.worker_buffers`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import threading
import time
import types
import warnings
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch

from . import context, optimizer_options
from .collectives import Average, global_process_set
from .compression import Compression, compression_name
from .dc_math import DCOptions
from .devices import is_staged, parse_server_device, worker_device
from .handshake import join
from .layout import ModelSpec, dtype_name, read_hyperparameters
from .protocol import ReplyStatus, RequestKind
from .settings import OVERLAP_CHOICES
from .staging import DeviceStaging
from .stats import worker_stats_extra
from .divergence import DivergenceWatch, likely_cause
from .waiting import HvdDcTimeout
from .worker_buffers import WorkerBuffers

__all__ = ["DistributedDCOptimizer", "DistributedOptimizer", "DCWorker"]

_UNSUPPORTED = ("LBFGS", "SparseAdam")


def DistributedDCOptimizer(
    optimizer: torch.optim.Optimizer,
    named_parameters: Optional[Iterable[Tuple[str, torch.nn.Parameter]]] = None,
    compression: Any = Compression.none,
    backward_passes_per_step: int = 1,
    op: Any = Average,
    gradient_predivide_factor: float = 1.0,
    num_groups: int = 0,
    groups: Any = None,
    sparse_as_dense: bool = False,
    process_set: Any = global_process_set,
    *,
    dc_variant: str = "auto",
    dc_lambda: Optional[float] = None,
    dc_momentum: float = 0.95,
    dc_eps: float = 1e-7,
    dc_mean_square: str = "per_worker",
    staleness_policy: str = "auto",
    async_momentum: str = "auto",
    lr_scaling: str = "auto",
    nonfinite: str = "skip",
    checkpoint_path: Optional[str] = None,
    checkpoint_every_updates: Optional[int] = None,
    checkpoint_every_seconds: Optional[float] = None,
    server_device: Any = "auto",
    overlap: Optional[str] = None,
    chunk_bytes: Optional[int] = None,
) -> torch.optim.Optimizer:
    """Make ``optimizer`` train asynchronously through the DC-ASGD parameter server.

    ``hvd.DistributedOptimizer`` is this function: Horovod's arguments come first, in
    Horovod's order (``named_parameters``, ``compression``, ``backward_passes_per_step``,
    ``op``, ``gradient_predivide_factor``, ``num_groups``, ``groups``, ``sparse_as_dense``,
    ``process_set``), then the DC options, keywords only. What ``op`` (``Average``: push
    the gradient as it is; ``Sum``: ``size()`` times it; ``Adasum``: refused) and the
    others mean for asynchronous pushes: :mod:`hvd_dc.optimizer_options`.

    Returns the same optimizer object. ``step()`` pushes this worker's gradients and pulls
    the server's newest weights (which include them) into the model in place; ``pull()``
    fetches the newest weights without pushing; ``stats()`` reports counters.

    ``dc_variant``, ``staleness_policy`` and ``async_momentum`` default to ``"auto"``: the
    combination that measured best for the wrapped optimizer
    (:data:`hvd_dc.optimizer_options.MEASURED_DEFAULTS`; benchmarks/CONVERGENCE_HOROVOD.md):
    for ``SGD`` with momentum DANA + DC-ASGD-a + Gap-Aware, for plain ``SGD`` Gap-Aware,
    for other optimizers DC-ASGD-a.

    ``dc_variant``: ``"adaptive"`` (DC-ASGD-a), ``"constant"`` (DC-ASGD-c) or ``"none"``
    (plain ASGD). ``dc_lambda=None`` takes the paper's lambda0 (2.0 adaptive, 0.04
    constant). ``dc_momentum`` and ``dc_eps`` are the adaptive variant's MeanSquare
    momentum and epsilon. ``dc_mean_square``: ``"per_worker"`` (default) or ``"global"``.
    The wrapped optimizer's class and hyperparameters run on the server, fed with the
    compensated gradient; the learning rate (and every float hyperparameter) a worker's
    optimizer holds when it pushes is the one applied to that gradient.

    ``staleness_policy``: how the server also damps a stale gradient, after compensating
    it and before the optimizer step (:mod:`hvd_dc.staleness`, rules and sources there):
    ``"none"``, ``"staleness_lr"`` (the push's lr divided by its staleness,
    Zhang et al. 2016), ``"delay_adaptive"`` (divided by the staleness only above M,
    Koloskova et al. 2022) or ``"gap_aware"`` (each element divided by how far its weight
    moved since the pull, in units of the average update, Barkai et al. 2020). Meant for
    SGD; combines with any ``dc_variant`` (``dc_variant="none"`` for the policy alone).

    ``async_momentum``: what the server does with ``torch.optim.SGD``'s momentum under
    asynchrony (:mod:`hvd_dc.async_momentum`): ``"dana"`` (one momentum per worker, each
    worker sent the look-ahead ``w - lr*mu*sum_j v_j``; Hakimi et al. 2019), ``"shared"``
    (the optimizer's own step, one buffer), ``"reduced"`` (the momentum lowered for the
    implicit momentum of M workers).

    ``lr_scaling``: how much of a Horovod step one push is (:mod:`hvd_dc.optimizer_options`):
    ``"per_step"`` (a push is ``1/size()`` of an ``op=Average`` step: the server applies
    ``lr / size()``, so a script's ``lr * hvd.size()`` steps ``lr`` per push),
    ``"per_push"`` (every push steps the script's lr), ``"auto"`` (default: ``"per_step"``).

    ``nonfinite``: what a gradient with NaN/Inf does. The server rejects every chunk that
    holds one and counts it (the model is never touched by a non-finite value; the other
    chunks of that push are applied); ``"skip"`` (default) warns, rate-limited, and goes
    on; ``"raise"`` raises ``FloatingPointError`` from ``step()``.

    ``overlap``: when gradients leave. ``"on"``: each chunk of the model is pushed as soon
    as backward has finished every gradient in it, and its reply is read while backward
    goes on, so ``step()`` waits only for what is left; gradients must then not be edited
    after backward (an edit raises an error naming the fix). ``"off"``: everything is
    pushed in ``step()``, after any edit (clipping after ``synchronize()``). ``"auto"``
    (default, or ``$HVD_DC_OVERLAP``): the first step is pushed in ``step()``; if it
    edited no gradient after backward and did not call ``synchronize()``, later steps
    overlap. ``chunk_bytes``: the chunk size (default ``$HVD_DC_CHUNK_BYTES``, 4096000;
    every rank must agree).

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
    # the parameters and their names are checked before anything needs init(), as Horovod's
    # constructor does (a duplicate name is a ValueError even in a process that never initialised)
    params, names = _trained_parameters(optimizer, named_parameters)
    dc_variant, staleness_policy = optimizer_options.resolve_defaults(optimizer, dc_variant, staleness_policy)
    dc = DCOptions.create(dc_variant, dc_lambda, dc_momentum, dc_eps, dc_mean_square, staleness_policy,
                          optimizer_options.resolve_async_momentum(async_momentum, optimizer))
    hvd_options = optimizer_options.check(op, gradient_predivide_factor, num_groups, groups, sparse_as_dense,
                                          process_set, context.current().num_workers, lr_scaling)
    dc = dataclasses.replace(dc, lr_scale=optimizer_options.lr_scale(hvd_options, context.current().num_workers))
    comp = compression_name(compression)
    if nonfinite not in ("skip", "raise"):
        raise ValueError(f"nonfinite must be 'skip' or 'raise'; got {nonfinite!r}")
    _validate_checkpointing(checkpoint_path, checkpoint_every_updates, checkpoint_every_seconds)
    server_device = parse_server_device(server_device)
    ctx = context.current()
    overlap = ctx.settings.overlap if overlap is None else overlap
    if overlap not in OVERLAP_CHOICES:
        raise ValueError(f"overlap must be one of {', '.join(map(repr, OVERLAP_CHOICES))}; got {overlap!r}")
    chunk_bytes = ctx.settings.chunk_bytes if chunk_bytes is None else chunk_bytes
    if isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, int) or chunk_bytes < 0:
        raise ValueError(f"chunk_bytes must be an int >= 0 (0: one chunk per group and dtype); got {chunk_bytes!r}")
    device = worker_device((n, p) for (p, _), n in zip(params, names))
    # Horovod's optimizer keeps {parameter: name}; scripts and Horovod's tests read it
    optimizer._parameter_names = {p: n for (p, _), n in zip(params, names)}  # type: ignore[attr-defined]
    if ctx.role == "solo":
        _attach_solo(optimizer)
        return optimizer
    spec = ModelSpec.from_optimizer(
        optimizer, ctx.num_workers, params=params, names=names, dc=dc, compression=comp,
        checkpoint_path=None if checkpoint_path is None else os.path.abspath(checkpoint_path),
        checkpoint_every_updates=checkpoint_every_updates,
        checkpoint_every_seconds=None if checkpoint_every_seconds is None else float(checkpoint_every_seconds),
        server_device=server_device, staging=ctx.settings.staging, chunk_bytes=chunk_bytes,
        worker_options=optimizer_options.agreed(hvd_options),
    )
    momentum = max((float(g.get("momentum", 0.0)) for g in optimizer.param_groups), default=0.0)
    cause = likely_cause(ctx.num_workers, dc.lr_scale, hvd_options.lr_scaling, hvd_options.op == Average,
                         dc.async_momentum, momentum)
    worker = DCWorker(ctx, optimizer, [p for p, _ in params], spec, backward_passes_per_step, nonfinite, device,
                      overlap, cause)
    ctx.served.append(worker)
    _install(optimizer, worker)
    optimizer_options.apply(optimizer, [p for p, _ in params], hvd_options, ctx.num_workers)
    return optimizer


#: Horovod's name: the same function (``hvd.DistributedOptimizer is hvd.DistributedDCOptimizer``)
DistributedOptimizer = DistributedDCOptimizer


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
        # the same names on every worker, so that their models compare equal
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


class _Courier:
    """One thread that sends a request's chunks and reads their replies while backward goes
    on, so that the copies into and out of the windows run beside the computation instead
    of between its layers.

    The main thread makes each chunk's bytes final, then queues it (:meth:`send`); in
    ``step()`` it waits for the whole request (:meth:`complete`). Between a request's first
    :meth:`send` and the end of :meth:`complete` only this thread touches the channel.
    """

    _FINISH = object()

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self._queue: "queue.SimpleQueue" = queue.SimpleQueue()
        self._done = threading.Event()
        self._result: Any = None
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="hvd_dc-courier")
        self._thread.start()

    def send(self, c: int, kind: Optional[RequestKind]) -> None:
        self._queue.put((c, kind))

    def complete(self):
        """Wait until every chunk of the request is answered and read; the reply headers.
        Errors of the thread (a timeout naming the server) are raised here."""
        self._done.clear()
        self._queue.put(self._FINISH)
        # the thread's own waits on the servers are bounded and name the rank; this one only
        # has to notice a thread that is gone, which would otherwise leave step() blocked
        while not self._done.wait(1.0):
            if not self._thread.is_alive():
                raise RuntimeError("hvd_dc: the worker's courier thread has ended; the exchange cannot complete")
        error, self._error = self._error, None
        if error is not None:
            raise error
        return self._result

    def _run(self) -> None:
        outstanding = 0
        while True:
            try:
                item = self._queue.get(timeout=0.0002 if outstanding else None)
            except queue.Empty:
                outstanding = self._guard(self.channel.progress) or 0  # replies that arrived meanwhile
                continue
            if item is None:
                return
            if item is self._FINISH:
                self._result = self._guard(self.channel.finish)
                outstanding = 0
                self._done.set()
                continue
            c, kind = item
            if self._error is None:
                self._guard(lambda: self.channel.push(c, kind))
                outstanding = self._guard(self.channel.progress) or 0

    def _guard(self, fn):
        if self._error is not None:
            return None
        try:
            return fn()
        except BaseException as exc:  # handed to the main thread by complete()
            self._error = exc
            return None

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)


def _install(opt: torch.optim.Optimizer, worker: "DCWorker") -> None:
    """Bind the DC methods onto the optimizer object itself.

    The bound methods' ``__self__`` is the optimizer (not the worker), because lr
    schedulers re-bind ``optimizer.step.__func__`` to the optimizer when they wrap it.
    If a scheduler wrapped ``step`` before us, keep its call tracking.
    """
    opt._hvd_dc_worker = worker  # type: ignore[attr-defined]
    step = _step_tracked if hasattr(opt.step, "_wrapped_by_lr_sched") else _step
    opt.step = types.MethodType(step, opt)  # type: ignore[method-assign]
    opt.zero_grad = types.MethodType(_zero_grad, opt)  # type: ignore[method-assign]
    opt.pull = types.MethodType(_pull, opt)  # type: ignore[attr-defined]
    opt.stats = types.MethodType(_stats, opt)  # type: ignore[attr-defined]
    opt.synchronize = types.MethodType(_synchronize, opt)  # type: ignore[attr-defined]
    opt.skip_synchronize = types.MethodType(_skip_synchronize, opt)  # type: ignore[attr-defined]


class DCWorker:
    """A worker's half of one served model: the channel to the servers, the model's
    buffers, when each chunk leaves, and the counters behind ``stats()``."""

    def __init__(
        self,
        ctx: context.Context,
        optimizer: torch.optim.Optimizer,
        params: List[torch.nn.Parameter],
        spec: ModelSpec,
        backward_passes_per_step: int,
        nonfinite: str,
        device: torch.device,
        overlap: str = "auto",
        divergence_cause: str = "",
    ) -> None:
        self.ctx = ctx
        self.optimizer = optimizer
        self.spec = spec
        self.nonfinite = nonfinite
        self.device = device
        me = ctx.worker_rank
        staged = is_staged(device, spec.staging)
        self.channel, registrations = join(ctx, spec, params, pin_memory=device.type == "cuda",
                                           double_buffer=not staged)
        plan = self.channel.plan
        staging = None
        if staged:
            staging = DeviceStaging(plan.layout, device, self.channel.grad_area, self.channel.weights[0],
                                    wire_fp16=spec.compression == "fp16")
        self.buffers = WorkerBuffers(plan, params, self.channel.grad_area, self.channel.weights, staging,
                                     spec.compression == "fp16", backward_passes_per_step)
        self.buffers.on_ready = self._chunk_ready
        self.buffers.on_backward_end = self._backward_ended
        self.overlap_mode = overlap
        # chunks can leave during backward only when their bytes are on the host by then
        self._can_overlap = staging is None or not staging.cuda
        self.overlapping = overlap == "on" and self._can_overlap
        self._decided = overlap != "auto"
        self._courier: Optional[_Courier] = None  # the thread that sends during backward, once overlapping
        self._courier_busy = False  # the courier holds the channel for the current request
        self._sent: List[bool] = []
        self._in_request = False
        self._pushed_in_backward = False
        self._synchronized = False
        self._version_at_end: Optional[int] = None
        first = registrations[0]
        self.resumed_from = first.resumed_from
        self.server_device = first.server_device
        # after a restart each server may have applied a different number of this worker's
        # pushes: resume from the fewest, and do not push again to a server what it applied
        applied = [r.pushes[me] for r in registrations]
        self.pushes = min(applied)
        self._skip = [a - self.pushes for a in applied]
        self.pulls = 1
        self.rejected = max(r.rejected[me] for r in registrations)
        home = registrations[plan.chunks[0].server]  # counts are chunk 0's (see ShardState)
        self.server_updates = home.updates
        #: this worker's row of the server's staleness record (restored on resume)
        self.staleness: Dict[int, int] = dict(home.staleness[me]) if home.staleness else {}
        self._started = time.monotonic()
        self._closed = False
        #: notices a diverging run and says once why (hvd_dc.divergence)
        self.divergence = DivergenceWatch(me, divergence_cause)
        self._wire_gradient = plan.layout.segment_views(self.channel.grad_area, wire=True)
        self._host_weights = [plan.layout.segment_views(w) for w in self.channel.weights]

    # -- the step path ---------------------------------------------------------------------

    def step(self, closure=None):
        """Push this worker's gradient and pull the weights that include it."""
        self._check_open()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        too_many = self.buffers.passes_error()
        if too_many and not self._in_request:
            raise RuntimeError(too_many)
        edited = self._version_at_end is not None and self.buffers.grad_version != self._version_at_end
        if not self._pushed_in_backward:
            if not self._in_request:
                self.buffers.gather_loose_grads()
                self.buffers.gradients_to_host()
                self._begin(RequestKind.PUSH)
            for c in range(len(self.channel.plan.chunks)):  # the gradient leaves the model
                if not self._sent[c]:
                    self._push(c, courier=self._courier_busy)
        headers = self._finish()  # the servers applied it; their new weights are now the model's
        if too_many:  # overlap pushed at the last counted pass; the extra pass came after
            self._end_step()
            raise RuntimeError(too_many)
        self._count_push(headers)
        if self._pushed_in_backward and (edited or self._synchronized):
            self._end_step()
            raise RuntimeError(
                "hvd_dc: the gradients were changed after backward (clipping, scaling, synchronize()), but with "
                "overlap on they had already been pushed during backward and the servers applied them unchanged. "
                "Pass overlap='off' to DistributedDCOptimizer (or set HVD_DC_OVERLAP=off) when the training loop "
                "edits gradients between backward() and step()"
            )
        if self.overlap_mode == "auto" and not self._decided:
            # the first step shows whether the loop edits gradients after backward
            self.overlapping = self._can_overlap and not edited and not self._synchronized
            self._decided = True
        self._end_step()
        return loss

    def pull(self) -> None:
        """Fetch the servers' newest weights into the model without pushing."""
        self._check_open()
        if self._in_request:
            raise RuntimeError("hvd_dc: pull() between backward() and step(): call step() first")
        self._begin(RequestKind.PULL)
        for c in range(len(self.channel.plan.chunks)):
            self.channel.push(c)
        self._finish()

    def _begin(self, kind: RequestKind) -> None:
        self.buffers.before_weights_arrive()
        read_hyperparameters(self.optimizer.param_groups, self.spec.hyper_slots, self.channel.hyper)
        self.channel.begin(kind, self.buffers.reply_target)
        self._sent = [False] * len(self.channel.plan.chunks)
        self._in_request = True

    def _push(self, c: int, courier: bool = False) -> None:
        """Chunk ``c`` of this step leaves (a pull only, where its server already applied
        this step before a restart), now or, during backward, by the courier thread."""
        self.buffers.chunk_to_wire(c)
        skip = self._skip[self.channel.plan.chunks[c].server] > 0
        kind = RequestKind.PULL if skip else None
        if courier:
            if self._courier is None:
                self._courier = _Courier(self.channel)
            self._courier.send(c, kind)
        else:
            self.channel.push(c, kind)
        self._sent[c] = True

    def _finish(self):
        try:
            headers = self._courier.complete() if self._courier_busy else self.channel.finish()
        except HvdDcTimeout:
            self.ctx.server_lost = True  # shutdown must not wait on the servers collectively
            raise
        self.buffers.weights_arrived()  # the weights arrive in the model
        self._in_request = False
        self.pulls += 1
        self.server_updates = int(headers[0][2])
        return headers

    def _end_step(self) -> None:
        self._pushed_in_backward = False
        self._courier_busy = False
        self._synchronized = False
        self._version_at_end = None
        self._skip = [max(0, k - 1) for k in self._skip]
        self.buffers.reset_passes()

    # -- called from backward (worker_buffers' hooks) ----------------------------------------

    def _chunk_ready(self, c: int) -> None:
        """Every gradient of chunk ``c`` is final: with overlap on, it leaves now."""
        if not self.overlapping:
            return
        if not self._in_request:
            self._begin(RequestKind.PUSH)
        self._courier_busy = True
        self._push(c, courier=True)

    def _backward_ended(self) -> None:
        """The step's last backward pass ended: with overlap on, the chunks that are left
        (parameters without a gradient, replaced ``.grad`` tensors) leave now."""
        if self.overlapping:
            self.buffers.gather_loose_grads()
            self.buffers.gradients_to_host()
            if not self._in_request:
                self._begin(RequestKind.PUSH)
            self._courier_busy = True
            for c in range(len(self.channel.plan.chunks)):
                if not self._sent[c]:
                    self._push(c, courier=True)
            self._pushed_in_backward = True
        self._version_at_end = self.buffers.grad_version

    def _count_push(self, headers) -> None:
        self.pushes += 1
        status = headers[:, 1]
        if (status == ReplyStatus.OK).all():
            staleness = int(headers[0][3])
            self.staleness[staleness] = self.staleness.get(staleness, 0) + 1
            self.divergence.step(self._wire_gradient, self._host_weights[self.buffers.host_weights])
            return
        self.rejected += 1
        self.divergence.rejected()
        bad = int((status != ReplyStatus.OK).sum())
        what = ("the server rejected it and the model was not changed" if bad == len(status) else
                f"the servers rejected the {bad} of its {len(status)} chunks that hold them, which did not change "
                "the model; its other chunks were applied")
        if self.nonfinite == "raise":
            raise FloatingPointError(
                f"hvd_dc worker {self.ctx.worker_rank}: the gradient has NaN/Inf elements; {what} (nonfinite='raise')"
            )
        if self.rejected in (1, 10, 100) or self.rejected % 1000 == 0:
            warnings.warn(
                f"hvd_dc worker {self.ctx.worker_rank}: a gradient with NaN/Inf ({self.rejected} so far): {what}",
                RuntimeWarning,
                stacklevel=3,
            )

    # -- the optimizer's other methods -----------------------------------------------------

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients (one fill of the flat buffer).

        The gradients stay bound to the flat buffer whatever ``set_to_none`` says, so that
        the next backward pass accumulates into it in place; a parameter that gets no
        gradient pushes zeros.
        """
        if self._in_request:
            raise RuntimeError(
                "hvd_dc: zero_grad() was called after backward() had pushed this step's gradients but before "
                "step(); call step() first (or pass overlap='off')"
            )
        self.buffers.zero_grad()

    def synchronize(self) -> None:
        """Horovod's call before editing gradients: the next ``step()`` pushes them as they
        are then. With overlap on they have already left: that is an error."""
        if self._pushed_in_backward or self._in_request:
            raise RuntimeError(
                "hvd_dc: synchronize() after backward() with overlap on: the gradients were already pushed during "
                "backward, so an edit now would not reach the servers. Pass overlap='off' to "
                "DistributedDCOptimizer (or set HVD_DC_OVERLAP=off) to edit gradients before step()"
            )
        self._synchronized = True
        self.buffers.forbid_eager_copy()

    def stats(self) -> Dict[str, Any]:
        """Counters of this worker and the server's total at the last reply, with this
        worker's staleness p50/p99 and the server's updates/s (see :mod:`hvd_dc.stats`)."""
        accepted = sum(self.staleness.values())
        return {
            "worker": self.ctx.worker_rank,
            "pushes": self.pushes,
            "pulls": self.pulls,
            "rejected_pushes": self.rejected,
            "server_updates": self.server_updates,
            "staleness_mean": sum(k * v for k, v in self.staleness.items()) / max(accepted, 1),
            "staleness_max": max(self.staleness, default=0),
            "resumed_from": self.resumed_from,
            "device": str(self.device),
            "server_device": self.server_device,
            "servers": self.ctx.topology.servers,
            "chunks": len(self.channel.plan.chunks),
            "overlap": self.overlapping,
            **self.buffers.staging_stats(),
            **worker_stats_extra(self.staleness, self.server_updates, time.monotonic() - self._started),
        }

    def _check_open(self) -> None:
        if self._closed or self.ctx.shut_down:
            raise RuntimeError("hvd_dc has been shut down; this optimizer can no longer step or pull")

    def close(self) -> None:
        """Release the windows (collective with the servers, in registration order)."""
        if self._closed:
            return
        self._closed = True
        if self._courier is not None:
            self._courier.close()
        self.buffers.close()
        self.channel.free()

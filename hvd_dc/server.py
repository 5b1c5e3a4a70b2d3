"""The parameter server's main loop on world rank 0.

This module owns the server process's life between ``init()`` and its exit. It loops:

1. for every served model, answer each pending request once
   (:meth:`ServedModel.poll`: read the request, apply it through
   :class:`~hvd_dc.server_state.ServerState`, publish the reply);
2. pick up control messages: a :class:`~hvd_dc.protocol.Register` (start serving a
   model, :func:`hvd_dc.handshake.accept`), a :class:`~hvd_dc.protocol.Goodbye`, an
   :class:`~hvd_dc.protocol.Abort`;
3. once a worker has finished, watch the others for silence; write checkpoints when due;
   report metrics.

It returns the process's exit status once every worker has said goodbye. How requests and
replies cross the windows is :mod:`hvd_dc.protocol`'s business. On shared memory and RDMA
hardware, the workers' transfers complete while this loop computes; over a network
without RDMA they complete only when this process enters MPI (docs/DESIGN.md), which the
loop does between requests and, while idle, on every round.
"""

from __future__ import annotations

import logging
import os
import time
from typing import List, Optional, Set

import numpy as np
import torch
from mpi4py import MPI

from . import checkpoint
from .context import Context
from .devices import resolve_server_device
from .fault_injection import fault_point
from .handshake import accept
from .layout import ModelSpec
from .metrics import ServerMetrics
from .protocol import (
    FIRST_WORKER_RANK,
    Abort,
    Goodbye,
    ProtocolError,
    Register,
    Registration,
    Reply,
    ReplyStatus,
    RequestKind,
    ServerWindows,
    SetWeights,
    Tag,
    WeightsSet,
    world_rank,
)
from .server_state import ServerState
from .waiting import Backoff, HvdDcTimeout, wait_request

__all__ = ["serve", "ServedModel", "ServerAbort"]

log = logging.getLogger("hvd_dc.server")


class ServerAbort(RuntimeError):
    """The server must end the whole job (after writing checkpoints)."""


class ServedModel:
    """One registered model: its windows, its state, and its checkpoint schedule."""

    def __init__(self, index: int, windows: ServerWindows, state: ServerState) -> None:
        self.index = index
        self.windows = windows
        self.state = state
        self.last_request = np.full(state.num_workers, time.monotonic())
        self._start = 0
        self._started = time.monotonic()
        spec = state.spec
        self._ckpt_path = spec.checkpoint_path
        self._ckpt_every = spec.checkpoint_every_updates
        self._ckpt_seconds = spec.checkpoint_every_seconds
        self._ckpt_updates = state.updates
        self._ckpt_time = time.monotonic()

    def poll(self) -> int:
        """Answer every pending request once; return how many were answered."""
        pending = self.windows.pending()
        if pending.size == 0:
            return 0
        # rotate the starting worker so that no worker is always served last
        if pending.size > 1:
            pending = np.roll(pending, -int(np.searchsorted(pending, self._start)))
        self._start = (int(pending[0]) + 1) % self.state.num_workers
        for m in pending.tolist():
            self._answer(m)
        self.last_request[pending] = time.monotonic()
        self._checkpoint_if_due()
        return int(pending.size)

    def _answer(self, m: int) -> None:
        request = self.windows.request(m)
        status, staleness = ReplyStatus.OK, 0
        state = self.state
        if request.kind == RequestKind.PUSH:
            # the push and the pull that follows it: the pull writes w_bak(m), the weights
            # m receives, into m's reply area
            accepted, staleness = state.apply_push(m, request.grad, request.hyper, pull=True)
            if accepted:
                fault_point("kill_server_mid_update")
                fault_point("stall_server")
            else:
                status = ReplyStatus.REJECTED_NONFINITE
                rejected = int(state.rejected[m])
                if rejected in (1, 10, 100) or rejected % 1000 == 0:
                    log.warning("rejected a gradient with NaN/Inf from worker %d (world rank %d); %d rejected so far",
                                m, world_rank(m), rejected)
        else:
            state.pull(m)
        self.windows.reply(request, Reply(request.seq, status, state.updates, staleness, int(state.rejected[m])))

    def _checkpoint_if_due(self) -> None:
        if self._ckpt_path is None:
            return
        due = self._ckpt_every is not None and self.state.updates - self._ckpt_updates >= self._ckpt_every
        if not due and self._ckpt_seconds is not None:
            due = time.monotonic() - self._ckpt_time >= self._ckpt_seconds and self.state.updates > self._ckpt_updates
        if due:
            self.write_checkpoint()

    def write_checkpoint(self) -> None:
        """Write this model's full state to its checkpoint path (atomically)."""
        if self._ckpt_path is None:
            return
        t0 = time.monotonic()
        checkpoint.save_atomic(checkpoint.snapshot(self.state, t0 - self._started), self._ckpt_path)
        self._ckpt_updates = self.state.updates
        self._ckpt_time = time.monotonic()
        log.info("model %d: checkpoint at update %d written to %s in %.3f s", self.index, self.state.updates,
                 self._ckpt_path, self._ckpt_time - t0)

    def close(self) -> None:
        self.windows.free()


def _state_maker(ctx: Context, spec: ModelSpec, index: int):
    """How the server builds a model's state at registration (:func:`handshake.accept`):
    on the device ``server_device`` resolves to, resumed from its checkpoint if one exists."""

    def make_state(initial: torch.Tensor, replies: List[torch.Tensor]):
        device = resolve_server_device(spec.server_device, spec.staging)
        state = ServerState(spec, initial, replies, device=device, kernels=ctx.settings.kernels)
        path = spec.checkpoint_path
        resumed_from = None
        if path is not None and os.path.exists(path):
            warning = checkpoint.restore(state, checkpoint.load(path), path)
            resumed_from = path
            if warning:
                log.warning("%s", warning)
            log.warning("model %d: resumed from %s at update %d", index, path, state.updates)
        log.info(
            "serving model %d: %d parameters in %d tensors, %s, %s, %d workers, optimizer %s on %s, "
            "master weights on %s, update path %s",
            index, state.layout.numel, len(state.layout.params),
            ", ".join(f"{s.numel}x{str(s.dtype).replace('torch.', '')}" for s in state.layout.segments),
            ", ".join(f"{k}={v}" for k, v in spec.dc.as_arguments().items()), ctx.num_workers,
            ".".join(spec.optimizer_class), "flat segments" if state.flat_optimizer else "per-parameter views",
            f"{state.device} (staged through the window)" if state.staged else "the window (host memory)",
            type(state.update).__name__,
        )
        registration = Registration(
            updates=int(state.updates),
            pushes=tuple((state.accepted + state.rejected).tolist()),
            rejected=tuple(state.rejected.tolist()),
            staleness=tuple(state.staleness.hists),
            resumed_from=resumed_from,
            server_device=f"{state.device}" + (" (staged)" if state.staged else " (window)"),
        )
        return state, registration

    return make_state


def serve(ctx: Context) -> int:
    """Run the parameter server until every worker has said goodbye; return exit status."""
    world = ctx.world
    settings = ctx.settings
    models: List[ServedModel] = []
    failures: List[str] = []
    goodbyes: Set[int] = set()
    status = MPI.Status()
    backoff = Backoff()
    started = time.monotonic()
    first_goodbye: Optional[float] = None
    metrics = ServerMetrics(settings.metrics_interval, settings.metrics_file, settings.tensorboard_dir)
    while len(goodbyes) < ctx.num_workers:
        answered = 0
        for model in models:
            answered += model.poll()
        if first_goodbye is not None:
            _check_stragglers(ctx, models, goodbyes, first_goodbye)
        while world.Iprobe(source=MPI.ANY_SOURCE, tag=Tag.CONTROL, status=status):
            src = status.Get_source()
            msg = world.recv(source=src, tag=Tag.CONTROL)
            answered += 1
            if isinstance(msg, Goodbye):
                goodbyes.add(src)
                if first_goodbye is None:
                    first_goodbye = time.monotonic()
            elif isinstance(msg, Register):
                index = len(models) + len(failures)
                try:
                    served = accept(ctx, msg.spec, index, _state_maker(ctx, msg.spec, index))
                except HvdDcTimeout as exc:
                    log.error("%s", exc)
                    return 1
                if served is None:
                    failures.append("registration failed")
                else:
                    models.append(ServedModel(index, *served))
            elif isinstance(msg, SetWeights):
                _set_weights(ctx, models, msg, src)
            elif isinstance(msg, Abort):
                log.error("aborting at the workers' request: %s", msg.reason)
                failures.append(msg.reason)
            else:
                raise ProtocolError(f"unknown control message {msg!r} from world rank {src}")
        metrics.tick(models)
        if answered:
            backoff.reset()
        else:
            backoff.wait()
    elapsed = time.monotonic() - started
    for model in models:
        s = model.state.summary()
        log.info(
            "model %d done: %d updates in %.1f s (%.1f/s), %d rejected, staleness mean %.2f max %d, weights finite: %s",
            model.index, s["updates"], elapsed, s["updates"] / elapsed if elapsed > 0 else 0.0, s["rejected"],
            s["staleness_mean"], s["staleness_max"], s["finite"],
        )
    metrics.finish(models)
    for model in models:
        model.write_checkpoint()
    for model in models:
        model.close()  # collective with the workers' shutdown, in registration order
    return 1 if failures else 0


def _set_weights(ctx: Context, models: List[ServedModel], msg: SetWeights, src: int) -> None:
    """Worker 0's :class:`SetWeights`: take the weights that follow on ``WEIGHTS``, make them
    the master weights and every worker's ``w_bak(m)``, and tell every worker."""
    world = ctx.world
    weights = torch.empty(msg.nbytes, dtype=torch.uint8)
    req = world.Irecv([weights.numpy(), MPI.BYTE], source=src, tag=Tag.WEIGHTS)
    error = None
    try:
        wait_request(req, ctx.settings.timeout,
                     lambda: f"parameter server: world rank {src} did not send the weights it announced within "
                     f"{ctx.settings.timeout:g} s")
        if not 0 <= msg.model < len(models):
            raise ValueError(f"no served model {msg.model}")
        state = models[msg.model].state
        if msg.nbytes != state.layout.nbytes:
            raise ValueError(f"{msg.nbytes} bytes of weights for a model of {state.layout.nbytes}")
        state.set_weights(weights)
        log.info("model %d: weights replaced by world rank %d's (broadcast_parameters)", msg.model, src)
    except (HvdDcTimeout, ValueError) as exc:
        log.error("cannot set the weights of model %d: %s", msg.model, exc)
        error = str(exc)
    for r in range(FIRST_WORKER_RANK, world.Get_size()):
        world.send(WeightsSet(error), dest=r, tag=Tag.REGISTERED)


def _check_stragglers(ctx: Context, models: List[ServedModel], goodbyes: Set[int], first_goodbye: float) -> None:
    """Once a worker has finished, a worker silent for the timeout ends the job.

    The finished workers wait in the collective window release for the others, so a
    worker that hangs would hang the job: name it, write the checkpoints, abort.
    """
    now = time.monotonic()
    timeout = ctx.settings.timeout
    for rank in range(FIRST_WORKER_RANK, ctx.world.Get_size()):
        if rank in goodbyes:
            continue
        m = rank - FIRST_WORKER_RANK
        last = max([first_goodbye] + [float(model.last_request[m]) for model in models])
        if now - last > timeout:
            for model in models:
                model.write_checkpoint()
            raise ServerAbort(
                f"worker {m} (world rank {rank}) sent nothing for {now - last:.0f} s while other workers had "
                f"finished (HVD_DC_TIMEOUT={timeout:g} s); checkpoints written; ending the job"
            )

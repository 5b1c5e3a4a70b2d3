"""The parameter server's main loop on world rank 0.

This module owns the server process's life between ``init()`` and its exit: it learns
models as workers register them, allocates their windows with the workers, and then
loops: poll every served model's push words, apply each pending request through
:class:`~hvd_dc.server_state.ServerState` (Algorithm 2), publish the reply; between
rounds, pick up control messages (a registration, a worker's goodbye, an abort). It
returns the process's exit status once every worker has said goodbye.

The workers' data movement never waits for this loop: Put, Get and the atomics on
``Win.Allocate`` windows complete while this process computes (RMA_NOTES.md); the loop
only decides when a reply is ready.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Dict, List, Optional

import numpy as np
import torch
from mpi4py import MPI

from . import checkpoint
from .collectives import wait_request
from .devices import resolve_server_device
from .fault_injection import fault_point
from .launch import check_shm
from .layout import ModelSpec
from .metrics import ServerMetrics, StalenessTracker
from .protocol import (
    KIND_PULL,
    KIND_PUSH,
    PM_KIND,
    RM_REJECTED,
    RM_SEQ,
    RM_STALENESS,
    RM_STATUS,
    RM_UPDATES,
    STATUS_OK,
    STATUS_REJECTED_NONFINITE,
    ServerWindows,
    WindowLayout,
)
from .runtime import TAG_CONTROL, TAG_REGISTERED, TAG_WEIGHTS, Context
from .server_state import ServerState, build_layout
from .waiting import Backoff, HvdDcTimeout

__all__ = ["serve", "ServedModel"]

log = logging.getLogger("hvd_dc.server")

FIRST_WORKER_RANK = 1  # world rank of worker 0


class ProtocolError(RuntimeError):
    pass


class ServerAbort(RuntimeError):
    """The server must end the whole job (after writing checkpoints)."""


class ServedModel:
    """One registered model: its windows, its state, and what has been answered."""

    def __init__(self, index: int, windows: ServerWindows, state: ServerState, started: float) -> None:
        self.index = index
        self.windows = windows
        self.state = state
        self.handled = np.zeros(state.num_workers, dtype=np.int64)
        self.last_request = np.full(state.num_workers, time.monotonic())
        self.tracker = StalenessTracker(state.num_workers)  # per-worker staleness (hvd_dc.metrics)
        self._start = 0
        self._started = started
        spec = state.spec
        self._ckpt_path = spec.checkpoint_path
        self._ckpt_every = spec.checkpoint_every_updates
        self._ckpt_seconds = spec.checkpoint_every_seconds
        self._ckpt_updates = state.updates
        self._ckpt_time = time.monotonic()

    def poll(self) -> int:
        """Answer every pending request once; return how many were answered."""
        seqs = self.windows.push_seqs()
        pending = np.flatnonzero(seqs != self.handled)
        if pending.size == 0:
            return 0
        # rotate the starting worker so that no worker is always served last
        if pending.size > 1:
            pending = np.roll(pending, -int(np.searchsorted(pending, self._start)))
        self._start = (int(pending[0]) + 1) % self.state.num_workers
        self.windows.begin_read()
        for m in pending.tolist():
            seq = int(seqs[m])
            if seq != self.handled[m] + 1:
                raise ProtocolError(
                    f"model {self.index}: worker {m} (world rank {m + FIRST_WORKER_RANK}) jumped from request "
                    f"#{self.handled[m]} to #{seq}"
                )
            self._answer(m, seq)
            self.handled[m] = seq
        self.last_request[pending] = time.monotonic()
        self._checkpoint_if_due()
        return int(pending.size)

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

    def _answer(self, m: int, seq: int) -> None:
        w = self.windows
        kind = int(w.push_meta[m][PM_KIND])
        status = STATUS_OK
        staleness = 0
        if kind == KIND_PUSH:
            # the push and the pull that follows it; the pull writes w_bak(m) into m's
            # reply area: the weights m receives
            ok, staleness = self.state.apply_push(m, w.grad[m], w.hyper[m], pull=True)
            if ok:
                self.tracker.add(m, staleness)
                fault_point("kill_server_mid_update")
                fault_point("stall_server")
            else:
                status = STATUS_REJECTED_NONFINITE
                if self.state.rejected[m] in (1, 10, 100) or self.state.rejected[m] % 1000 == 0:
                    log.warning(
                        "rejected a gradient with NaN/Inf from worker %d (world rank %d); %d rejected so far",
                        m,
                        m + FIRST_WORKER_RANK,
                        int(self.state.rejected[m]),
                    )
        elif kind == KIND_PULL:
            self.state.pull(m)
        else:
            raise ProtocolError(f"model {self.index}: worker {m} sent unknown request kind {kind}")
        meta = w.reply_meta[m]
        meta[RM_SEQ] = seq
        meta[RM_STATUS] = status
        meta[RM_UPDATES] = self.state.updates
        meta[RM_STALENESS] = staleness
        meta[RM_REJECTED] = self.state.rejected[m]
        w.publish_reply(m, seq)

    def close(self) -> None:
        self.windows.free()


def _register(ctx: Context, spec: ModelSpec, index: int) -> Optional[ServedModel]:
    """Allocate a model's windows with the workers and build its state.

    Every worker learns the outcome ("ok" or the error) with TAG_REGISTERED; on error the
    server keeps running until the workers say goodbye, and then exits non-zero.
    """
    world = ctx.world
    layout = build_layout(spec)
    wl = WindowLayout(layout, len(spec.hyper_slots), ctx.num_workers)
    shm_problem = check_shm(wl.data_nbytes + wl.ctrl_nbytes)  # too small a /dev/shm: SIGBUS or a hang next
    if shm_problem:
        log.warning("model %d: %s", index, shm_problem)
    windows = ServerWindows(world, wl)  # collective with every worker
    initial = torch.empty(layout.nbytes, dtype=torch.uint8)
    req = world.Irecv([initial.numpy(), MPI.BYTE], source=FIRST_WORKER_RANK, tag=TAG_WEIGHTS)
    wait_request(
        req,
        ctx.start_timeout,
        lambda: f"parameter server: worker 0 (world rank {FIRST_WORKER_RANK}) did not send the initial weights "
        f"within {ctx.start_timeout:g} s",
    )
    resumed_from = None
    try:
        device = resolve_server_device(spec.server_device)
        state = ServerState(spec, initial, windows.reply_weights, device=device)
        path = spec.checkpoint_path
        if path is not None and os.path.exists(path):
            warning = checkpoint.restore(state, checkpoint.load(path), path)
            resumed_from = path
            if warning:
                log.warning("%s", warning)
            log.warning("model %d: resumed from %s at update %d", index, path, state.updates)
        pushes = (state.accepted + state.rejected).tolist()
        verdict = {"ok": True, "updates": int(state.updates), "pushes": pushes, "resumed_from": resumed_from,
                   "server_device": f"{state.device}" + (" (staged)" if state.staged else " (window)")}
    except Exception as exc:
        log.error("cannot serve model %d: %s", index, exc)
        state = None
        verdict = {"ok": False, "error": f"the parameter server cannot serve this model: {exc}"}
    for r in range(FIRST_WORKER_RANK, world.Get_size()):
        world.send(verdict, dest=r, tag=TAG_REGISTERED)
    if state is None:
        windows.free()
        return None
    log.info(
        "serving model %d: %d parameters in %d tensors, %s, dc_variant=%s lambda=%g, %d workers, "
        "optimizer %s on %s, master weights on %s",
        index,
        layout.numel,
        len(layout.params),
        ", ".join(f"{s.numel}x{str(s.dtype).replace('torch.', '')}" for s in layout.segments),
        spec.dc_variant,
        spec.dc_lambda,
        ctx.num_workers,
        ".".join(spec.optimizer_class),
        "flat segments" if state.flat_optimizer else "per-parameter views",
        f"{state.device} (staged through the window)" if state.staged else "the window (host memory)",
    )
    return ServedModel(index, windows, state, time.monotonic())


def serve(ctx: Context) -> int:
    """Run the parameter server until every worker has said goodbye; return exit status."""
    world = ctx.world
    models: List[ServedModel] = []
    failures: List[str] = []
    byes = set()
    status = MPI.Status()
    backoff = Backoff()
    started = time.monotonic()
    n_workers = ctx.num_workers
    first_bye: Optional[float] = None
    metrics = ServerMetrics()  # periodic log line, JSONL, TensorBoard (hvd_dc.metrics)
    while len(byes) < n_workers:
        answered = 0
        for model in models:
            answered += model.poll()
        if first_bye is not None:
            _check_stragglers(ctx, models, byes, first_bye)
        while world.Iprobe(source=MPI.ANY_SOURCE, tag=TAG_CONTROL, status=status):
            src = status.Get_source()
            msg = world.recv(source=src, tag=TAG_CONTROL)
            answered += 1
            if msg[0] == "bye":
                byes.add(src)
                if first_bye is None:
                    first_bye = time.monotonic()
            elif msg[0] == "register":
                try:
                    served = _register(ctx, msg[1], len(models) + len(failures))
                except HvdDcTimeout as exc:
                    log.error("%s", exc)
                    return 1
                if served is None:
                    failures.append("registration failed")
                else:
                    models.append(served)
            elif msg[0] == "abort":
                log.error("aborting at the workers' request: %s", msg[1])
                failures.append(msg[1])
            else:
                raise ProtocolError(f"unknown control message {msg[0]!r} from world rank {src}")
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
            model.index,
            s["updates"],
            elapsed,
            s["updates"] / elapsed if elapsed > 0 else 0.0,
            s["rejected"],
            s["staleness_mean"],
            s["staleness_max"],
            s["finite"],
        )
    metrics.finish(models)
    for model in models:
        model.write_checkpoint()
    for model in models:
        model.close()  # collective with the workers' shutdown, in registration order
    return 1 if failures else 0


def _check_stragglers(ctx: Context, models: List[ServedModel], byes: set, first_bye: float) -> None:
    """Once a worker has finished, a worker silent for ``ctx.timeout`` seconds ends the job.

    The finished workers wait in the collective window release for the others, so a
    worker that hangs would hang the job: name it, write the checkpoints, abort.
    """
    now = time.monotonic()
    for rank in range(FIRST_WORKER_RANK, ctx.world.Get_size()):
        if rank in byes:
            continue
        m = rank - FIRST_WORKER_RANK
        last = max([first_bye] + [float(model.last_request[m]) for model in models])
        if now - last > ctx.timeout:
            for model in models:
                model.write_checkpoint()
            raise ServerAbort(
                f"worker {m} (world rank {rank}) sent nothing for {now - last:.0f} s while other workers had "
                f"finished (HVD_DC_TIMEOUT={ctx.timeout:g} s); checkpoints written; ending the job"
            )

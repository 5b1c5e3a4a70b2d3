"""A parameter server's main loop, on each of world ranks ``0 .. S-1``.

This module owns a server process's life between ``init()`` and its exit. It loops:

1. for every served model, answer each pending request once (:meth:`ServedModel.poll`:
   read the (worker, chunk) requests, apply each to its chunk's state
   (:class:`~hvd_dc.server_state.ShardState`), on ``HVD_DC_SERVER_THREADS`` threads, and
   publish the replies);
2. pick up control messages: a :class:`~hvd_dc.protocol.Register` (start serving this
   server's chunks of a model, :func:`hvd_dc.handshake.accept`), a
   :class:`~hvd_dc.protocol.Goodbye`, an :class:`~hvd_dc.protocol.Abort`;
3. once a worker has finished, watch the others for silence; write checkpoints when due;
   report metrics.

It returns the process's exit status once every worker has said goodbye. How requests and
replies cross the windows is :mod:`hvd_dc.protocol`'s business. On shared memory and RDMA
hardware, the workers' transfers complete while this process computes; over a network
without RDMA they complete only while it is inside MPI (docs/DESIGN.md). So the loop
drives progress on every round and between chunks: it tests a standing receive that never
matches (:class:`Progress`), which every transport progresses fully.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import time
from typing import Dict, List, Optional, Set, Tuple

import numpy as np
import torch
from mpi4py import MPI

from . import checkpoint
from .chunks import ChunkPlan
from .context import Context
from .devices import resolve_server_device
from .fault_injection import fault_point
from .handshake import accept
from .layout import ModelSpec
from .metrics import ServerMetrics
from .protocol import (
    Abort,
    Goodbye,
    ProtocolError,
    Register,
    Registration,
    Reply,
    ReplyStatus,
    Request,
    RequestKind,
    ServerWindows,
    SetWeights,
    Tag,
    WeightsSet,
)
from .server_state import ShardState
from .waiting import Backoff, HvdDcTimeout, wait_request

__all__ = ["serve", "ServedModel", "ServerAbort"]

log = logging.getLogger("hvd_dc.server")


class ServerAbort(RuntimeError):
    """The server must end the whole job (after writing checkpoints)."""


class Progress:
    """A receive that never matches, tested to drive MPI progress: Open MPI's UCX
    progresses fully only every 100th ``Iprobe``, but on every test of a request."""

    def __init__(self, world: MPI.Comm) -> None:
        self._buf = np.zeros(1, dtype=np.uint8)
        self._req = world.Irecv([self._buf, MPI.BYTE], source=MPI.ANY_SOURCE, tag=Tag.PROGRESS)

    def __call__(self) -> None:
        self._req.Test()

    def close(self) -> None:
        self._req.Cancel()
        self._req.Wait()


class ServedModel:
    """One registered model on this server: its windows, its chunks' state, and its
    checkpoint schedule."""

    def __init__(self, ctx: Context, index: int, windows: ServerWindows, state: ShardState, plan: ChunkPlan,
                 pool: Optional[concurrent.futures.ThreadPoolExecutor], progress: Progress) -> None:
        self.index = index
        self.topology = ctx.topology
        self.windows = windows
        self.state = state
        self.plan = plan
        self._pool = pool
        self._progress = progress
        self.last_request = np.full(state.num_workers, time.monotonic())
        self._start = 0
        self._started = time.monotonic()
        spec = state.spec
        me, servers = ctx.world.Get_rank(), ctx.topology.servers
        self._ckpt_path = None if spec.checkpoint_path is None else checkpoint.server_path(spec.checkpoint_path, me,
                                                                                           servers)
        self._ckpt_every = spec.checkpoint_every_updates
        self._ckpt_seconds = spec.checkpoint_every_seconds
        self._ckpt_updates = state.updates
        self._ckpt_time = time.monotonic()

    def poll(self) -> int:
        """Answer every pending request once; return how many were answered."""
        pending = self.windows.pending()
        if not pending:
            return 0
        n = self.state.num_workers
        # rotate the starting worker so that no worker is always served last
        pending.sort(key=lambda mj: ((mj[0] - self._start) % n, mj[1]))
        self._start = (pending[0][0] + 1) % n
        by_chunk: Dict[int, List[Request]] = {}
        for m, j in pending:
            by_chunk.setdefault(j, []).append(self.windows.request(m, j))
        if self._pool is None:
            for requests in by_chunk.values():
                for request, reply in self._apply(requests):
                    self.windows.reply(request, reply)
                self._progress()
        else:
            futures = [self._pool.submit(self._apply, requests) for requests in by_chunk.values()]
            waiting = set(futures)
            while waiting:
                done, waiting = concurrent.futures.wait(waiting, timeout=0.0005,
                                                        return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    for request, reply in future.result():
                        self.windows.reply(request, reply)
                self._progress()
        workers = sorted({m for m, _ in pending})
        self.last_request[workers] = time.monotonic()
        self._checkpoint_if_due()
        return len(pending)

    def _apply(self, requests: List[Request]) -> List[Tuple[Request, Reply]]:
        """Apply one chunk's requests, in order (no MPI: it may run on a pool thread)."""
        out = []
        for request in requests:
            m, j = request.worker, request.chunk
            state = self.state.states[j]
            status, staleness = ReplyStatus.OK, 0
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
                    if j == 0 and (rejected in (1, 10, 100) or rejected % 1000 == 0):
                        log.warning("rejected a gradient with NaN/Inf from %s; %d rejected so far",
                                    self.topology.name(m), rejected)
            else:
                state.pull(m)
            out.append((request, Reply(request.seq, status, state.updates, staleness, int(state.rejected[m]))))
        return out

    def _checkpoint_if_due(self) -> None:
        if self._ckpt_path is None:
            return
        due = self._ckpt_every is not None and self.state.updates - self._ckpt_updates >= self._ckpt_every
        if not due and self._ckpt_seconds is not None:
            due = time.monotonic() - self._ckpt_time >= self._ckpt_seconds and self.state.updates > self._ckpt_updates
        if due and self.state.pushes_settled():  # never half a push: wait for its other chunks
            self.write_checkpoint()

    def write_checkpoint(self) -> None:
        """Write this server's chunks' full state to its checkpoint path (atomically)."""
        if self._ckpt_path is None:
            return
        t0 = time.monotonic()
        checkpoint.save_atomic(checkpoint.snapshot(self.state, t0 - self._started, self.plan.describe()),
                               self._ckpt_path)
        self._ckpt_updates = self.state.updates
        self._ckpt_time = time.monotonic()
        log.info("model %d: checkpoint at update %d written to %s in %.3f s", self.index, self.state.updates,
                 self._ckpt_path, self._ckpt_time - t0)

    def close(self) -> None:
        self.windows.free()


def _state_maker(ctx: Context, spec: ModelSpec, index: int):
    """How a server builds its chunks' state at registration (:func:`handshake.accept`):
    on the device ``server_device`` resolves to, resumed from its checkpoint if one exists."""
    me, servers = ctx.world.Get_rank(), ctx.topology.servers

    def make_state(initial: torch.Tensor, replies: List[List[torch.Tensor]]):
        plan = ChunkPlan.for_spec(spec, servers)
        device = resolve_server_device(spec.server_device, spec.staging)
        state = ShardState(spec, plan.of_server(me), initial, replies, device=device, kernels=ctx.settings.kernels)
        resumed_from = None
        if spec.checkpoint_path is not None:
            path = checkpoint.server_path(spec.checkpoint_path, me, servers)
            if os.path.exists(path):
                warning = checkpoint.restore(state, checkpoint.load(path), path, plan.describe())
                resumed_from = path
                if warning:
                    log.warning("%s", warning)
                log.warning("model %d: resumed from %s at update %d", index, path, state.updates)
        chunks = plan.of_server(me)
        log.info(
            "serving model %d on world rank %d of %d server(s): %d of %d chunks (%d bytes of %d), %s, %d workers, "
            "optimizer %s, master weights on %s, update path %s",
            index, me, servers, len(chunks), len(plan.chunks), sum(c.nbytes for c in chunks), plan.layout.nbytes,
            ", ".join(f"{k}={v}" for k, v in spec.dc.as_arguments().items()), ctx.num_workers,
            ".".join(spec.optimizer_class),
            f"{state.device} (staged through the window)" if state.staged else "the window (host memory)",
            state.update_path,
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
    """Run this parameter server until every worker has said goodbye; return exit status."""
    world = ctx.world
    settings = ctx.settings
    topology = ctx.topology
    models: List[ServedModel] = []
    failures: List[str] = []
    goodbyes: Set[int] = set()
    status = MPI.Status()
    backoff = Backoff()
    started = time.monotonic()
    first_goodbye: Optional[float] = None
    metrics = ServerMetrics(settings.metrics_interval, settings.metrics_file, settings.tensorboard_dir)
    progress = Progress(world)
    pool = None
    if settings.server_threads > 1:
        torch.set_num_threads(1)  # the pool's threads are the parallelism: no intra-op threads on top
        pool = concurrent.futures.ThreadPoolExecutor(settings.server_threads, thread_name_prefix="hvd_dc-apply")
    try:
        while len(goodbyes) < topology.num_workers:
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
                        models.append(ServedModel(ctx, index, *served, pool=pool, progress=progress))
                elif isinstance(msg, SetWeights):
                    _set_weights(ctx, models, msg, src)
                elif isinstance(msg, Abort):
                    log.error("aborting at the workers' request: %s", msg.reason)
                    failures.append(msg.reason)
                else:
                    raise ProtocolError(f"unknown control message {msg!r} from world rank {src}")
            metrics.tick(models)
            progress()
            if answered:
                backoff.reset()
            else:
                backoff.wait()
    finally:
        if pool is not None:
            pool.shutdown(wait=False)
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
    progress.close()
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
        state.set_weights(weights)  # this server's chunks of them
        log.info("model %d: weights replaced by world rank %d's (broadcast_parameters)", msg.model, src)
    except (HvdDcTimeout, ValueError) as exc:
        log.error("cannot set the weights of model %d: %s", msg.model, exc)
        error = str(exc)
    for r in ctx.topology.worker_ranks:
        world.send(WeightsSet(error), dest=r, tag=Tag.REGISTERED)


def _check_stragglers(ctx: Context, models: List[ServedModel], goodbyes: Set[int], first_goodbye: float) -> None:
    """Once a worker has finished, a worker silent for the timeout ends the job.

    The finished workers wait in the collective window release for the others, so a
    worker that hangs would hang the job: name it, write the checkpoints, abort.
    """
    now = time.monotonic()
    timeout = ctx.settings.timeout
    for rank in ctx.topology.worker_ranks:
        if rank in goodbyes:
            continue
        m = ctx.topology.worker(rank)
        last = max([first_goodbye] + [float(model.last_request[m]) for model in models])
        if now - last > timeout:
            for model in models:
                if model.state.pushes_settled():
                    model.write_checkpoint()
                else:  # a push stopped half-way: the last whole checkpoint stays
                    log.warning("model %d: a push is half applied; keeping the previous checkpoint", model.index)
            raise ServerAbort(
                f"worker {m} (world rank {rank}) sent nothing for {now - last:.0f} s while other workers had "
                f"finished (HVD_DC_TIMEOUT={timeout:g} s); checkpoints written; ending the job"
            )

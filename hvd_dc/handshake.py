"""Start-up: how roles are agreed and how a model comes to be served, both halves here.

At ``init``, :func:`agree_on_settings`: every rank sends its
:class:`~hvd_dc.protocol.RankSettings` (``HVD_DC_SERVERS``, ``HVD_DC_CHUNK_BYTES``) to
world rank 0, which compares them and answers each rank; a disagreement is one error, the
same on every rank, naming the ranks that differ.

Worker side, :func:`join` (every worker calls it from ``DistributedDCOptimizer``):

1. **The workers agree on the model.** Each sends its ``ModelSpec`` to worker 0, which
   compares them (:func:`hvd_dc.layout.diff_specs`) and answers every worker with one
   :class:`~hvd_dc.protocol.ModelCheck`. A difference becomes the same ``ValueError`` on
   every worker and an :class:`~hvd_dc.protocol.Abort` to every server; a worker that does
   not arrive within ``start_timeout`` is named to all.
2. **Worker 0 registers it**: :class:`~hvd_dc.protocol.Register` to every server.
3. **Everyone allocates the windows** (collective over the world; each server holds its
   chunks' areas, :class:`~hvd_dc.chunks.ChunkPlan`).
4. **Worker 0 sends the initial weights** to every server; each builds its chunks' state
   (or resumes its checkpoint) and answers every worker with a
   :class:`~hvd_dc.protocol.Registration`.
5. **Each worker opens its epoch and reads every chunk's reply area**: the initial
   weights, which are its ``w_bak(m)``.

Server side, :func:`accept` (the server loop calls it on a ``Register``) does steps 3-4
from the other end. Every wait is bounded by ``start_timeout`` and names the rank that did
not answer.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from mpi4py import MPI

from .chunks import ChunkPlan, chunk_spec
from .context import Context
from .host_checks import check_shm
from .layout import ModelSpec, diff_specs, diff_worker_options
from .protocol import (
    Abort,
    ModelCheck,
    RankSettings,
    Register,
    Registration,
    ServerWindows,
    Tag,
    WindowLayout,
    WorkerChannel,
)
from .settings import Settings
from .waiting import HvdDcTimeout, gather_at_root, recv, wait_request

__all__ = ["agree_on_settings", "join", "accept"]

log = logging.getLogger("hvd_dc.server")


# -- every rank, at init -------------------------------------------------------------------------


def agree_on_settings(world: MPI.Comm, settings: Settings) -> None:
    """Check that every rank has the same ``HVD_DC_SERVERS`` and ``HVD_DC_CHUNK_BYTES``;
    raise the same ``RuntimeError`` on every rank if not. Collective over ``world``."""
    mine = RankSettings(settings.servers, settings.chunk_bytes)
    size, me = world.Get_size(), world.Get_rank()
    timeout = settings.start_timeout
    if me == 0:
        seen, missing = gather_at_root(world, Tag.AGREE, mine, timeout)
        if missing:
            raise HvdDcTimeout(f"world rank 0: world rank(s) {', '.join(map(str, missing))} did not reach "
                               f"hvd_dc.init() within {timeout:g} s (set HVD_DC_START_TIMEOUT to wait longer)")
        verdict = None
        for field, name in (("servers", "HVD_DC_SERVERS"), ("chunk_bytes", "HVD_DC_CHUNK_BYTES")):
            values: Dict[int, List[int]] = {}
            for r in range(size):
                values.setdefault(getattr(seen[r], field), []).append(r)
            if len(values) > 1:
                verdict = "the ranks disagree on " + name + ": " + "; ".join(
                    f"{v} on world rank(s) {', '.join(map(str, rs))}" for v, rs in sorted(values.items()))
                break
        for r in range(1, size):
            world.send(verdict, dest=r, tag=Tag.AGREE)
    else:
        world.send(mine, dest=0, tag=Tag.AGREE)
        verdict = recv(world, 0, Tag.AGREE, 2 * timeout, lambda: (
            f"world rank {me}: world rank 0 did not confirm the settings within {2 * timeout:g} s"))
    if verdict:
        raise RuntimeError(f"hvd_dc.init(): {verdict}; set them alike on every rank")
    if settings.servers >= size:
        raise RuntimeError(
            f"hvd_dc.init(): HVD_DC_SERVERS={settings.servers} but the job has {size} ranks: at least one worker "
            f"is needed (launch {settings.servers + 1} ranks or more)")


# -- worker side --------------------------------------------------------------------------------


def join(ctx: Context, spec: ModelSpec, params: Sequence[torch.Tensor], pin_memory: bool = False,
         double_buffer: bool = True) -> Tuple[WorkerChannel, List[Registration]]:
    """Register ``spec`` with the servers; return this worker's open channel, whose weight
    buffer 0 holds the initial weights, and every server's :class:`Registration`.

    ``params``: the model's parameters in ``spec.params`` order (worker 0 sends their
    values as the initial weights). Collective over every worker and every server.
    """
    _agree_on_model(ctx, spec)
    topo = ctx.topology
    me = ctx.worker_rank
    timeout = ctx.settings.start_timeout
    if me == 0:
        for s in topo.server_ranks:
            ctx.world.send(Register(spec), dest=s, tag=Tag.CONTROL)
    plan = ChunkPlan.for_spec(spec, topo.servers)
    layouts = [WindowLayout.for_server(spec, plan, s, topo.num_workers) for s in topo.server_ranks]
    channel = WorkerChannel(ctx.world, topo, plan, layouts, me, ctx.settings.timeout, pin_memory=pin_memory,
                            double_buffer=double_buffer, shm=ctx.settings.shm_windows)  # collective with the servers
    if me == 0:
        layout = plan.layout
        initial = torch.zeros(layout.nbytes, dtype=torch.uint8)
        with torch.no_grad():
            for view, p in zip(layout.param_views(initial), params):
                view.copy_(p.detach())
        for s in topo.server_ranks:
            req = ctx.world.Isend([initial.numpy(), layout.nbytes, MPI.BYTE], dest=s, tag=Tag.WEIGHTS)
            wait_request(req, timeout, _server_silent(ctx, s, "receive the initial weights"))
    registrations = [recv(ctx.world, s, Tag.REGISTERED, timeout, _server_silent(ctx, s, "register the model"))
                     for s in topo.server_ranks]
    errors = [f"server (world rank {s}): {r.error}" if topo.servers > 1 else r.error
              for s, r in enumerate(registrations) if not r.ok]
    if errors:
        channel.free()
        raise RuntimeError(f"hvd_dc: {'; '.join(errors)}")
    channel.open(target=0)
    return channel, registrations


def _server_silent(ctx: Context, server: int, what: str) -> Callable[[], str]:
    return lambda: (
        f"worker {ctx.worker_rank}: the parameter server (world rank {server}) did not {what} within "
        f"{ctx.settings.start_timeout:g} s (set HVD_DC_START_TIMEOUT to wait longer)"
    )


def _agree_on_model(ctx: Context, spec: ModelSpec) -> None:
    """Step 1: worker 0 compares every worker's spec and tells each the verdict."""
    workers = ctx.workers
    me = workers.Get_rank()
    timeout = ctx.settings.start_timeout
    if me == 0:
        specs, missing = gather_at_root(workers, Tag.MODEL_CHECK, spec, timeout)
        if missing:
            message = (f"{', '.join(ctx.topology.name(r) for r in missing)} did not reach DistributedDCOptimizer "
                       f"within {timeout:g} s (set HVD_DC_START_TIMEOUT to wait longer)")
            for r in specs:
                if r != 0:
                    workers.send(ModelCheck(missing=message), dest=r, tag=Tag.MODEL_CHECK)
            for s in ctx.topology.server_ranks:
                ctx.world.send(Abort(message), dest=s, tag=Tag.CONTROL)
            raise HvdDcTimeout(f"hvd_dc worker 0: {message}")
        options = next((d for d in (diff_worker_options(spec, specs[r], r) for r in range(1, workers.Get_size()))
                        if d), None)
        difference = None
        for r in range(1, workers.Get_size() if options is None else 1):  # the lr scale follows the options
            difference = diff_specs(spec, specs[r], r)
            if difference:
                break
        for r in specs:
            if r != 0:
                workers.send(ModelCheck(difference=difference, options=options), dest=r, tag=Tag.MODEL_CHECK)
        if options and not difference:
            # as Horovod's ValueError: nothing was registered and the servers keep waiting, so
            # the job can go on (a corrected DistributedOptimizer call registers)
            raise ValueError(f"hvd_dc: the workers passed different DistributedOptimizer options: {options}")
        if difference:
            for s in ctx.topology.server_ranks:
                ctx.world.send(Abort(f"the workers' models differ: {difference}"), dest=s, tag=Tag.CONTROL)
    else:
        workers.send(spec, dest=0, tag=Tag.MODEL_CHECK)
        # worker 0 decides at start_timeout; wait longer so that its diagnosis arrives
        check: ModelCheck = recv(
            workers, 0, Tag.MODEL_CHECK, 2 * timeout,
            lambda: f"worker {me}: worker 0 (world rank {ctx.topology.world_rank(0)}) did not confirm the model within "
            f"{2 * timeout:g} s",
        )
        if check.missing:
            raise HvdDcTimeout(f"hvd_dc worker {me}: {check.missing}")
        difference = check.difference
        if check.options and not difference:
            raise ValueError(f"hvd_dc: the workers passed different DistributedOptimizer options: {check.options}")
    if difference:
        raise ValueError(f"hvd_dc: the workers' models differ: {difference}")


# -- server side --------------------------------------------------------------------------------

#: Builds a server's state for its chunks from the initial weights and its reply areas;
#: returns it and the Registration to send (the server loop supplies it).
MakeState = Callable[[torch.Tensor, List[List[torch.Tensor]]], Tuple[Any, Registration]]


def accept(ctx: Context, spec: ModelSpec, index: int, make_state: MakeState
           ) -> Optional[Tuple[ServerWindows, Any, ChunkPlan]]:
    """This server's half of steps 3-4 for model ``index``: allocate the windows with every
    rank, receive the initial weights, build the state of this server's chunks with
    ``make_state`` and tell every worker the outcome. Returns ``(windows, state, plan)``,
    or None when the model cannot be served (the workers then raise the error; the server
    goes on until they leave)."""
    world, topo = ctx.world, ctx.topology
    me = world.Get_rank()
    timeout = ctx.settings.start_timeout
    plan = ChunkPlan.for_spec(spec, topo.servers)
    wl = WindowLayout.for_server(spec, plan, me, topo.num_workers)
    shm_problem = check_shm(wl.total_nbytes)  # too small a /dev/shm: SIGBUS or a hang next
    if shm_problem:
        log.warning("model %d: %s", index, shm_problem)
    chunk_layouts = [chunk_spec(spec, c).layout() for c in wl.chunks]
    windows = ServerWindows(world, topo, wl, chunk_layouts, shm=ctx.settings.shm_windows)  # collective with every rank
    initial = torch.empty(plan.layout.nbytes, dtype=torch.uint8)
    first = topo.world_rank(0)
    req = world.Irecv([initial.numpy(), MPI.BYTE], source=first, tag=Tag.WEIGHTS)
    wait_request(
        req, timeout,
        lambda: f"parameter server (world rank {me}): worker 0 (world rank {first}) did not send the initial weights "
        f"within {timeout:g} s",
    )
    state = None
    try:
        state, registration = make_state(initial, windows.reply_weights)
    except Exception as exc:
        log.error("cannot serve model %d: %s", index, exc)
        registration = Registration(error=f"the parameter server cannot serve this model: {exc}")
    for r in topo.worker_ranks:
        world.send(registration, dest=r, tag=Tag.REGISTERED)
    if state is None:
        windows.free()
        return None
    return windows, state, plan

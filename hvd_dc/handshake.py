"""Start-up: how a model comes to be served, both halves in one place.

Worker side, :func:`join` (every worker calls it from ``DistributedDCOptimizer``):

1. **The workers agree on the model.** Each sends its ``ModelSpec`` to worker 0, which
   compares them (:func:`hvd_dc.layout.diff_specs`) and answers every worker with one
   :class:`~hvd_dc.protocol.ModelCheck`. A difference becomes the same ``ValueError`` on
   every worker and an :class:`~hvd_dc.protocol.Abort` to the server; a worker that does
   not arrive within ``start_timeout`` is named to all.
2. **Worker 0 registers it**: :class:`~hvd_dc.protocol.Register` to the server.
3. **Everyone allocates the windows** (collective with the server).
4. **Worker 0 sends the initial weights**; the server builds its state (or resumes from a
   checkpoint) and answers every worker with a :class:`~hvd_dc.protocol.Registration`.
5. **Each worker opens its epoch and reads its reply area**: the initial weights, which
   are its ``w_bak(m)``.

Server side, :func:`accept` (the server loop calls it on a ``Register``) does steps 3-4
from the other end. Every wait is bounded by ``start_timeout`` and names the rank that did
not answer.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from mpi4py import MPI

from .context import Context
from .host_checks import check_shm
from .layout import ModelSpec, diff_specs
from .protocol import (
    FIRST_WORKER_RANK,
    SERVER_RANK,
    Abort,
    ModelCheck,
    Register,
    Registration,
    ServerWindows,
    Tag,
    WindowLayout,
    WorkerChannel,
    world_rank,
)
from .waiting import HvdDcTimeout, recv, wait_request, wait_until

__all__ = ["join", "accept"]

log = logging.getLogger("hvd_dc.server")


# -- worker side --------------------------------------------------------------------------------


def join(ctx: Context, spec: ModelSpec, params: Sequence[torch.Tensor], pin_memory: bool = False
         ) -> Tuple[WorkerChannel, Registration]:
    """Register ``spec`` with the server; return this worker's open channel, whose reply
    area holds the initial weights, and the server's :class:`Registration`.

    ``params``: the model's parameters in ``spec.params`` order (worker 0 sends their
    values as the initial weights). Collective over every worker and the server.
    """
    _agree_on_model(ctx, spec)
    me = ctx.worker_rank
    timeout = ctx.settings.start_timeout
    if me == 0:
        ctx.world.send(Register(spec), dest=SERVER_RANK, tag=Tag.CONTROL)
    wl = WindowLayout.for_spec(spec, ctx.num_workers)
    channel = WorkerChannel(ctx.world, wl, me, ctx.settings.timeout, pin_memory=pin_memory)  # collective
    if me == 0:
        layout = wl.layout
        initial = torch.zeros(layout.nbytes, dtype=torch.uint8)
        with torch.no_grad():
            for view, p in zip(layout.param_views(initial), params):
                view.copy_(p.detach())
        req = ctx.world.Isend([initial.numpy(), layout.nbytes, MPI.BYTE], dest=SERVER_RANK, tag=Tag.WEIGHTS)
        wait_request(req, timeout, _server_silent(ctx, "receive the initial weights"))
    registration = recv(ctx.world, SERVER_RANK, Tag.REGISTERED, timeout, _server_silent(ctx, "register the model"))
    if not registration.ok:
        channel.free()
        raise RuntimeError(f"hvd_dc: {registration.error}")
    channel.open()
    return channel, registration


def _server_silent(ctx: Context, what: str) -> Callable[[], str]:
    return lambda: (
        f"worker {ctx.worker_rank}: the parameter server (world rank {SERVER_RANK}) did not {what} within "
        f"{ctx.settings.start_timeout:g} s (set HVD_DC_START_TIMEOUT to wait longer)"
    )


def _agree_on_model(ctx: Context, spec: ModelSpec) -> None:
    """Step 1: worker 0 compares every worker's spec and tells each the verdict."""
    workers = ctx.workers
    me = workers.Get_rank()
    timeout = ctx.settings.start_timeout
    if me == 0:
        specs: Dict[int, ModelSpec] = {0: spec}
        pending = {r: workers.irecv(source=r, tag=Tag.MODEL_CHECK) for r in range(1, workers.Get_size())}

        def all_arrived() -> bool:
            for r in list(pending):
                done, msg = pending[r].test()
                if done:
                    specs[r] = msg
                    del pending[r]
            return not pending

        def missing() -> str:
            names = ", ".join(f"worker {r} (world rank {world_rank(r)})" for r in sorted(pending))
            return (f"{names} did not reach DistributedDCOptimizer within {timeout:g} s "
                    "(set HVD_DC_START_TIMEOUT to wait longer)")

        try:
            wait_until(all_arrived, timeout, missing)
        except HvdDcTimeout as exc:
            for r in specs:
                if r != 0:
                    workers.send(ModelCheck(missing=str(exc)), dest=r, tag=Tag.MODEL_CHECK)
            ctx.world.send(Abort(str(exc)), dest=SERVER_RANK, tag=Tag.CONTROL)
            raise HvdDcTimeout(f"hvd_dc worker 0: {exc}") from None
        difference = None
        for r in range(1, workers.Get_size()):
            difference = diff_specs(spec, specs[r], r)
            if difference:
                break
        for r in specs:
            if r != 0:
                workers.send(ModelCheck(difference=difference), dest=r, tag=Tag.MODEL_CHECK)
        if difference:
            ctx.world.send(Abort(f"the workers' models differ: {difference}"), dest=SERVER_RANK, tag=Tag.CONTROL)
    else:
        workers.send(spec, dest=0, tag=Tag.MODEL_CHECK)
        # worker 0 decides at start_timeout; wait longer so that its diagnosis arrives
        check: ModelCheck = recv(
            workers, 0, Tag.MODEL_CHECK, 2 * timeout,
            lambda: f"worker {me}: worker 0 (world rank {FIRST_WORKER_RANK}) did not confirm the model within "
            f"{2 * timeout:g} s",
        )
        if check.missing:
            raise HvdDcTimeout(f"hvd_dc worker {me}: {check.missing}")
        difference = check.difference
    if difference:
        raise ValueError(f"hvd_dc: the workers' models differ: {difference}")


# -- server side --------------------------------------------------------------------------------

#: Builds the server's state for a model from the initial weights and the reply areas;
#: returns it and the Registration to send (the server loop supplies it).
MakeState = Callable[[torch.Tensor, List[torch.Tensor]], Tuple[Any, Registration]]


def accept(ctx: Context, spec: ModelSpec, index: int, make_state: MakeState) -> Optional[Tuple[ServerWindows, Any]]:
    """The server's half of steps 3-4 for model ``index``: allocate the windows with the
    workers, receive the initial weights, build the state with ``make_state`` and tell
    every worker the outcome. Returns ``(windows, state)``, or None when the model cannot
    be served (the workers then raise the error; the server goes on until they leave)."""
    world = ctx.world
    timeout = ctx.settings.start_timeout
    wl = WindowLayout.for_spec(spec, ctx.num_workers)
    shm_problem = check_shm(wl.total_nbytes)  # too small a /dev/shm: SIGBUS or a hang next
    if shm_problem:
        log.warning("model %d: %s", index, shm_problem)
    windows = ServerWindows(world, wl)  # collective with every worker
    initial = torch.empty(wl.layout.nbytes, dtype=torch.uint8)
    req = world.Irecv([initial.numpy(), MPI.BYTE], source=FIRST_WORKER_RANK, tag=Tag.WEIGHTS)
    wait_request(
        req, timeout,
        lambda: f"parameter server: worker 0 (world rank {FIRST_WORKER_RANK}) did not send the initial weights "
        f"within {timeout:g} s",
    )
    state = None
    try:
        state, registration = make_state(initial, windows.reply_weights)
    except Exception as exc:
        log.error("cannot serve model %d: %s", index, exc)
        registration = Registration(error=f"the parameter server cannot serve this model: {exc}")
    for r in range(FIRST_WORKER_RANK, world.Get_size()):
        world.send(registration, dest=r, tag=Tag.REGISTERED)
    if state is None:
        windows.free()
        return None
    return windows, state

"""Process roles and lifetime: ``init``, ``shutdown``, ranks and sizes.

This module owns the job's one :class:`Context`: the duplicated world communicator, the
role of this process (``"server"``, ``"worker"`` or ``"solo"`` in a world of one), the
workers' communicator, the node-local one, and the timeouts. ``init`` on world rank 0
runs the server loop (:mod:`hvd_dc.server`) and ends the process when every worker has
shut down, so user code after ``init()`` never runs there; on workers it returns, and
``size()``/``rank()`` count workers only, so Horovod samplers and lr scaling stay right.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from typing import List, Optional

from mpi4py import MPI

__all__ = [
    "Context",
    "init",
    "shutdown",
    "is_initialized",
    "size",
    "rank",
    "local_rank",
    "local_size",
    "context",
    "TAG_CONTROL",
    "TAG_WEIGHTS",
    "TAG_REGISTERED",
    "SERVER_RANK",
]

SERVER_RANK = 0
TAG_CONTROL = 7701  # worker -> server: ("register", spec) | ("bye",) | ("abort", reason)
TAG_WEIGHTS = 7702  # worker 0 -> server: initial weights, bytes
TAG_REGISTERED = 7703  # server -> workers: "ok" or an error message
TAG_ARRIVE = 7704  # workers -> worker 0: arrival before a setup collective
TAG_GO = 7705  # worker 0 -> workers: everyone arrived

log = logging.getLogger("hvd_dc")


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds; got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be > 0 seconds; got {raw!r}")
    return value


class Context:
    """Everything ``init`` set up for this process."""

    def __init__(self, world: MPI.Comm, timeout: float, start_timeout: float) -> None:
        self.world = world
        self.timeout = timeout
        self.start_timeout = start_timeout
        wsize = world.Get_size()
        wrank = world.Get_rank()
        if wsize == 1:
            self.role = "solo"
        elif wrank == SERVER_RANK:
            self.role = "server"
        else:
            self.role = "worker"
        color = 0 if self.role == "worker" else MPI.UNDEFINED
        workers = world.Split(color, key=wrank) if wsize > 1 else MPI.COMM_NULL
        if self.role == "solo":
            workers = world
        self.workers: MPI.Comm = workers
        if self.role == "server":
            self.local = MPI.COMM_NULL
        else:
            self.local = workers.Split_type(MPI.COMM_TYPE_SHARED, key=workers.Get_rank())
        self.engines: List[object] = []  # DCWorker objects, in registration order
        self.registration_failed = False
        self.server_lost = False  # a wait on the server timed out: shutdown cannot be collective
        self.shut_down = False

    @property
    def num_workers(self) -> int:
        return self.world.Get_size() - 1 if self.role != "solo" else 1


_ctx: Optional[Context] = None


def init(comm: Optional[MPI.Comm] = None, timeout: Optional[float] = None, start_timeout: Optional[float] = None) -> None:
    """Start hvd_dc. World rank 0 becomes the parameter server and never returns.

    ``comm``: the MPI communicator of the job (default ``MPI.COMM_WORLD``); Horovod's
    list-of-ranks form is not supported. ``timeout``: seconds any wait on another rank
    may take once training runs (default ``$HVD_DC_TIMEOUT`` or 300). ``start_timeout``:
    the same for start-up and registration, where ranks may still be loading data
    (default ``$HVD_DC_START_TIMEOUT`` or 600). Calling ``init`` twice is harmless.
    """
    global _ctx
    if comm is not None and not isinstance(comm, MPI.Comm):
        raise TypeError(
            f"hvd_dc.init(comm=...) takes an mpi4py communicator; got {type(comm).__name__} "
            "(Horovod's list-of-ranks form is not supported)"
        )
    if _ctx is not None and not _ctx.shut_down:
        return
    if _ctx is not None and _ctx.shut_down:
        raise RuntimeError("hvd_dc.init() after hvd_dc.shutdown(): a job initializes hvd_dc once")
    if comm is None:
        comm = MPI.COMM_WORLD
    if comm.Get_size() == 1:
        _refuse_accidental_singleton()
    timeout = _env_seconds("HVD_DC_TIMEOUT", 300.0) if timeout is None else float(timeout)
    start_timeout = _env_seconds("HVD_DC_START_TIMEOUT", 600.0) if start_timeout is None else float(start_timeout)
    if timeout <= 0 or start_timeout <= 0:
        raise ValueError("hvd_dc.init(): timeouts must be > 0 seconds")
    _ctx = Context(comm.Dup(), timeout, start_timeout)
    if _ctx.role == "server":
        from .server import ServerAbort, serve

        try:
            status = serve(_ctx)
        except ServerAbort as exc:
            abort_job(f"hvd_dc parameter server: {exc}")
        except BaseException as exc:
            # a dead server with live workers would hang them in MPI: end the whole job
            import traceback

            traceback.print_exc()
            abort_job(f"hvd_dc: the parameter server failed ({type(exc).__name__}: {exc}); aborting the job")
        _ctx.shut_down = True
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        sys.exit(status)
    atexit.register(_shutdown_at_exit)


def _refuse_accidental_singleton() -> None:
    """A launcher that started several tasks, each of which MPI sees as a world of one,
    would make every task train alone in silence: fail fast instead."""
    from .launch import check_world_size

    problem = check_world_size(1)
    if problem:
        raise RuntimeError(problem)


def context() -> Context:
    """The live context, or a clear error if ``init`` was not called or shutdown was."""
    if _ctx is None:
        raise RuntimeError("hvd_dc has not been initialized; call hvd_dc.init() first")
    if _ctx.shut_down:
        raise RuntimeError("hvd_dc has been shut down; no hvd_dc call is possible after hvd_dc.shutdown()")
    return _ctx


def is_initialized() -> bool:
    """True between ``init()`` and ``shutdown()``."""
    return _ctx is not None and not _ctx.shut_down


def size() -> int:
    """Number of workers (world size minus the server); 1 in a world of one."""
    return context().workers.Get_size()


def rank() -> int:
    """This worker's index, 0..size()-1 (world rank minus one)."""
    return context().workers.Get_rank()


def local_rank() -> int:
    """This worker's index among the workers on its node."""
    return context().local.Get_rank()


def local_size() -> int:
    """Number of workers on this node."""
    return context().local.Get_size()


def shutdown() -> None:
    """Tell the server this worker is done and release hvd_dc's MPI resources.

    Blocks until every worker has shut down (the windows are freed collectively), so
    a worker that finishes early waits here while the others train. Also runs at
    interpreter exit; calling it twice is harmless.
    """
    ctx = _ctx
    if ctx is None or ctx.shut_down:
        return
    ctx.shut_down = True
    if ctx.role == "worker" and ctx.server_lost:
        abort_job(
            f"hvd_dc worker {ctx.workers.Get_rank()}: the parameter server (world rank {SERVER_RANK}) stopped "
            "answering; ending the job"
        )
    if ctx.role == "worker":
        ctx.world.send(("bye",), dest=SERVER_RANK, tag=TAG_CONTROL)
        for engine in ctx.engines:
            engine._close()  # type: ignore[attr-defined]
    ctx.engines.clear()


def abort_job(message: str) -> None:
    """Print ``message`` and end every rank of the job (MPI_Abort), then this process."""
    print(message, file=sys.stderr, flush=True)
    sys.stdout.flush()
    try:
        (_ctx.world if _ctx is not None else MPI.COMM_WORLD).Abort(1)
    finally:
        os._exit(1)  # MPI_Abort may return before the launcher has killed this rank


def _shutdown_at_exit() -> None:
    try:
        shutdown()
    except Exception as exc:  # interpreter exit: report, never raise
        print(f"hvd_dc: shutdown at exit failed: {exc}", file=sys.stderr)

"""Process roles and lifetime: ``init``, ``shutdown``, ranks and sizes.

``init`` reads the settings once (:class:`~hvd_dc.settings.Settings`), creates the job's
:class:`~hvd_dc.context.Context` and, on world rank 0, runs the server loop
(:mod:`hvd_dc.server`) and ends the process when every worker has shut down, so user code
after ``init()`` never runs there. On workers it returns, and ``size()``/``rank()`` count
workers only, so Horovod samplers and lr scaling stay right.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import traceback
from typing import Any, Optional

from mpi4py import MPI

from . import context as _context
from . import roll_call
from .collectives import add_process_set
from .context import Context
from .fault_injection import arm as _arm_fault
from .handshake import agree_on_settings
from .host_checks import check_world_size
from .negotiation import attach as _attach_collectives
from .negotiation import finish_data_phases
from .protocol import Goodbye, Tag
from .server import ServerAbort, serve
from .settings import Settings

__all__ = ["init", "shutdown", "is_initialized", "size", "rank", "local_rank", "local_size", "abort_job"]


def init(comm: Optional[MPI.Comm] = None, timeout: Optional[float] = None, start_timeout: Optional[float] = None,
         servers: Optional[int] = None, process_sets: Any = None) -> None:
    """Start hvd_dc. World ranks ``0 .. servers-1`` become parameter servers and never return.

    ``comm``: the MPI communicator of the job (default ``MPI.COMM_WORLD``); Horovod's
    list-of-ranks form is not supported. ``timeout``: seconds any wait on another rank
    may take once training runs (default ``$HVD_DC_TIMEOUT`` or 300). ``start_timeout``:
    the same for start-up and registration, where ranks may still be loading data
    (default ``$HVD_DC_START_TIMEOUT`` or 600). ``servers``: how many ranks serve the
    model's chunks (default ``$HVD_DC_SERVERS`` or 1; every rank must pass the same; see
    README "Scaling out"). Every other setting comes from the
    ``HVD_DC_*`` environment variables, read here once (:mod:`hvd_dc.settings`). Calling
    ``init`` twice is harmless.

    ``process_sets``: Horovod's keyword: a list of :class:`~hvd_dc.ProcessSet` (or rank
    lists) that every worker adds right after starting, as :func:`hvd_dc.add_process_set`
    would; ``"dynamic"`` (Horovod's switch for adding sets later) is accepted and changes
    nothing, since hvd_dc's sets can always be added later.
    """
    if not (process_sets is None or process_sets == "dynamic" or isinstance(process_sets, (list, tuple))):
        raise ValueError(f"hvd_dc.init(process_sets=...) takes a list of ProcessSet objects or 'dynamic'; got "
                         f"{process_sets!r}")
    if comm is not None and not isinstance(comm, MPI.Comm):
        raise TypeError(
            f"hvd_dc.init(comm=...) takes an mpi4py communicator; got {type(comm).__name__} "
            "(Horovod's list-of-ranks form is not supported)"
        )
    existing = _context.peek()
    if existing is not None:
        if existing.shut_down:
            raise RuntimeError("hvd_dc.init() after hvd_dc.shutdown(): a job initializes hvd_dc once")
        return
    settings = Settings.from_environ()
    for name, value in (("timeout", timeout), ("start_timeout", start_timeout)):
        if value is not None:
            if not float(value) > 0:
                raise ValueError("hvd_dc.init(): timeouts must be > 0 seconds")
            settings = settings.replace(**{name: float(value)})
    if servers is not None:
        if isinstance(servers, bool) or not isinstance(servers, int) or servers < 1:
            raise ValueError(f"hvd_dc.init(servers=...) must be an int >= 1; got {servers!r}")
        settings = settings.replace(servers=servers)
    _configure_logging(settings.log_level)
    if comm is None:
        comm = MPI.COMM_WORLD
    _arm_fault(settings.fault, comm.Get_rank())
    if comm.Get_size() == 1 and not settings.allow_singleton:
        problem = check_world_size(1, os.environ)
        if problem:
            raise RuntimeError(problem)
    world = comm.Dup()
    if world.Get_size() > 1:
        agree_on_settings(world, settings)
    ctx = Context(world, settings)
    _context.install(ctx)
    if settings.ranks_dir:
        topo = ctx.topology
        role = (f"parameter server {world.Get_rank() + 1} of {topo.servers}" if ctx.role == "server"
                else f"worker {ctx.worker_rank}" if ctx.role == "worker" else "solo")
        roll_call.record(settings.ranks_dir, world.Get_rank(), role)
    if ctx.role == "server":
        _run_server(ctx)  # never returns
    _attach_collectives(ctx)  # the workers' collectives: collective over the workers, like the splits above
    atexit.register(_shutdown_at_exit)
    if isinstance(process_sets, (list, tuple)):
        for process_set in process_sets:
            add_process_set(process_set)


_HARNESS_NOTICE = (
    "hvd_dc: this process (world rank {rank}) is the parameter server{which}: hvd_dc.init() does not return "
    "here; it serves until every worker has shut down, then ends the process. Under a test harness, launch each "
    "test with mpiexec (one job per test) or call hvd_dc.run(fn, np=workers) from the harness (docs/HOROVOD.md, "
    "'Test harnesses and hvd_dc.run')."
)


def _run_server(ctx: Context) -> None:
    if "pytest" in sys.modules:
        # a harness ran init() on rank 0: say why this test will not come back, instead of
        # leaving only the harness's own timeout ("Killed (signal 9)") to see
        rank, servers = ctx.world.Get_rank(), ctx.topology.servers
        which = f" ({rank + 1} of {servers})" if servers > 1 else ""
        print(_HARNESS_NOTICE.format(rank=rank, which=which), file=sys.stderr, flush=True)
    try:
        status = serve(ctx)
    except ServerAbort as exc:
        abort_job(f"hvd_dc parameter server: {exc}")
    except BaseException as exc:
        # a dead server with live workers would hang them in MPI: end the whole job
        traceback.print_exc()
        abort_job(f"hvd_dc: the parameter server failed ({type(exc).__name__}: {exc}); aborting the job")
    ctx.shut_down = True
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(status)


def _configure_logging(level: str) -> None:
    """Send hvd_dc's log records to stderr at ``level`` (``HVD_DC_LOG_LEVEL``), unless the
    application configured logging itself."""
    logger = logging.getLogger("hvd_dc")
    logger.setLevel(level)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("hvd_dc %(name)s %(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False


def is_initialized() -> bool:
    """True between ``init()`` and ``shutdown()``."""
    ctx = _context.peek()
    return ctx is not None and not ctx.shut_down


def size() -> int:
    """Number of workers (world size minus the server); 1 in a world of one."""
    return _context.current().workers.Get_size()


def rank() -> int:
    """This worker's index, 0..size()-1 (world rank minus one)."""
    return _context.current().workers.Get_rank()


def local_rank() -> int:
    """This worker's index among the workers on its node."""
    return _context.current().local.Get_rank()


def local_size() -> int:
    """Number of workers on this node."""
    return _context.current().local.Get_size()


def shutdown() -> None:
    """Tell the server this worker is done and release hvd_dc's MPI resources.

    Blocks until every worker has shut down (the windows are freed collectively), so
    a worker that finishes early waits here while the others train. Also runs at
    interpreter exit; calling it twice is harmless.
    """
    ctx = _context.peek()
    if ctx is None or ctx.shut_down:
        return
    ctx.shut_down = True
    if ctx.role != "worker":
        ctx.served.clear()
        return
    if ctx.server_lost:
        abort_job(f"hvd_dc worker {ctx.worker_rank}: a parameter server stopped answering; ending the job")
    finish_data_phases(ctx.settings.timeout)
    for s in ctx.topology.server_ranks:
        ctx.world.send(Goodbye(), dest=s, tag=Tag.CONTROL)
    for served in ctx.served:
        served.close()  # type: ignore[attr-defined]
    ctx.served.clear()


def abort_job(message: str) -> None:
    """Print ``message`` and end every rank of the job (MPI_Abort), then this process."""
    print(message, file=sys.stderr, flush=True)
    sys.stdout.flush()
    ctx = _context.peek()
    try:
        (ctx.world if ctx is not None else MPI.COMM_WORLD).Abort(1)
    finally:
        os._exit(1)  # MPI_Abort may return before the launcher has killed this rank


def _shutdown_at_exit() -> None:
    try:
        shutdown()
    except Exception as exc:  # interpreter exit: report, never raise
        print(f"hvd_dc: shutdown at exit failed: {exc}", file=sys.stderr)

"""The job's one :class:`Context`: what ``hvd_dc.init()`` set up for this process.

It holds the duplicated world communicator, the :class:`~hvd_dc.protocol.Topology`
(which ranks serve), this process's role (``"server"``, ``"worker"`` or ``"solo"`` in a
world of one), the workers' communicator and the node-local one, the
:class:`~hvd_dc.settings.Settings` read at ``init``, and the workers' served models. Every module that needs one of these takes it from :func:`current`; only
:mod:`hvd_dc.runtime` creates and ends the context. This module imports no other part of
hvd_dc but the settings and the protocol's types, so anything may import it.
"""

from __future__ import annotations

from typing import List, Optional

from mpi4py import MPI

from .protocol import Topology
from .settings import Settings

__all__ = ["Context", "current", "install", "peek"]


class Context:
    """Everything ``init`` set up for this process."""

    def __init__(self, world: MPI.Comm, settings: Settings) -> None:
        self.world = world
        self.settings = settings
        wsize = world.Get_size()
        wrank = world.Get_rank()
        self.topology = Topology(settings.servers if wsize > 1 else 0, wsize)
        if wsize == 1:
            self.role = "solo"
        elif wrank < self.topology.servers:
            self.role = "server"
        else:
            self.role = "worker"
        if self.role == "solo":
            self.workers: MPI.Comm = world
        else:
            self.workers = world.Split(0 if self.role == "worker" else MPI.UNDEFINED, key=wrank)
        self.local = MPI.COMM_NULL if self.role == "server" else self.workers.Split_type(
            MPI.COMM_TYPE_SHARED, key=self.workers.Get_rank())
        #: the workers' served models (``DCWorker``), in registration order
        self.served: List[object] = []
        #: a wait on the server timed out: shutdown cannot be collective with it
        self.server_lost = False
        self.shut_down = False

    @property
    def num_workers(self) -> int:
        return self.topology.num_workers

    @property
    def worker_rank(self) -> int:
        return self.workers.Get_rank()


_ctx: Optional[Context] = None


def install(ctx: Context) -> None:
    """Make ``ctx`` the process's context (``hvd_dc.init`` only)."""
    global _ctx
    _ctx = ctx


def peek() -> Optional[Context]:
    """The context if ``init`` ran (shut down or not), else None."""
    return _ctx


def current() -> Context:
    """The live context, or a clear error if ``init`` was not called or shutdown was."""
    if _ctx is None:
        raise RuntimeError("hvd_dc has not been initialized; call hvd_dc.init() first")
    if _ctx.shut_down:
        raise RuntimeError("hvd_dc has been shut down; no hvd_dc call is possible after hvd_dc.shutdown()")
    return _ctx

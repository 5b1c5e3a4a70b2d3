"""Interoperation with Horovod: the workers' communicator and Horovod's initialisation.

:func:`worker_comm` gives the workers' mpi4py communicator for ``hvd.init(comm=...)``;
:func:`init_horovod` does ``hvd_dc.init()`` then that ``hvd.init``. Importing
:mod:`hvd_dc.horovod` calls :func:`init_horovod` (see that module for the two-line port).
hvd_dc itself never imports Horovod outside :func:`init_horovod`.
"""

from __future__ import annotations

from mpi4py import MPI

from .context import current as context
from .runtime import init as _hvd_dc_init

__all__ = ["init_horovod", "worker_comm"]

_horovod_comm = None  # keeps the communicator handed to Horovod alive


def worker_comm() -> MPI.Comm:
    """A duplicate of the workers' mpi4py communicator (world rank 0, the server, is not in
    it); in a world of one, of the world. Pass it to ``horovod.torch.init(comm=...)``."""
    return context().workers.Dup()


def init_horovod() -> None:
    """Start hvd_dc, then initialise Horovod on the workers' communicator.

    On world rank 0 this never returns (the parameter server runs). Raises
    ``RuntimeError`` if Horovod was already initialised: it would then span the server,
    which takes part in no Horovod collective, and the job would hang.
    """
    global _horovod_comm
    import horovod.torch as hvd  # imported here: hvd_dc itself does not depend on Horovod

    if _horovod_comm is not None:
        return
    already = False
    try:
        hvd.size()
        already = True
    except ValueError:  # "Horovod has not been initialized; use hvd.init()."
        pass
    if already:
        raise RuntimeError(
            "horovod was initialised before hvd_dc: put 'import hvd_dc.horovod' before hvd.init(), so that "
            "world rank 0 becomes the parameter server and Horovod spans the workers only"
        )
    _hvd_dc_init()
    _horovod_comm = worker_comm()
    hvd.init(comm=_horovod_comm)


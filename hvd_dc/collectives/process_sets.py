"""Process sets (Horovod's): groups of workers whose collectives run among themselves.

A process set is a sorted list of worker ranks (``hvd.rank()``) with its own MPI
communicator, made from a group of the workers' communicator, and its own
:class:`~hvd_dc.negotiation.Engine`: its collectives are matched and checked among its
members only (a mismatch is an error on its members) and their data moves on its
communicator, so collectives of different sets never wait for one another.

* :data:`global_process_set` (id 0) is every worker; it exists from ``init``.
* :func:`add_process_set` is a collective of **every** worker (as in Horovod with
  ``HOROVOD_DYNAMIC_PROCESS_SETS=1``; in hvd_dc sets are always dynamic): the workers
  agree on the ranks first (different ranks on two workers are an error on every
  worker), then the members build the set's communicator. Adding a set with the ranks of
  an existing one (the global set included) is a ``ValueError``, as in Horovod. Ids are
  1, 2, 3, ... in the order sets were added, never reused.
* :func:`remove_process_set` is a collective of every worker too: the members first
  complete the set's outstanding collectives, then free its communicator; the object is
  invalidated (``process_set_id`` becomes None). It returns False for the global set and
  for a set that was never added, as Horovod does.
* :func:`resolve` is the one check of a ``process_set=`` argument, used by every
  collective: it returns the set's engine, or raises :class:`ProcessSetError` when the set
  was not added (or was removed) or this worker is not a member (Horovod raises
  ``HorovodInternalError`` there: ``ProcessSetError`` is one, and a ``ValueError`` too).

Ranks are always worker ranks: ``root_rank`` of a broadcast in a set is the root's
``hvd.rank()`` (it must be a member), as in Horovod; ``ProcessSet.rank()`` is the rank
within the set. ``hvd.init(process_sets=...)`` (Horovod's static sets) is not taken: add
sets after ``init``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
from mpi4py import MPI

from ..context import current as context
from ..negotiation import Engine, engine, register, unregister
from ..waiting import HorovodInternalError
from .handles import drain, submit, synchronize

__all__ = ["ProcessSet", "global_process_set", "add_process_set", "remove_process_set", "resolve",
           "ProcessSetError", "is_global"]


class ProcessSetError(HorovodInternalError, ValueError):
    """A collective was given a process set this worker cannot use: one that was never
    added (or was removed), or one this worker is not a member of. A
    ``HorovodInternalError`` (what Horovod raises) and a ``ValueError`` (an argument
    error, raised before anything is sent)."""


class ProcessSet:
    """Horovod's process set: a set of workers that run collectives together.

    ``ProcessSet(ranks)`` takes worker ranks (``hvd.rank()`` values); pass it (or the
    ranks) to :func:`add_process_set`, which registers it and returns it with its
    ``process_set_id``. ``ProcessSet(comm)`` (an mpi4py communicator) is accepted as in
    Horovod but cannot be added: :func:`add_process_set` raises ``NotImplementedError``,
    as Horovod's does."""

    process_set_id: Optional[int] = None
    ranks: Optional[List[int]] = None
    mpi_comm: Any = None
    _engine: Optional[Engine] = None

    def __init__(self, ranks_or_comm: Union[Sequence[int], MPI.Comm]) -> None:
        if isinstance(ranks_or_comm, MPI.Comm):
            self.mpi_comm = ranks_or_comm
            return
        try:
            ranks = sorted(ranks_or_comm)
        except TypeError:
            raise ValueError("ProcessSet should be initialized with a list of process ranks or an mpi4py Comm "
                             f"object; got {ranks_or_comm!r}") from None
        if any(isinstance(r, bool) or not isinstance(r, (int, np.integer)) for r in ranks):
            raise ValueError("ProcessSet should be initialized with a list of process ranks or an mpi4py Comm "
                             f"object; got {ranks_or_comm!r}")
        self.ranks = [int(r) for r in ranks]

    def _invalidate(self) -> None:
        self.process_set_id = None
        self._engine = None

    def size(self) -> Optional[int]:
        """Number of workers in the set, or None if it has not been added."""
        if self.process_set_id is None or self.ranks is None:
            return None
        return len(self.ranks)

    def rank(self) -> Optional[int]:
        """This worker's rank within the set (its index in ``ranks``), or None if the set
        has not been added. ``ValueError`` if this worker is not a member, as in Horovod."""
        if self.process_set_id is None or self.ranks is None:
            return None
        me = context().workers.Get_rank()
        if me not in self.ranks:
            raise ValueError("Process is not part of provided process set.")
        return self.ranks.index(me)

    def included(self) -> Optional[bool]:
        """Whether this worker is a member, or None if the set has no ranks yet."""
        if self.ranks is None:
            return None
        return context().workers.Get_rank() in self.ranks

    def __str__(self) -> str:
        return f"ProcessSet(process_set_id={self.process_set_id}, ranks={self.ranks}, mpi_comm={self.mpi_comm})"

    __repr__ = __str__


class _GlobalProcessSet(ProcessSet):
    """Every worker; id 0. Its ranks are known once ``init`` has run."""

    def __init__(self) -> None:
        self.process_set_id = 0

    @property  # type: ignore[override]
    def ranks(self) -> Optional[List[int]]:  # type: ignore[override]
        try:
            return list(range(context().workers.Get_size()))
        except RuntimeError:  # not initialized: unknown, as in Horovod before init
            return None

    @ranks.setter
    def ranks(self, value: Any) -> None:
        pass  # Horovod assigns the global set's ranks at init; here they always follow the workers

    def _invalidate(self) -> None:
        pass  # the global set cannot be removed


#: every worker (Horovod's ``hvd.global_process_set``)
global_process_set: ProcessSet = _GlobalProcessSet()

_sets: Dict[int, ProcessSet] = {}
_next_id = 1
_owner: Any = None


def _table() -> Dict[int, ProcessSet]:
    """The added sets of this job (a new ``init`` starts an empty table)."""
    global _owner, _next_id
    ctx = context()
    if _owner is not ctx:
        _sets.clear()
        _next_id = 1
        _owner = ctx
    return _sets


def is_global(process_set: Any) -> bool:
    """Whether ``process_set`` means every worker: None, hvd_dc's global set, or any set
    object with id 0 (Horovod's own ``global_process_set``, for scripts that mix both)."""
    return process_set is None or process_set is global_process_set or (
        getattr(process_set, "process_set_id", None) == 0)


def resolve(process_set: Any, what: str = "collective") -> Engine:
    """The engine of ``process_set`` for a collective this worker is about to run in it;
    :class:`ProcessSetError` if the set is not registered or this worker is not a member."""
    if is_global(process_set):
        return engine(context())
    if not isinstance(process_set, ProcessSet):
        raise ProcessSetError(f"hvd_dc.{what}: process_set must be a hvd_dc.ProcessSet (from "
                              f"hvd_dc.add_process_set) or hvd_dc.global_process_set; got {process_set!r}")
    table = _table()
    if process_set.process_set_id is None or table.get(process_set.process_set_id) is not process_set:
        raise ProcessSetError(f"hvd_dc.{what}: {process_set} does not exist, or has not been registered; add it "
                              "with hvd_dc.add_process_set first")
    eng = process_set._engine
    if eng is None:
        me = context().workers.Get_rank()
        raise ProcessSetError(f"hvd_dc.{what}: worker {me} is not a member of the provided process set "
                              f"{process_set.ranks}")
    return eng


def add_process_set(process_set: Union[ProcessSet, Sequence[int]]) -> ProcessSet:
    """Add a process set after ``init`` and return it with its ``process_set_id``. Every
    worker must call it with the same ranks (a collective of all workers; a difference
    is an error on every worker). ``ValueError`` for ranks that are not worker ranks, for
    an empty set, and for a set with the ranks of one that exists (the global set
    included), as in Horovod."""
    if not isinstance(process_set, ProcessSet):
        process_set = ProcessSet(process_set)
    if process_set.ranks is None and process_set.mpi_comm is not None:
        raise NotImplementedError("Dynamically adding process sets defined by an MPI communicator is not implemented. "
                                  "Please build the process set via a list of ranks.")
    ctx = context()
    table = _table()
    n = ctx.workers.Get_size()
    ranks = list(process_set.ranks or [])
    if not ranks:
        raise ValueError("hvd_dc.add_process_set: a process set needs at least one worker rank")
    bad = [r for r in ranks if not 0 <= r < n]
    if bad or len(set(ranks)) != len(ranks):
        raise ValueError(f"hvd_dc.add_process_set: ranks must be distinct worker ranks in 0..{n - 1} (hvd.rank() "
                         f"values; the server is not one); got {ranks}")
    glob = engine(context())
    # the workers agree on the ranks before any of them builds a communicator
    synchronize(submit(glob, "add_process_set", None, [], lambda v: [], lambda v: None, extra=tuple(ranks)))
    existing = [ps for ps in table.values() if ps.ranks == ranks]
    if ranks == list(range(n)) or existing:
        raise ValueError(f"Attempted to add a duplicate process set: {process_set} has the ranks of "
                         f"{existing[0] if existing else global_process_set}")
    global _next_id
    set_id = _next_id
    _next_id += 1
    me = ctx.workers.Get_rank()
    where = f" in process set {set_id} {ranks}"
    if me in ranks:
        # a blocking MPI call, but not an unbounded wait: every member holds the same verdict
        # and reaches this line without running any user code in between (MPI has no
        # non-blocking form); only the members take part
        comm = ctx.workers.Create_group(ctx.workers.Get_group().Incl(ranks), tag=set_id)
        eng = Engine(comm, glob.timeout, members=ranks, servers=glob.servers, where=where)
        register(eng)
        process_set._engine = eng
    else:
        process_set._engine = None
    process_set.ranks = ranks
    process_set.process_set_id = set_id
    table[set_id] = process_set
    return process_set


def remove_process_set(process_set: ProcessSet) -> bool:
    """Remove a process set added with :func:`add_process_set` (a collective of every
    worker); its members first complete its outstanding collectives. Returns True if it
    was removed; False, doing nothing, for the global set and for a set that was never
    added or was already removed, as in Horovod."""
    if not isinstance(process_set, ProcessSet):
        raise ValueError(f"hvd_dc.remove_process_set takes a ProcessSet; got {process_set!r}")
    if is_global(process_set) or process_set.process_set_id is None:
        return False
    table = _table()
    set_id = process_set.process_set_id
    if table.get(set_id) is not process_set:
        process_set._invalidate()
        return False
    eng = process_set._engine
    if eng is not None:
        drain(eng)
    synchronize(submit(engine(context()), "remove_process_set", None, [], lambda v: [], lambda v: None,
                       extra=set_id))
    del table[set_id]
    if eng is not None:
        unregister(eng)
    process_set._invalidate()
    return True

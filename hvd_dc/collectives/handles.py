"""Asynchronous handles, written once for every collective: submit, ``poll``, ``synchronize``.

A collective is submitted to the engine of its process set
(:class:`hvd_dc.negotiation.Engine`) and gets a handle. Every wait here keeps *every*
live engine moving (:func:`progress_all`), because this worker may coordinate another
set, or owe another set the start of a data phase, while it waits on this one; there is
no background thread (the one-sided windows' locks and progress stay on the main thread).
Each wait is bounded by the set's timeout: the engine reports a long wait to the set's
coordinator, decides or withdraws at the deadline, and gives up after the grace period
(:meth:`~hvd_dc.negotiation.Engine.tend`).

A name is reserved on its set from submission until its handle is synchronized, so two
outstanding collectives with the same name raise at once, as in Horovod.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from mpi4py import MPI

from ..negotiation import Engine, Operation, Verdict, engines
from ..waiting import Backoff
from .ops import ReduceOp, info

__all__ = ["submit", "poll", "synchronize", "progress_all", "wait", "drain"]

_handles: Dict[int, Tuple[Engine, Operation]] = {}
_numbers = itertools.count(1)


def progress_all() -> None:
    """Move every live engine along without blocking."""
    for eng in engines():
        eng.progress()


def submit(eng: Engine, kind: str, name: Optional[str], tensors: Sequence[torch.Tensor],
           start: Callable[[Verdict], List[MPI.Request]], finish: Callable[[Verdict], Any],
           op: Optional[ReduceOp] = None, root: Optional[int] = None, extra: Any = None) -> int:
    """Submit one collective to ``eng`` and return its handle. Argument errors are raised
    here, before anything is sent."""
    eng.check_usable()
    if name is not None:
        if not isinstance(name, str):
            raise ValueError(f"name must be a string; got {name!r}")
        if name in eng.names_in_flight:
            raise ValueError(f"hvd_dc.{kind}: a collective named {name!r} is already in flight on this worker"
                             f"{eng.where}; synchronize it before submitting another with the same name")
    operation = Operation(start, finish)
    eng.submit(operation, kind, name, tuple(info(t) for t in tensors), None if op is None else op.value, root,
               extra)
    handle = next(_numbers)
    _handles[handle] = (eng, operation)
    if name is not None:
        eng.names_in_flight.add(name)
    progress_all()
    return handle


def wait(eng: Engine, operation: Operation) -> None:
    """Until ``operation`` is done (its error, if any, stays in it). Bounded: see the
    module docstring."""
    since = time.monotonic()
    deadline = since + eng.timeout
    backoff = Backoff()
    try:
        while not operation.done:
            progress_all()
            if operation.done:
                break
            eng.tend(operation, since, deadline, time.monotonic())
            backoff.wait()
    finally:
        eng.stop_waiting(operation)


def poll(handle: int) -> bool:
    """True once the asynchronous collective ``handle`` has completed (then
    :func:`synchronize` returns at once). Never blocks."""
    entry = _handles.get(handle)
    if entry is None:
        raise ValueError(f"unknown or already synchronized handle {handle!r}")
    progress_all()
    return entry[1].done


def synchronize(handle: int) -> Any:
    """Wait for the asynchronous collective ``handle`` and return its result (a tensor, or
    a tuple for ``alltoall`` with splits). Raises what the collective raised:
    ``HvdDcTimeout`` naming the worker that did not arrive, ``CollectiveMismatch`` naming
    the difference (both ``HorovodInternalError``, a ``RuntimeError``).

    A handle of :func:`hvd_dc.sparse_allreduce_async` is a function, as in Horovod:
    ``synchronize`` calls it."""
    if callable(handle):
        return handle()
    entry = _handles.get(handle)
    if entry is None:
        raise ValueError(f"unknown or already synchronized handle {handle!r}")
    eng, operation = entry
    try:
        wait(eng, operation)
    finally:
        if operation.done:
            _release(handle)
    if operation.error is not None:
        raise operation.error
    return operation.result


def _release(handle: int) -> None:
    eng, operation = _handles.pop(handle)
    if operation.desc is not None and operation.desc.name is not None:
        eng.names_in_flight.discard(operation.desc.name)


def drain(eng: Engine) -> None:
    """Complete every collective this worker submitted to ``eng`` (their results and
    errors stay with their handles). Each wait is bounded."""
    for operation in list(eng.pending.values()) + list(eng.running):
        wait(eng, operation)

"""Bounded waiting: every wait of hvd_dc on another rank goes through :func:`wait_until`.

So no wait is unbounded, and every timeout raises :class:`HvdDcTimeout` with a message,
built by the caller, that names the rank that did not answer. :func:`wait_request` and
:func:`recv` are the two MPI forms (a non-blocking request; a pickled message).

Polling backs off (:class:`Backoff`): it spins briefly, then sleeps with growing pauses,
because ranks often outnumber cores (a laptop, a CI box) and a busy-polling rank steals
the core that the rank it waits for needs to compute what is being waited for.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from mpi4py import MPI

__all__ = ["HorovodInternalError", "HvdDcTimeout", "Backoff", "wait_until", "wait_request", "recv", "gather_at_root"]


class HorovodInternalError(RuntimeError):
    """A collective or exchange among hvd_dc's ranks failed (Horovod's name for it).

    Horovod scripts catch ``hvd.HorovodInternalError`` (or ``RuntimeError``) around
    collectives; every hvd_dc error of that kind derives from it."""


class HvdDcTimeout(HorovodInternalError):
    """A rank did not answer within the configured timeout.

    A ``RuntimeError`` (through :class:`HorovodInternalError`), as Horovod's errors are, so
    that ``except RuntimeError`` and ``except hvd.HorovodInternalError`` catch it. (It
    cannot also be a ``TimeoutError``: Python refuses a class with both bases.)"""


class Backoff:
    """Spin ``spins`` times, then sleep from ``first`` doubling up to ``cap`` seconds."""

    def __init__(self, spins: int = 50, first: float = 20e-6, cap: float = 1e-3) -> None:
        self.spins = spins
        self.first = first
        self.cap = cap
        self.reset()

    def reset(self) -> None:
        self._count = 0
        self._pause = self.first

    def wait(self) -> None:
        self._count += 1
        if self._count <= self.spins:
            return
        time.sleep(self._pause)
        self._pause = min(self._pause * 2, self.cap)


def wait_until(ready: Callable[[], bool], timeout: Optional[float], describe: Callable[[], str]) -> None:
    """Poll ``ready()`` with back-off until it is true; after ``timeout`` seconds (None:
    never) raise :class:`HvdDcTimeout` with ``describe()``, which names the rank."""
    if ready():
        return
    end = None if timeout is None else time.monotonic() + timeout
    backoff = Backoff()
    while not ready():
        if end is not None and time.monotonic() >= end:
            raise HvdDcTimeout(describe())
        backoff.wait()


def wait_request(request: MPI.Request, timeout: Optional[float], describe: Callable[[], str]) -> None:
    """Complete a non-blocking MPI request, or time out with ``describe()``."""
    wait_until(request.Test, timeout, describe)


def recv(comm: MPI.Comm, source: int, tag: int, timeout: Optional[float], describe: Callable[[], str]) -> Any:
    """Receive one pickled message from ``source`` with ``tag``, or time out with ``describe()``."""
    wait_until(lambda: comm.Iprobe(source=source, tag=tag), timeout, describe)
    return comm.recv(source=source, tag=tag)


def gather_at_root(comm: MPI.Comm, tag: int, mine: Any, timeout: Optional[float]) -> Tuple[Dict[int, Any], List[int]]:
    """Rank 0 of ``comm`` receives one pickled message from every other rank; returns the
    messages by rank (its own ``mine`` as rank 0's) and the ranks that did not send within
    ``timeout`` (the caller names them). Other ranks call ``comm.send(mine, 0, tag)``."""
    got: Dict[int, Any] = {0: mine}
    pending = {r: comm.irecv(source=r, tag=tag) for r in range(1, comm.Get_size())}

    def all_arrived() -> bool:
        for r in list(pending):
            done, msg = pending[r].test()
            if done:
                got[r] = msg
                del pending[r]
        return not pending

    try:
        wait_until(all_arrived, timeout, lambda: "")
    except HvdDcTimeout:
        pass
    return got, sorted(pending)

"""Bounded waiting: deadlines and polite polling back-off (no MPI).

Every wait on another rank in hvd_dc goes through :class:`Deadline`, so that no wait is
unbounded and every timeout raises :class:`HvdDcTimeout` with a message naming the rank
that did not answer. :class:`Backoff` spins briefly and then sleeps with growing pauses,
because ranks usually outnumber cores on a laptop or CI box and a busy-polling rank
steals the core a worker needs to compute the gradient being waited for.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

__all__ = ["HvdDcTimeout", "Deadline", "Backoff", "wait_until"]


class HvdDcTimeout(TimeoutError):
    """A rank did not answer within the configured timeout."""


class Deadline:
    def __init__(self, seconds: Optional[float]) -> None:
        self.seconds = seconds
        self._end = None if seconds is None else time.monotonic() + seconds

    def expired(self) -> bool:
        return self._end is not None and time.monotonic() >= self._end


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
    """Poll ``ready()`` with back-off until it is true or ``timeout`` seconds pass.

    On timeout raise :class:`HvdDcTimeout` with ``describe()`` (which names the rank).
    """
    deadline = Deadline(timeout)
    backoff = Backoff()
    while not ready():
        if deadline.expired():
            raise HvdDcTimeout(describe())
        backoff.wait()

"""Fault injection for the reliability tests: kill or stall the server at a chosen point.

Set ``HVD_DC_FAULT=<point>:<n>`` to make a server misbehave the ``n``-th time it
reaches ``<point>`` (counted from 1); ``<point>:<n>@<r>`` arms world rank ``r`` only. Points:

* ``kill_server_mid_update``: after the optimizer changed the master weights, before the
  reply is published (SIGKILL, the worst moment for the server to die).
* ``kill_server_mid_checkpoint``: after half of a checkpoint's bytes reached the temporary
  file, before it is renamed (SIGKILL).
* ``stall_server``: the server stops answering but stays alive (sleeps forever).

``hvd_dc.init`` arms the fault read from the settings (:func:`arm`). Unarmed (the
default), :func:`fault_point` costs one comparison. Meant for tests only.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any, Dict, Optional, Tuple

__all__ = ["arm", "fault_point"]

_FAULT: Optional[Tuple[str, int]] = None
_seen: Dict[str, int] = {}


def arm(fault: Optional[Tuple[str, int, Optional[int]]], world_rank: int) -> None:
    """Trigger ``fault`` (``(point, n, rank)``, from ``Settings.fault``) later, if it names
    this rank or none; None disarms."""
    global _FAULT
    _FAULT = fault[:2] if fault is not None and fault[2] in (None, world_rank) else None
    _seen.clear()


def fault_point(point: str, handle: Any = None) -> None:
    """Trigger the configured fault if this is its point and its turn."""
    if _FAULT is None or _FAULT[0] != point:
        return
    _seen[point] = _seen.get(point, 0) + 1
    if _seen[point] != _FAULT[1]:
        return
    print(f"hvd_dc fault injection: {point} #{_FAULT[1]} (PID {os.getpid()})", flush=True)
    if point == "stall_server":
        while True:
            time.sleep(3600)
    if point == "kill_server_mid_checkpoint" and handle is not None:
        size = handle.tell()
        handle.truncate(size // 2)  # the temporary file now holds half a checkpoint
        handle.flush()
        os.fsync(handle.fileno())
    os.kill(os.getpid(), signal.SIGKILL)

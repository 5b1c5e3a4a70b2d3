"""Which process is which rank, for naming a rank that died.

When one rank dies, MPI launchers kill the others at once, and MPICH's ``mpiexec``
reports one PID (not always the first to die). So when ``hvd-dc-run`` launches a job it
sets ``HVD_DC_RANKS_DIR``; at ``init`` every rank writes one line there (its PID, host and
role, :func:`record`), and :class:`DeathWatch` waits on the local ranks' process handles
(``pidfd``) to see which one ended first, e.g. "world rank 1 (parameter server 2 of 2)".
No MPI, no torch.
"""

from __future__ import annotations

import os
import re
import socket
import select
import threading
import time
from typing import Dict, List, Optional

__all__ = ["record", "read", "name_pid", "dead_pids", "DeathWatch"]


def record(directory: str, world_rank: int, role: str) -> None:
    """Write ``<directory>/rank<R>``: ``pid host role`` (the role as words)."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"rank{world_rank}")
    with open(path + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {socket.gethostname()} {role}\n")
    os.replace(path + ".tmp", path)


def read(directory: str) -> Dict[int, Dict[str, str]]:
    """``{pid: {"rank": ..., "host": ..., "role": ...}}`` of every rank that checked in."""
    out: Dict[int, Dict[str, str]] = {}
    if not os.path.isdir(directory):
        return out
    for name in os.listdir(directory):
        m = re.fullmatch(r"rank(\d+)", name)
        if not m:
            continue
        with open(os.path.join(directory, name)) as f:
            pid, host, role = f.read().strip().split(" ", 2)
        out[int(pid)] = {"rank": m.group(1), "host": host, "role": role}
    return out


def name_pid(directory: str, pid: int) -> Optional[str]:
    """"world rank R (role) on host H" for a PID that checked in, else None."""
    who = read(directory).get(pid)
    if who is None:
        return None
    return f"world rank {who['rank']} ({who['role']}) on host {who['host']}"


_PID_LINES = (
    re.compile(r"PID (\d+) RUNNING AT"),  # MPICH hydra: BAD TERMINATION ... PID n RUNNING AT host
    re.compile(r"process rank \d+ with PID (\d+)"),  # Open MPI: mpirun noticed that process rank r with PID n
)


def dead_pids(text: str):
    """The PIDs a launcher's failure report names, in order."""
    for pattern in _PID_LINES:
        for m in pattern.finditer(text):
            yield int(m.group(1))


class DeathWatch:
    """Watch the ranks of this host that check in to ``directory``; remember the first
    whose process ends while the job runs (:attr:`first_dead`: one PID, or several when
    they ended before this thread woke, and the order is lost)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.first_dead: List[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="hvd_dc-death-watch")
        self._thread.start()

    def _run(self) -> None:
        host = socket.gethostname()
        fds: Dict[int, int] = {}  # fd -> pid
        try:
            while not self._stop.is_set() and not self.first_dead:
                for pid, who in read(self.directory).items():
                    if who["host"] == host and pid not in fds.values():
                        try:
                            fds[os.pidfd_open(pid)] = pid
                        except (OSError, AttributeError):  # already gone, or no pidfd here
                            continue
                if not fds:
                    time.sleep(0.05)
                    continue
                ready: List[int] = select.select(list(fds), [], [], 0.05)[0]
                self.first_dead = sorted(fds[fd] for fd in ready)
        finally:
            for fd in fds:
                os.close(fd)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1)

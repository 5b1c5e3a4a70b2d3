"""The studies' run file: every finished run is one JSON line, so a study resumes where it
stopped and never redoes a finished run (benchmarks/convergence_fashion.py,
benchmarks/convergence_horovod.py)."""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, Iterable, Optional, Tuple


class Cache:
    """Runs already done, from ``runs.jsonl`` (one JSON object per line, keyed by ``key``)."""

    def __init__(self, path: str):
        self.path = path
        self.runs: Dict[str, Dict] = {}
        self._read = 0  # bytes of the file already read
        self.refresh()

    def refresh(self) -> None:
        """Read the runs other processes appended since (a part shared between processes
        then never redoes a run another finished)."""
        if not os.path.exists(self.path):
            return
        if os.path.getsize(self.path) < self._read:  # rewritten (runs removed by hand): read it all again
            self._read = 0
        with open(self.path, "rb") as f:
            f.seek(self._read)
            while True:
                line = f.readline()
                if not line.endswith(b"\n"):  # none left, or one still being written
                    break
                try:
                    r = json.loads(line) if line.strip() else None
                except json.JSONDecodeError:  # the file was rewritten under us: read it all again, once
                    if self._read == 0:
                        raise
                    self._read = 0
                    f.seek(0)
                    continue
                self._read += len(line)
                if r is not None:
                    self.runs[r["key"]] = r

    def add(self, run: Dict) -> None:
        self.runs[run["key"]] = run
        with open(self.path, "a") as f:
            f.write(json.dumps(run) + "\n")
            f.flush()
            os.fsync(f.fileno())


def children_cpu() -> float:
    """CPU seconds used so far by this process's finished children (mpiexec and its ranks)."""
    t = os.times()
    return t.children_user + t.children_system


def search_grid(grid: Iterable[float], evaluate: Callable[[float], Optional[Any]],
                best: Callable[[Dict[float, Any]], float], max_extend: int) -> Optional[Tuple[Dict[float, Any], int, int]]:
    """The studies' lr search: ``evaluate`` every lr of ``grid``; while the ``best`` one is
    the lowest (highest) tried, try the next lr below (above), a factor 2 away, up to
    ``max_extend`` times on each side, so that the choice is not stuck at an edge.
    ``evaluate`` returns None for a result not available (then the search stops there:
    None if a grid point is missing). Returns ``(results by lr, extended below, above)``."""
    results: Dict[float, Any] = {}
    for lr in grid:
        r = evaluate(lr)
        if r is None:
            return None
        results[lr] = r
    low = high = 0
    while True:
        lrs = sorted(results)
        chosen = best(results)
        if chosen == lrs[0] and low < max_extend:
            new, low = round(lrs[0] / 2, 10), low + 1
        elif chosen == lrs[-1] and high < max_extend:
            new, high = round(lrs[-1] * 2, 10), high + 1
        else:
            break
        r = evaluate(new)
        if r is None:
            break
        results[new] = r
    return results, low, high

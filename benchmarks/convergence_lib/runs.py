"""The studies' run file: every finished run is one JSON line, so a study resumes where it
stopped and never redoes a finished run (benchmarks/convergence_fashion.py,
benchmarks/convergence_horovod.py)."""

from __future__ import annotations

import json
import os
from typing import Dict


class Cache:
    """Runs already done, from ``runs.jsonl`` (one JSON object per line, keyed by ``key``)."""

    def __init__(self, path: str):
        self.path = path
        self.runs: Dict[str, Dict] = {}
        if os.path.exists(path):
            with open(path) as f:
                for line in f:
                    line = line.strip()
                    if line:
                        r = json.loads(line)
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

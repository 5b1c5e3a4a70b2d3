"""Statistics of integer samples, and the one record of staleness (no MPI, no I/O).

Staleness is the number of other workers' updates the server applied between a worker's
pull and its next push (Algorithm 2's ``tau``). :class:`StalenessRecord` keeps it once,
exactly, as one histogram ``{staleness: count}`` per worker: the server's
:class:`~hvd_dc.server_state.ServerState` holds it and saves it in checkpoints, and
:mod:`hvd_dc.metrics` reports from it. :func:`percentile` and :func:`summarize_hist` turn
a histogram into the numbers users read.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence

__all__ = ["percentile", "summarize_hist", "StalenessRecord", "worker_stats_extra"]


def percentile(hist: Mapping[int, int], q: float) -> float:
    """The ``q``-th percentile (0..100, nearest rank) of integer samples given as a
    histogram ``{value: count}``; 0.0 when empty."""
    total = sum(hist.values())
    if total == 0:
        return 0.0
    rank = max(1, -(-int(round(q * total * 1000)) // 100000))  # ceil(q/100 * total), at least 1
    seen = 0
    for value in sorted(hist):
        seen += hist[value]
        if seen >= rank:
            return float(value)
    return float(max(hist))


def summarize_hist(hist: Mapping[int, int]) -> Dict[str, float]:
    """``count``, ``mean``, ``p50``, ``p99``, ``max`` of a histogram ``{value: count}``."""
    total = sum(hist.values())
    if total == 0:
        return {"count": 0, "mean": 0.0, "p50": 0.0, "p99": 0.0, "max": 0.0}
    return {
        "count": int(total),
        "mean": sum(v * c for v, c in hist.items()) / total,
        "p50": percentile(hist, 50),
        "p99": percentile(hist, 99),
        "max": float(max(hist)),
    }


class StalenessRecord:
    """Per-worker staleness histograms ``{staleness: count}`` (exact; memory grows with
    the largest staleness seen, not with the number of pushes)."""

    def __init__(self, num_workers: int) -> None:
        self.hists: List[Dict[int, int]] = [{} for _ in range(num_workers)]

    def add(self, worker: int, staleness: int) -> None:
        h = self.hists[worker]
        h[staleness] = h.get(staleness, 0) + 1

    def per_worker(self) -> List[Dict[str, float]]:
        return [summarize_hist(h) for h in self.hists]

    def merged(self) -> Dict[int, int]:
        out: Dict[int, int] = {}
        for h in self.hists:
            for k, v in h.items():
                out[k] = out.get(k, 0) + v
        return out

    def to_lists(self) -> List[List[List[int]]]:
        """Plain data for a checkpoint: per worker, ``[staleness, count]`` pairs."""
        return [[[int(k), int(v)] for k, v in sorted(h.items())] for h in self.hists]

    def load_lists(self, rows: Sequence[Sequence[Sequence[int]]]) -> None:
        """Inverse of :meth:`to_lists` (same number of workers)."""
        self.hists = [{int(k): int(v) for k, v in row} for row in rows]


def worker_stats_extra(hist: Mapping[int, int], server_updates: int, elapsed: float) -> Dict[str, Any]:
    """The keys ``opt.stats()`` adds to the worker's counters: staleness p50 and p99 of
    this worker's accepted pushes, and the server's updates per second since this
    worker registered (from the update counter in the replies)."""
    summary = summarize_hist(hist)
    return {
        "staleness_p50": summary["p50"],
        "staleness_p99": summary["p99"],
        "updates_per_s": server_updates / elapsed if elapsed > 0 else 0.0,
        "elapsed_s": elapsed,
    }

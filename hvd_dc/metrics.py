"""Observability: staleness statistics, the server's periodic report, JSONL and TensorBoard.

On the **server**, :class:`ServerMetrics` receives every accepted push's staleness (the
number of other workers' updates applied between that worker's pull and its push, as
Algorithm 2 defines it) and, every ``$HVD_DC_METRICS_INTERVAL`` seconds (default 30) and
at the end, logs one line per model through the ``hvd_dc.server`` logger (INFO; set
``HVD_DC_LOG_LEVEL=INFO``): updates/s, rejected pushes, and staleness mean, p50, p99 and
max per worker. The same record goes, when configured, to:

* ``$HVD_DC_METRICS_FILE``: a JSON-lines file (one object per line; ``kind`` is
  ``"server"`` or ``"worker"``), which ``python -m hvd_dc.report`` turns into PNG plots;
* ``$HVD_DC_TENSORBOARD_DIR``: TensorBoard scalars, when the ``tensorboard`` package is
  installed (through ``torch.utils.tensorboard``); otherwise a warning, once.

On a **worker**, ``opt.stats()`` gives the same staleness statistics for that worker
(the server sends each push's staleness back with the reply), the server's updates/s as
seen from the replies, and the worker's rejected pushes; :func:`all_worker_stats` gathers
them from every worker; :func:`log_metrics` appends the script's own scalars (loss,
accuracy) to the JSONL file and TensorBoard.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

__all__ = [
    "StalenessTracker",
    "ServerMetrics",
    "JsonlWriter",
    "percentile",
    "summarize_hist",
    "log_metrics",
    "worker_stats_extra",
    "all_worker_stats",
]

log = logging.getLogger("hvd_dc.server")


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


class StalenessTracker:
    """Per-worker staleness histograms (exact; memory grows with the largest staleness)."""

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


class JsonlWriter:
    """Appends one JSON object per line; each record is one ``write`` on an ``O_APPEND``
    file, so the server and worker 0 can share a file on a local filesystem."""

    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, record: Mapping[str, Any]) -> None:
        os.write(self._fd, (json.dumps(record, sort_keys=True) + "\n").encode())

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _tensorboard(logdir: Optional[str]):
    """A ``SummaryWriter`` for ``logdir``, or ``None`` (no dir, or tensorboard missing)."""
    if not logdir:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception as exc:  # tensorboard is an optional dependency
        logging.getLogger("hvd_dc").warning(
            "HVD_DC_TENSORBOARD_DIR is set but TensorBoard is not usable (%s); pip install tensorboard", exc
        )
        return None
    return SummaryWriter(log_dir=logdir)


class ServerMetrics:
    """The server's periodic statistics; :mod:`hvd_dc.server` calls :meth:`tick` once per
    loop round (a clock read) and :meth:`finish` at the end."""

    def __init__(
        self,
        interval: Optional[float] = None,
        path: Optional[str] = None,
        tensorboard_dir: Optional[str] = None,
    ) -> None:
        env = os.environ
        self.interval = float(env.get("HVD_DC_METRICS_INTERVAL", "30")) if interval is None else float(interval)
        path = env.get("HVD_DC_METRICS_FILE") if path is None else path
        self.writer = JsonlWriter(path) if path else None
        self.tb = _tensorboard(env.get("HVD_DC_TENSORBOARD_DIR") if tensorboard_dir is None else tensorboard_dir)
        self.started = time.monotonic()
        self._next = self.started + self.interval
        self._last_t = self.started
        self._last_updates: Dict[int, int] = {}
        self._registered: Dict[int, float] = {}  # model index -> when the server first saw it

    def tick(self, models: Sequence[Any]) -> None:
        now = time.monotonic()
        if len(self._registered) != len(models):
            for model in models:
                self._registered.setdefault(model.index, now)
        if now >= self._next:
            self._next = now + self.interval
            self.report(models, now)

    def finish(self, models: Sequence[Any]) -> None:
        self.report(models, time.monotonic(), final=True)
        if self.writer:
            self.writer.close()
        if self.tb:
            self.tb.close()

    def record(self, model: Any, now: float, final: bool = False) -> Dict[str, Any]:
        """The statistics of one served model (``ServedModel``: ``index``, ``state``, ``tracker``)."""
        state = model.state
        elapsed = now - self._registered.get(model.index, self.started)
        dt = now - self._last_t
        last = self._last_updates.get(model.index, 0)
        if dt <= 0 or self._last_t < self._registered.get(model.index, self.started):
            dt = elapsed
        per_worker = model.tracker.per_worker()
        for m, pw in enumerate(per_worker):
            pw["worker"] = m
            pw["accepted"] = int(state.accepted[m])
            pw["rejected"] = int(state.rejected[m])
        merged = model.tracker.merged()
        return {
            "kind": "server",
            "final": final,
            "time": time.time(),
            "elapsed": elapsed,
            "model": model.index,
            "updates": int(state.updates),
            "updates_per_s": (state.updates - last) / dt if dt > 0 and not final else
            (state.updates / elapsed if elapsed > 0 else 0.0),
            "rejected": int(state.rejected.sum()),
            "staleness": summarize_hist(merged),
            "per_worker": per_worker,
            "staleness_hist": {str(k): v for k, v in sorted(merged.items())},
        }

    def report(self, models: Sequence[Any], now: float, final: bool = False) -> None:
        for model in models:
            rec = self.record(model, now, final)
            self._last_updates[model.index] = rec["updates"]
            if log.isEnabledFor(logging.INFO):
                workers = "; ".join(
                    f"w{p['worker']} mean {p['mean']:.2f} p50 {p['p50']:g} p99 {p['p99']:g} max {p['max']:g}"
                    for p in rec["per_worker"]
                )
                log.info(
                    "%smodel %d: %d updates, %.1f updates/s, %d rejected; staleness %s",
                    "final: " if final else "",
                    rec["model"],
                    rec["updates"],
                    rec["updates_per_s"],
                    rec["rejected"],
                    workers,
                )
            if self.writer:
                self.writer.write(rec)
            if self.tb:
                step = rec["updates"]
                tag = f"hvd_dc/model{rec['model']}"
                self.tb.add_scalar(f"{tag}/updates_per_s", rec["updates_per_s"], step)
                self.tb.add_scalar(f"{tag}/rejected", rec["rejected"], step)
                for key in ("mean", "p50", "p99", "max"):
                    self.tb.add_scalar(f"{tag}/staleness_{key}", rec["staleness"][key], step)
                self.tb.flush()
        self._last_t = now


_worker_writer: Optional[JsonlWriter] = None
_worker_tb: Any = None
_worker_tb_checked = False


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


def log_metrics(step: Optional[int] = None, **scalars: float) -> None:
    """Append this worker's scalars (e.g. ``loss=0.3, accuracy=0.9``) to
    ``$HVD_DC_METRICS_FILE`` and, if set and installed, TensorBoard in
    ``$HVD_DC_TENSORBOARD_DIR/worker<rank>``. A no-op when neither is configured.
    Call it on the workers that should report (typically ``hvd_dc.rank() == 0`` after an
    ``allreduce`` that averaged the values)."""
    global _worker_writer, _worker_tb, _worker_tb_checked
    from .runtime import is_initialized, rank

    who = rank() if is_initialized() else 0
    path = os.environ.get("HVD_DC_METRICS_FILE")
    if path and _worker_writer is None:
        _worker_writer = JsonlWriter(path)
    values = {k: float(v) for k, v in scalars.items()}
    if _worker_writer:
        _worker_writer.write({"kind": "worker", "worker": who, "time": time.time(), "step": step, **values})
    if not _worker_tb_checked:
        _worker_tb_checked = True
        tbdir = os.environ.get("HVD_DC_TENSORBOARD_DIR")
        _worker_tb = _tensorboard(os.path.join(tbdir, f"worker{who}") if tbdir else None)
    if _worker_tb:
        for k, v in values.items():
            _worker_tb.add_scalar(k, v, step)
        _worker_tb.flush()


def all_worker_stats(optimizer: Any) -> List[Dict[str, Any]]:
    """``optimizer.stats()`` of every worker, in worker order; a collective among the
    workers (every worker must call it)."""
    from .collectives import allgather_object

    return list(allgather_object(optimizer.stats()))


"""Observability: staleness statistics, the server's periodic report, JSONL and TensorBoard.

Staleness is the number of other workers' updates applied between a worker's pull and
its push, as Algorithm 2 defines it. It is recorded once, in the server's
:class:`StalenessRecord` (one histogram per worker, held by
:class:`~hvd_dc.server_state.ServerState` and saved in its checkpoints), and each reply
carries the push's staleness to its worker, which keeps its own share of the record (its
row, restored from the server's at registration).

On the **server**, :class:`ServerMetrics` reads that record and, every
``$HVD_DC_METRICS_INTERVAL`` seconds (default 30) and at the end, logs one line per model through the ``hvd_dc.server`` logger (INFO; set
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
from typing import Any, Dict, List, Mapping, Optional, Sequence

from . import context
from .collectives import allgather_object
from .settings import Settings
from .stats import summarize_hist

__all__ = [
    "ServerMetrics",
    "JsonlWriter",
    "log_metrics",
    "all_worker_stats",
]

log = logging.getLogger("hvd_dc.server")


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

    def __init__(self, interval: float, path: Optional[str], tensorboard_dir: Optional[str]) -> None:
        self.interval = float(interval)
        self.writer = JsonlWriter(path) if path else None
        self.tb = _tensorboard(tensorboard_dir)
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
        """The statistics of one served model (``ServedModel``: ``index`` and ``state``)."""
        state = model.state
        elapsed = now - self._registered.get(model.index, self.started)
        dt = now - self._last_t
        last = self._last_updates.get(model.index, 0)
        if dt <= 0 or self._last_t < self._registered.get(model.index, self.started):
            dt = elapsed
        record = state.staleness
        per_worker = record.per_worker()
        for m, pw in enumerate(per_worker):
            pw["worker"] = m
            pw["accepted"] = int(state.accepted[m])
            pw["rejected"] = int(state.rejected[m])
        merged = record.merged()
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


def log_metrics(step: Optional[int] = None, **scalars: float) -> None:
    """Append this worker's scalars (e.g. ``loss=0.3, accuracy=0.9``) to
    ``$HVD_DC_METRICS_FILE`` and, if set and installed, TensorBoard in
    ``$HVD_DC_TENSORBOARD_DIR/worker<rank>``. A no-op when neither is configured.
    Call it on the workers that should report (typically ``hvd_dc.rank() == 0`` after an
    ``allreduce`` that averaged the values)."""
    global _worker_writer, _worker_tb, _worker_tb_checked
    ctx = context.peek()
    live = ctx is not None and not ctx.shut_down
    who = ctx.worker_rank if live else 0
    settings = ctx.settings if ctx is not None else Settings.from_environ()
    path = settings.metrics_file
    if path and _worker_writer is None:
        _worker_writer = JsonlWriter(path)
    values = {k: float(v) for k, v in scalars.items()}
    if _worker_writer:
        _worker_writer.write({"kind": "worker", "worker": who, "time": time.time(), "step": step, **values})
    if not _worker_tb_checked:
        _worker_tb_checked = True
        tbdir = settings.tensorboard_dir
        _worker_tb = _tensorboard(os.path.join(tbdir, f"worker{who}") if tbdir else None)
    if _worker_tb:
        for k, v in values.items():
            _worker_tb.add_scalar(k, v, step)
        _worker_tb.flush()


def all_worker_stats(optimizer: Any) -> List[Dict[str, Any]]:
    """``optimizer.stats()`` of every worker, in worker order; a collective among the
    workers (every worker must call it)."""
    return list(allgather_object(optimizer.stats()))


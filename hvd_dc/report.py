"""``python -m hvd_dc.report METRICS.jsonl``: plot a run's metrics file to PNG.

Reads the JSON-lines file written with ``HVD_DC_METRICS_FILE`` (server records, and the
workers' :func:`hvd_dc.metrics.log_metrics` records) and draws three panels into one PNG
(default ``METRICS.png`` beside the input):

1. the workers' ``loss`` (any logged key with ``--loss-key``) against wall time;
2. the server's updates/s against wall time;
3. the histogram of staleness over all accepted pushes (from the last server record).

Needs matplotlib (``pip install 'hvd_dc[report]'``); prints a text summary either way.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

__all__ = ["main", "load", "plot", "summary"]


def load(path: str) -> List[Dict[str, Any]]:
    """All records of a metrics JSONL file, in file order (blank or torn lines skipped)."""
    records = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a killed job
    return records


def summary(records: Sequence[Dict[str, Any]]) -> str:
    """A few lines describing the run: updates, updates/s, staleness, last loss."""
    server = [r for r in records if r.get("kind") == "server"]
    worker = [r for r in records if r.get("kind") == "worker"]
    lines = []
    if server:
        last = server[-1]
        st = last["staleness"]
        lines.append(
            f"server: {last['updates']} updates, {last['updates_per_s']:.1f} updates/s "
            f"({'final' if last.get('final') else 'last interval'}), {last['rejected']} rejected; "
            f"staleness mean {st['mean']:.2f} p50 {st['p50']:g} p99 {st['p99']:g} max {st['max']:g}"
        )
    losses = [r for r in worker if "loss" in r]
    if losses:
        lines.append(f"workers: {len(worker)} records, last loss {losses[-1]['loss']:.4f}")
    return "\n".join(lines) if lines else "no hvd_dc records found"


def plot(records: Sequence[Dict[str, Any]], out: str, loss_key: str = "loss") -> str:
    """Draw the three panels to ``out`` (PNG) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = min((r["time"] for r in records if "time" in r), default=0.0)
    finals = [r for r in records if r.get("kind") == "server"]
    server = [r for r in finals if not r.get("final")] or finals  # a short run has only the final record
    worker = [r for r in records if r.get("kind") == "worker" and loss_key in r]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    by_worker: Dict[Any, List[Dict[str, Any]]] = {}
    for r in worker:
        by_worker.setdefault(r.get("worker", 0), []).append(r)
    for w, rs in sorted(by_worker.items()):
        ax.plot([r["time"] - t0 for r in rs], [r[loss_key] for r in rs], marker="o", label=f"worker {w}")
    ax.set_title(loss_key)
    ax.set_xlabel("wall time (s)")
    if by_worker:
        ax.legend()
    else:
        ax.text(0.5, 0.5, f"no '{loss_key}' records", ha="center", transform=ax.transAxes)
    ax = axes[1]
    by_model: Dict[Any, List[Dict[str, Any]]] = {}
    for r in server:
        by_model.setdefault(r.get("model", 0), []).append(r)
    for m, rs in sorted(by_model.items()):
        ax.plot([r["time"] - t0 for r in rs], [r["updates_per_s"] for r in rs], marker="o", label=f"model {m}")
    ax.set_title("server updates/s")
    ax.set_xlabel("wall time (s)")
    if by_model:
        ax.legend()
    ax = axes[2]
    if finals:
        hist = {int(k): v for k, v in finals[-1].get("staleness_hist", {}).items()}
        ax.bar(list(hist), list(hist.values()), width=0.8)
        st = finals[-1]["staleness"]
        ax.set_title(f"staleness (mean {st['mean']:.2f}, p99 {st['p99']:g}, max {st['max']:g})")
    else:
        ax.set_title("staleness")
    ax.set_xlabel("staleness (updates by others between pull and push)")
    ax.set_ylabel("accepted pushes")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point of ``python -m hvd_dc.report`` / ``hvd-dc-report``."""
    p = argparse.ArgumentParser(prog="python -m hvd_dc.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("metrics", help="the JSONL file written via HVD_DC_METRICS_FILE")
    p.add_argument("-o", "--output", help="PNG to write (default: METRICS with .png)")
    p.add_argument("--loss-key", default="loss", help="worker scalar to plot in the first panel (default loss)")
    args = p.parse_args(argv)
    records = load(args.metrics)
    print(summary(records))
    if not records:
        print(f"{args.metrics}: no records", file=sys.stderr)
        return 1
    out = args.output or str(Path(args.metrics).with_suffix(".png"))
    try:
        plot(records, out, args.loss_key)
    except ImportError:
        print("matplotlib is not installed: pip install 'hvd_dc[report]'", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

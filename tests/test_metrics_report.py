"""Observability: staleness statistics, the server's log line, the JSONL file, TensorBoard
scalars (when tensorboard is installed), opt.stats(), and python -m hvd_dc.report."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from hvd_dc.metrics import ServerMetrics
from hvd_dc.stats import StalenessRecord, percentile, summarize_hist
from hvd_dc.report import load, summary
from mpi_run import mpiexec, run_mpi

ROOT = Path(__file__).resolve().parents[1]
HAVE_TB = importlib.util.find_spec("tensorboard") is not None


def test_percentiles_match_numpy_nearest_rank():
    rng = np.random.default_rng(0)
    samples = rng.poisson(3, size=1001)
    hist = {}
    for s in samples.tolist():
        hist[s] = hist.get(s, 0) + 1
    for q in (50, 99):
        assert percentile(hist, q) == np.percentile(samples, q, method="inverted_cdf")
    s = summarize_hist(hist)
    assert s["count"] == 1001 and s["max"] == samples.max() and abs(s["mean"] - samples.mean()) < 1e-12
    assert summarize_hist({})["p99"] == 0.0


def test_server_metrics_record_and_jsonl(tmp_path):
    record = StalenessRecord(2)
    for st in [0, 1, 1, 2]:
        record.add(0, st)
    record.add(1, 7)
    state = SimpleNamespace(updates=5, accepted=np.array([4, 1]), rejected=np.array([0, 2]), staleness=record)
    model = SimpleNamespace(index=0, state=state)
    path = tmp_path / "m.jsonl"
    sm = ServerMetrics(interval=1e9, path=str(path), tensorboard_dir="")
    sm.tick([model])
    sm.finish([model])
    rec = load(str(path))[-1]
    assert rec["kind"] == "server" and rec["final"] and rec["updates"] == 5 and rec["rejected"] == 2
    w0, w1 = rec["per_worker"]
    assert (w0["mean"], w0["p50"], w0["max"], w0["accepted"]) == (1.0, 1.0, 2.0, 4)
    assert (w1["p99"], w1["rejected"]) == (7.0, 2)
    assert rec["staleness_hist"] == {"0": 1, "1": 2, "2": 1, "7": 1}
    assert "5 updates" in summary([rec])


def test_digits_example_metrics_log_stats_and_report(tmp_path):
    """The digits example under mpiexec: INFO log lines with per-worker p50/p99, a JSONL
    file with server and worker records, opt.stats() percentiles, TensorBoard event files
    when tensorboard is installed, and the report's PNG."""
    metrics = tmp_path / "run.jsonl"
    tb = tmp_path / "tb"
    env = {"HVD_DC_LOG_LEVEL": "INFO", "HVD_DC_METRICS_FILE": str(metrics), "HVD_DC_METRICS_INTERVAL": "0.5",
           "HVD_DC_TENSORBOARD_DIR": str(tb)}
    res = run_mpi(3, "", out_dir=tmp_path, timeout=180, env=env,
                  command=mpiexec() + ["-n", "3", sys.executable, str(ROOT / "examples" / "train_digits.py"),
                                       "--epochs", "3", "--progress"])
    assert res.returncode == 0, res.stderr
    assert re.search(r"final: model 0: \d+ updates, [0-9.]+ updates/s, 0 rejected; staleness w0 mean [0-9.]+ "
                     r"p50 \d+ p99 \d+ max \d+; w1 ", res.stderr), res.stderr
    assert "staleness mean" in res.stdout and "p99" in res.stdout  # opt.stats() on worker 0
    assert "epoch 1/3" in res.stderr  # tqdm's bar on worker 0
    records = load(str(metrics))
    server = [r for r in records if r["kind"] == "server"]
    worker = [r for r in records if r["kind"] == "worker"]
    assert server[-1]["final"] and server[-1]["updates"] > 100
    assert sum(server[-1]["staleness_hist"].values()) == server[-1]["updates"]
    assert [r["step"] for r in worker] == [1, 2, 3] and all("loss" in r for r in worker)
    if HAVE_TB:
        assert list(tb.rglob("events.out.tfevents.*")), "TensorBoard event files expected"
    else:
        print("tensorboard not installed: TensorBoard output not checked (the server logged a warning)")
    png = tmp_path / "run.png"
    out = subprocess.run([sys.executable, "-m", "hvd_dc.report", str(metrics), "-o", str(png)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "updates/s" in out.stdout

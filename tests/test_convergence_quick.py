"""benchmarks/convergence.py --quick runs end to end (simulator + one mpiexec run) and
writes a well-formed table, JSON and plots. It asserts nothing about which method wins."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "convergence.py"
pytestmark = pytest.mark.slow  # a study end to end: the full suite runs it


def test_convergence_quick_pipeline(tmp_path):
    out = tmp_path / "conv"
    env = dict(os.environ, OMP_NUM_THREADS="1", HVD_DC_TIMEOUT="120", HVD_DC_START_TIMEOUT="120")
    res = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)], capture_output=True,
                         text=True, timeout=280, env=env, cwd=str(ROOT))
    assert res.returncode == 0, res.stdout + res.stderr

    doc = json.loads((out / "convergence.json").read_text())
    assert doc["meta"]["quick"] is True
    rows = doc["summary"]
    assert rows
    modes = {r["mode"] for r in rows}
    assert modes == {"sim", "mpi"}
    sim_methods = {r["method"] for r in rows if r["mode"] == "sim" and r["pattern"] == "round_robin"}
    assert sim_methods == {"sgd", "ssgd", "asgd", "dc-c", "dc-a"}
    for r in rows:
        for key in ("test_error", "test_loss", "train_loss"):
            ms = r[key]
            assert set(ms) == {"mean", "std", "n"}
            assert ms["n"] == len(r["seeds"]) >= 1
            assert ms["mean"] == ms["mean"] and ms["std"] >= 0  # finite numbers, not NaN
        assert 0.0 <= r["test_error"]["mean"] <= 100.0
    for run in doc["runs"]:
        c = run["curve"]
        assert len(c["epoch"]) == len(c["err"]) == len(c["loss"]) == len(c["seconds"]) == run["epochs"]

    md = (out / "convergence.md").read_text()
    assert "| M | SGD | SSGD | ASGD | DC-ASGD-c | DC-ASGD-a |" in md
    assert "±" in md
    for name in doc["figures"]:
        png = out / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(n.endswith("_seconds.png") for n in doc["figures"])

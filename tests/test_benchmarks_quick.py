"""Smoke test of the benchmark suite: every benchmark's --quick mode runs and writes
well-formed JSON. Asserts no timing threshold (the machine may be busy)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def run(name, tmp_path, timeout=400, extra=()):
    r = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), "--quick", "--out", str(tmp_path), *extra],
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "|---|" in r.stdout  # printed a table
    d = json.loads((tmp_path / f"{name}.json").read_text())
    assert d["benchmark"] == name and d["quick"] is True
    assert d["machine"]["cores"] >= 1 and d["table"]
    return d, r.stdout


@pytest.mark.slow
def test_apply_rate(tmp_path):
    d, _ = run("apply_rate", tmp_path)
    assert d["rows"]
    for row in d["rows"]:
        assert positive(row["memcpy_GBps"])
        for impl in ("hvd_dc", "hvd_dc_torch_path", "naive_loop", "foreach", "hvd_dc_dana"):
            for k in ("apply_s", "apply_pull_s", "updates_per_s", "apply_vs_memcpy", "apply_pull_vs_memcpy"):
                assert positive(row[impl][k]), (impl, k)
    assert d["cross_check_max_abs_diff"] >= 0


@pytest.mark.slow
def test_transport(tmp_path):
    d, _ = run("transport", tmp_path)
    for row in d["rows"]:
        for k in ("push_bytes", "pull_bytes", "exchange_s", "memcpy_s", "exchange_vs_memcpy"):
            assert positive(row[k]), k


@pytest.mark.slow
def test_scaling(tmp_path):
    d, _ = run("scaling", tmp_path)
    assert [r["workers"] for r in d["rows"]] == [1, 2]
    for row in d["rows"]:
        assert positive(row["updates_per_s"]) and positive(row["vs_ideal"])


def _check_peers(rows, out, key):
    systems = {r["system"]: r for r in rows}
    assert {"hvd_dc", "ddp", "horovod"} <= set(systems)
    if "skipped" in systems["horovod"]:
        assert "horovod not installed: column skipped" in out
    for r in rows:
        if "skipped" not in r:
            assert positive(r[key])
    return systems


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_stragglers(tmp_path):
    d, out = run("stragglers", tmp_path, timeout=850)
    systems = _check_peers(d["rows"], out, "grads_per_s")
    assert d["ideal_ratio"] == 3.25
    for r in systems.values():
        if "skipped" not in r:
            assert positive(r["hvd_dc_speedup"])
            assert len(r["tta_s"]) == d["repeats"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_synthetic(tmp_path):
    d, out = run("synthetic", tmp_path)
    _check_peers(d["rows"], out, "images_per_s")


@pytest.mark.slow
def test_gpu_script_dry_run_on_cpu(tmp_path):
    """The GPU benchmark's code paths, run on the CPU; its figures say nothing about GPUs."""
    d, out = run("gpu", tmp_path, extra=["--device", "cpu"])
    assert d["device"] == "cpu (dry run: no GPU figures)" and "dry run" in out
    for row in d["apply"]:
        assert row["finite"]
        for k in ("d2d_copy_GBps", "apply_device_s", "apply_from_host_s", "apply_device_fraction_of_copy_bw"):
            assert positive(row[k]), k
    st = d["staging"]
    assert st["eager_pushes"] > 0 and positive(st["copies_only_s"]) and positive(st["fwd_bwd_s"])
    alone, dc = d["e2e"]
    assert alone["processes"] == 1 and dc["processes"] == 3
    assert positive(alone["images_per_s"]) and positive(dc["images_per_s"])
    assert dc["staged_workers"] is False and dc["server_device"] == "cpu (window)"


def test_gpu_script_refuses_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = subprocess.run([sys.executable, str(BENCH / "gpu.py"), "--quick", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no CUDA device here" in r.stderr and "nothing measured" in r.stderr


@pytest.mark.slow
def test_scale_out_parts_that_fit_ci(tmp_path):
    d, _ = run("scale_out", tmp_path, extra=("--only", "exposed,apply"))
    assert [r["overlap"] for r in d["exposed"]["rows"]] == ["off", "on"]
    for r in d["exposed"]["rows"]:
        assert positive(r["compute_s"]) and positive(r["step_s"]) and r["chunks"] >= 1
    for r in d["apply"]["rows"]:
        assert positive(r["one_thread_s"]) and positive(r["two_threads_s"]) and r["chunks"] >= 1


def test_scale_model_reads_the_committed_measurements(tmp_path):
    """The cost model runs on the results committed in benchmarks/results (every point it
    checks was measured by a benchmark of this directory) and writes its check table."""
    r = subprocess.run([sys.executable, str(BENCH / "scale_model.py"), "--out", str(tmp_path), "--results",
                        str(BENCH / "results")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    d = json.loads((tmp_path / "scale_model.json").read_text())
    assert d["check"] and all(positive(p["predicted"]) and positive(p["measured"]) for p in d["check"])
    assert {row["workers"] for row in d["projection"]} == {8, 16, 32, 64, 128, 256}
    assert "within 20" in d["table"]

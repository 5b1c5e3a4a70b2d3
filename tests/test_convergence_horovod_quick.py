"""The Horovod-hyperparameters study's pieces that can run in seconds: the Horovod-style
script (benchmarks/horovod_fashion.py) under mpiexec with hvd_dc and with torch DDP, its
straggler, and the report's time-to-target arithmetic. The study itself is too long for CI
(benchmarks/CONVERGENCE_HOROVOD.md)."""

import json
import sys
import types
from pathlib import Path

import pytest

from mpi_run import run_mpi

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "horovod_fashion.py"
sys.path.insert(0, str(ROOT))

from benchmarks.convergence_lib import report_horovod  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("backend, ranks", [("hvd_dc", 3), ("ddp", 2)])
def test_horovod_style_script_runs_with_a_straggler(tmp_path, backend, ranks):
    from mpi_run import mpiexec

    out = tmp_path / "run.json"
    env = {"PYTHONPATH": str(ROOT)}
    if backend == "ddp":
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            env["HVD_DC_DDP_PORT"] = str(s.getsockname()[1])
    cmd = mpiexec() + ["-n", str(ranks), sys.executable, str(SCRIPT), "--backend", backend, "--lr", "0.01",
                       "--epochs", "1", "--train-images", "1024", "--seed", "0", "--slow-factor", "3",
                       "--out", str(out)]
    run_mpi(ranks, "", out_dir=tmp_path, timeout=240, env=env, command=cmd).check()
    d = json.loads(out.read_text())
    assert d["workers"] == 2 and 0 <= d["final_error"] <= 100
    curve = d["curve"]
    assert curve["seconds"] == sorted(curve["seconds"]) and curve["epoch"][-1] == 1.0
    sleeps = {w["rank"]: w["extra_sleep_s"] for w in d["workers_info"]}
    assert sleeps[0] == 0.0 and sleeps[1] > 0.0  # the last worker is the straggler


def test_time_to_target_is_the_first_snapshot_at_or_below_it():
    r = {"curve": {"seconds": [1.0, 2.0, 3.0, 4.0], "err": [30.0, 12.0, 9.0, 9.5]}}
    assert report_horovod.time_to_target(r, 9.0) == 3.0
    assert report_horovod.time_to_target(r, 12.5) == 2.0
    assert report_horovod.time_to_target(r, 8.0) is None


def test_straggler_table_uses_ddp_then_horovod_as_the_target():
    s = types.SimpleNamespace(MPI_SLOW_FACTOR=4.0, SCRIPT_WORKERS=(4, 8))

    def run(system, m, errs):
        return {"mode": "mpi", "slow_factor": 4.0, "system": system, "workers": m, "final_error": errs[-1],
                "seconds": 10.0 * len(errs), "curve": {"seconds": [10.0 * (i + 1) for i in range(len(errs))],
                                                         "err": errs}}

    runs = [run("ddp", 4, [20, 10, 9]), run("horovod", 4, [20, 9.5, 9]), run("hvd_dc", 4, [9, 8.5]),
            run("horovod", 8, [30, 12, 10]), run("hvd_dc", 8, [11, 10])]
    rows = {(r["workers"], r["system"]): r for r in report_horovod.straggler_table(runs, s)}
    assert rows[(4, "hvd_dc")]["target_from"] == "ddp" and rows[(4, "hvd_dc")]["target_error"] == 9
    assert rows[(4, "hvd_dc")]["time_to_target"] == 10.0 and rows[(4, "hvd_dc")]["vs_horovod"] == pytest.approx(1 / 3)
    assert rows[(8, "hvd_dc")]["target_from"] == "horovod" and rows[(8, "hvd_dc")]["vs_horovod"] == pytest.approx(2 / 3)
    assert rows[(8, "horovod")]["vs_horovod"] == 1.0

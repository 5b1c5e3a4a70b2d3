"""Under mpiexec: the server's checkpoint survives crashes and a restarted job resumes.

Each test kills a real job (the server mid-update, a worker, the server mid-checkpoint
write), checks that it ended instead of hanging, restarts the same command, and checks
that every step's push was applied exactly once over the job's lives (or, with one
worker, that the resumed trajectory is bit-identical to an uninterrupted one)."""

import pytest
import torch

from mpi_run import run_mpi


def _run(tmp_path, workers, *args, env=None, name="run"):
    return run_mpi(workers + 1, "resume.py", "--ckpt", str(tmp_path / "ck.pt"), *args,
                   out_dir=tmp_path / name, env=env, timeout=150)


def _assert_resumed_and_conserved(res, workers):
    res.check()
    results = res.results()
    assert sorted(results) == list(range(workers))
    for r in results.values():
        assert r["conserved"], r["max_diff"]
        assert r["resumed_from"] is not None and r["start"] > 0


def test_server_killed_mid_update_job_ends_and_resumes_exactly(tmp_path):
    crashed = _run(tmp_path, 3, env={"HVD_DC_FAULT": "kill_server_mid_update:33"})
    assert crashed.returncode != 0
    assert "fault injection: kill_server_mid_update #33" in crashed.stdout
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)
    assert 20 <= ck["updates"] < 33
    _assert_resumed_and_conserved(_run(tmp_path, 3, name="restart"), 3)


@pytest.mark.slow
def test_worker_sigkilled_job_ends_and_resumes_exactly(tmp_path):
    crashed = _run(tmp_path, 3, "--die-at", "25", "--sleep", "0.01")
    assert crashed.returncode != 0
    assert torch.load(tmp_path / "ck.pt", weights_only=True)["updates"] >= 10
    _assert_resumed_and_conserved(_run(tmp_path, 3, name="restart"), 3)


@pytest.mark.slow
def test_crash_mid_checkpoint_write_leaves_the_previous_checkpoint(tmp_path):
    crashed = _run(tmp_path, 2, env={"HVD_DC_FAULT": "kill_server_mid_checkpoint:2"})
    assert crashed.returncode != 0
    assert list(tmp_path.glob("ck.pt.tmp-*")), "the half-written temporary file should be left behind"
    assert 10 <= torch.load(tmp_path / "ck.pt", weights_only=True)["updates"] < 20  # the first checkpoint
    _assert_resumed_and_conserved(_run(tmp_path, 2, name="restart"), 2)
    assert not list(tmp_path.glob("ck.pt.tmp-*"))


@pytest.mark.slow
def test_resumed_trajectory_bit_matches_an_uninterrupted_run(tmp_path):
    args = ("--mode", "trajectory", "--steps", "60", "--every", "10")
    whole = run_mpi(2, "resume.py", "--ckpt", str(tmp_path / "whole.pt"), *args, out_dir=tmp_path / "whole").check()
    crashed = _run(tmp_path, 1, *args, env={"HVD_DC_FAULT": "kill_server_mid_update:37"})
    assert crashed.returncode != 0
    resumed = _run(tmp_path, 1, *args, name="restart").check()
    r = resumed.results()[0]
    assert 30 <= r["start"] < 37
    assert r["final"] == whole.results()[0]["final"]


@pytest.mark.slow
def test_final_checkpoint_at_shutdown_holds_the_whole_state(tmp_path):
    _run(tmp_path, 2, "--steps", "15", "--every", "1000").check()
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)
    assert ck["updates"] == 30 and ck["accepted"] == [15, 15] and ck["num_workers"] == 2
    chunk = ck["chunks"][0]  # the model is one chunk; its server holds it whole
    assert len(ck["chunks"]) == 1 and ck["plan"] == [[0, 0, 24, 0]]
    assert len(chunk["backups"]) == 2 and set(chunk["mean_square"]) == {"0", "1"}
    assert chunk["optimizer"]["param_groups"][0]["lr"] == 1.0
    assert ck["model"]["params"] == [["w", [4, 6], "float32", 0]]

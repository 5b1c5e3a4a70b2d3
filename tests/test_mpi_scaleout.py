"""Under mpiexec: several server ranks, a model cut into chunks, chunks pushed during
backward. Conservation is exact with S = 1, 2, 3 servers and 16 ranks in all; a real model
learns with 2 servers and overlap on; a straggler stuck in its backward pass does not hold
up the others; the same exactness over MPICH's network path; checkpoints per server, a
killed server rank, and ranks that disagree on the servers."""

import re
import sys

import pytest
import torch

from mpi_run import SCRIPTS, conserved_results, mpiexec, mpmd_command, run_mpi

CHUNKED = {"HVD_DC_CHUNK_BYTES": "4096", "HVD_DC_OVERLAP": "on"}
NETWORK_PATH = {"MPIR_CVAR_NOLOCAL": "1", "MPIR_CVAR_CH4_NETMOD": "ofi", "FI_PROVIDER": "tcp",
                "HVD_DC_SHM_WINDOWS": "0"}


def _mpich() -> bool:
    from hvd_dc.launch import detect_mpi

    return detect_mpi(mpiexec()[0]) == "mpich"


@pytest.mark.slow
@pytest.mark.parametrize("servers", [1, 2, 3])
def test_conservation_with_16_ranks_over_s_servers(tmp_path, servers):
    workers = 16 - servers
    env = {**CHUNKED, "HVD_DC_SERVERS": str(servers), "HVD_DC_SERVER_THREADS": "2" if servers == 2 else "1"}
    res = run_mpi(16, "conservation.py", "--extra", "3000", "--dtypes", "float32,float64", "--steps", "6",
                  out_dir=tmp_path, env=env, timeout=300).check()
    results = conserved_results(res, workers)
    for r in results.values():
        assert r["stats"]["servers"] == servers and r["stats"]["chunks"] >= 4
        assert r["stats"]["overlap"] is True


@pytest.mark.slow
def test_a_model_learns_with_two_servers_and_overlap(tmp_path):
    res = run_mpi(4, "learn.py", "--epochs", "4", out_dir=tmp_path, timeout=240,
                  env={**CHUNKED, "HVD_DC_SERVERS": "2"}).check()
    for r in res.results().values():
        assert r["acc1"] > 0.9 and r["loss1"] < r["loss0"], r
        assert r["stats"]["servers"] == 2 and r["stats"]["chunks"] >= 4 and r["stats"]["overlap"]


@pytest.mark.slow
def test_a_straggler_stuck_in_backward_does_not_stall_the_others(tmp_path):
    res = run_mpi(5, "straggler.py", "--steps", "30", out_dir=tmp_path, timeout=180,
                  env={**CHUNKED, "HVD_DC_SERVERS": "2"}).check()
    results = res.results()
    assert results[2]["waited"] is True, "worker 0 could not finish while the straggler was stuck mid-backward"
    assert results[0]["steps"] == results[1]["steps"] == 30 and results[2]["steps"] == 3


@pytest.mark.slow
def test_overlap_keeps_accumulation_fp16_and_mixed_dtypes_exact(tmp_path):
    res = run_mpi(5, "conservation.py", "--extra", "3000", "--dtypes", "float32,float64,bfloat16", "--passes", "3",
                  "--compression", "fp16", "--steps", "6", out_dir=tmp_path, timeout=240,
                  env={**CHUNKED, "HVD_DC_SERVERS": "2"}).check()
    for r in conserved_results(res, 3).values():
        assert r["stats"]["overlap"] and r["stats"]["chunks"] == 5  # 3 float32, 1 float64, 1 bfloat16


@pytest.mark.slow
def test_editing_gradients_after_backward_with_overlap_on_is_an_error_naming_the_fix(tmp_path):
    res = run_mpi(3, "conservation.py", "--edit", "inplace", "--steps", "3", out_dir=tmp_path, timeout=120,
                  env=CHUNKED)
    assert res.returncode != 0
    assert "with overlap on they had already been pushed during backward" in res.stderr
    assert "Pass overlap='off'" in res.stderr


@pytest.mark.slow
@pytest.mark.parametrize("edit, overlap", [("none", True), ("inplace", False), ("data_after_synchronize", False)])
def test_auto_overlaps_only_loops_that_do_not_edit_gradients(tmp_path, edit, overlap):
    res = run_mpi(3, "conservation.py", "--edit", edit, "--steps", "4", out_dir=tmp_path, timeout=120,
                  env={"HVD_DC_CHUNK_BYTES": "4096"}).check()
    for r in conserved_results(res, 2).values():
        assert r["stats"]["overlap"] is overlap


@pytest.mark.slow
def test_tied_weights_and_retained_graphs_with_overlap(tmp_path):
    res = run_mpi(4, "tied.py", out_dir=tmp_path, timeout=180, env={**CHUNKED, "HVD_DC_SERVERS": "2"}).check()
    for r in res.results().values():
        assert r["errors"] == [] and r["tied"] and r["overlap"]
        assert r["last"] < r["first"]
        assert "modified by an inplace operation" in r["stale_graph_error"]


@pytest.mark.slow
def test_two_servers_chunks_and_threads_follow_the_single_server_trajectory_bit_for_bit(tmp_path):
    """One worker (a deterministic schedule), DC-ASGD-a with momentum on a small MLP: cut
    into chunks over 2 servers applying on 2 threads with overlap on, the final weights are
    the same bits as with one server holding the model whole."""
    args = ("--mode", "trajectory", "--steps", "30", "--every", "1000")
    whole = run_mpi(2, "resume.py", "--ckpt", str(tmp_path / "a.pt"), *args, out_dir=tmp_path / "whole",
                    env={"HVD_DC_CHUNK_BYTES": "0", "HVD_DC_OVERLAP": "off"}, timeout=120).check()
    sharded = run_mpi(3, "resume.py", "--ckpt", str(tmp_path / "b.pt"), *args, out_dir=tmp_path / "sharded",
                      env={"HVD_DC_CHUNK_BYTES": "256", "HVD_DC_OVERLAP": "on", "HVD_DC_SERVERS": "2",
                           "HVD_DC_SERVER_THREADS": "2"}, timeout=120).check()
    assert sharded.results()[0]["final"] == whole.results()[0]["final"]


@pytest.mark.slow
@pytest.mark.skipif(not _mpich(), reason="the network path is MPICH's (MPIR_CVAR_NOLOCAL with libfabric tcp)")
def test_conservation_over_the_network_path(tmp_path):
    env = {**CHUNKED, **NETWORK_PATH, "HVD_DC_SERVERS": "2"}
    res = run_mpi(5, "conservation.py", "--extra", "3000", "--variant", "adaptive", "--steps", "8", "--list-shm",
                  out_dir=tmp_path, env=env, timeout=240).check()
    results = conserved_results(res, 3)
    # no window in shared memory: no /dev/shm file mapped by two workers (on the shared-memory
    # path they all map the windows' mpich_shar_tmp* segments); each keeps only its own
    mapped = [set(r["shm_files"]) for r in results.values()]
    assert not any("mpich_shar_tmp" in f for files in mapped for f in files), mapped
    assert all(not (a & b) for i, a in enumerate(mapped) for b in mapped[i + 1:]), mapped


@pytest.mark.slow
def test_ranks_that_disagree_on_the_servers_fail_alike(tmp_path):
    cmd = mpmd_command([(1, {}), (1, {"HVD_DC_SERVERS": "2"}), (2, {})], "settings_mismatch.py", out_dir=tmp_path)
    res = run_mpi(4, "", out_dir=tmp_path, command=cmd, timeout=90).check()
    errors = {r["error"] for r in res.results().values()}
    assert len(errors) == 1 and len(res.results()) == 4
    assert errors.pop() == ("hvd_dc.init(): the ranks disagree on HVD_DC_SERVERS: 1 on world rank(s) 0, 2, 3; "
                            "2 on world rank(s) 1; set them alike on every rank")


def test_ranks_that_disagree_on_the_chunk_size_fail_alike(tmp_path):
    cmd = mpmd_command([(2, {}), (1, {"HVD_DC_CHUNK_BYTES": "1024"})], "settings_mismatch.py", out_dir=tmp_path)
    res = run_mpi(3, "", out_dir=tmp_path, command=cmd, timeout=90).check()
    errors = {r["error"] for r in res.results().values()}
    assert len(errors) == 1 and "disagree on HVD_DC_CHUNK_BYTES: 1024 on world rank(s) 2; 4096000" in errors.pop()


def _resume(tmp_path, name, *args, env=None, via_launcher=False):
    script = ["resume.py", "--ckpt", str(tmp_path / "ck.pt"), "--extra", "3000", "--every", "5", *args]
    out = tmp_path / name
    command = None
    if via_launcher:  # hvd-dc-run, which names a rank that dies
        command = [sys.executable, "-m", "hvd_dc.launch", "-np", "5", "--servers", "2", sys.executable,
                   str(SCRIPTS / script[0]), "--out", str(out), *script[1:]]
    return run_mpi(5, *script, out_dir=out, command=command, timeout=200,
                   env={**CHUNKED, "HVD_DC_SERVERS": "2", **(env or {})})


@pytest.mark.slow
def test_a_killed_server_rank_is_named_and_every_server_resumes_exactly(tmp_path):
    # server 1 dies in the middle of an update; server 0 and the workers are ended by the launcher
    crashed = _resume(tmp_path, "run", env={"HVD_DC_FAULT": "kill_server_mid_update:40@1"}, via_launcher=True)
    assert crashed.returncode != 0
    assert "fault injection: kill_server_mid_update #40" in crashed.stdout
    assert re.search(r"hvd-dc-run: the job failed: world rank 1 \(parameter server 2 of 2\) on host \S+ "
                     r"\(PID \d+\) died first", crashed.stderr), crashed.stdout + crashed.stderr
    first = torch.load(tmp_path / "ck.pt.server0", weights_only=True)
    second = torch.load(tmp_path / "ck.pt.server1", weights_only=True)
    assert first["plan"] == second["plan"] and len(first["chunks"]) + len(second["chunks"]) == len(first["plan"])
    assert second["updates"] < 40
    restarted = _resume(tmp_path, "restart").check()
    results = restarted.results()
    assert sorted(results) == [0, 1, 2]
    for r in results.values():
        # each server continues from what it had applied; each step reaches each chunk once
        assert r["conserved"], r["max_diff"]
        assert r["resumed_from"] is not None and r["start"] > 0

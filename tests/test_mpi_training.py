"""Under mpiexec: a real model learns; pull semantics; a world of one."""

import json
import subprocess
import sys

import pytest

from mpi_run import SCRIPTS, run_mpi


@pytest.mark.slow
@pytest.mark.parametrize(
    "workers, variant, optimizer",
    [(2, "adaptive", "sgd"), (4, "adaptive", "sgd"), (2, "constant", "sgd"), (2, "adaptive", "adam")],
)
def test_digits_mlp_learns(tmp_path, workers, variant, optimizer):
    res = run_mpi(workers + 1, "learn.py", "--variant", variant, "--optimizer", optimizer, out_dir=tmp_path,
                  timeout=180).check()
    results = res.results()
    assert sorted(results) == list(range(workers))
    for r in results.values():
        assert r["acc0"] < 0.3
        assert r["acc1"] > 0.9, r
        assert r["loss1"] < 0.5 * r["loss0"]
    # every worker ends on the same server weights
    assert len({round(r["loss1"], 6) for r in results.values()}) == 1
    assert all(not r["divergence"] for r in results.values())


def test_a_diverging_horovod_run_says_once_why(tmp_path):
    """Horovod's lr * size() applied whole on every push (lr_scaling="per_push") with a shared
    momentum 0.9 and an lr far too large: the weights blow up within tens of steps (the loss
    ends several times above the initial 2.3, at chance accuracy; how far depends on the
    pushes' interleaving), and each worker gets exactly one DivergenceWarning naming
    lr_scaling as the cause."""
    res = run_mpi(5, "learn.py", "--lr", "2.0", "--lr-scaling", "per_push", "--async-momentum", "shared",
                  "--variant", "none", "--epochs", "2", out_dir=tmp_path, timeout=180).check()
    results = res.results()
    assert sorted(results) == [0, 1, 2, 3]
    for r in results.values():
        assert r["loss1"] > 3 * r["loss0"] and r["acc1"] < 0.3, r  # it did diverge
        assert len(r["divergence"]) == 1, r["divergence"]
        assert "training is diverging" in r["divergence"][0] and "lr_scaling='per_push'" in r["divergence"][0]


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["gap_aware", "staleness_lr"])
def test_digits_mlp_learns_with_a_staleness_policy(tmp_path, policy):
    """DC-ASGD-a combined with a staleness policy still trains the real model."""
    res = run_mpi(4, "learn.py", "--variant", "adaptive", "--policy", policy, out_dir=tmp_path, timeout=180).check()
    results = res.results()
    assert sorted(results) == [0, 1, 2]
    for r in results.values():
        assert r["acc0"] < 0.3 and r["acc1"] > 0.9, r
        assert r["loss1"] < 0.5 * r["loss0"]


@pytest.mark.slow
def test_pull_fetches_weights_without_pushing(tmp_path):
    res = run_mpi(4, "pull.py", out_dir=tmp_path).check()
    results = res.results()
    for rank, r in results.items():
        assert r["equals_worker0"], r
        assert r["pushes"] == r["pushes_before_pull"] == (5 if rank == 0 else 0)
        assert r["server_updates"] == 5
        assert r["changed"]


def test_world_of_one_trains_alone_like_horovod(tmp_path):
    """Launched without mpiexec (singleton MPI) and with mpiexec -n 1."""
    plain = subprocess.run([sys.executable, str(SCRIPTS / "solo.py"), "--out", str(tmp_path / "plain")],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    res = run_mpi(1, "solo.py", out_dir=tmp_path / "mpi").check()
    for r in [json.loads((tmp_path / "plain" / "worker0.json").read_text()), res.results()[0]]:
        assert r["size"] == 1 and r["rank"] == 0 and r["local_size"] == 1
        assert r["identical"], "hvd_dc in a world of one must train exactly like the wrapped optimizer"
        assert r["allreduce"] == 2.0

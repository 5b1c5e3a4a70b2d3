"""Under mpiexec: faults and unusual inputs have a defined outcome, and nothing hangs."""

import json
import re
import subprocess
import sys

import pytest
import torch

from mpi_run import SCRIPTS, run_mpi


@pytest.mark.slow
def test_server_that_stops_answering_is_named_and_the_job_ends(tmp_path):
    res = run_mpi(4, "faults.py", "--mode", "stall", out_dir=tmp_path, timeout=90,
                  env={"HVD_DC_TIMEOUT": "4", "HVD_DC_FAULT": "stall_server:5"})
    assert res.returncode != 0
    # whichever worker times out first ends the job (MPI_Abort): any of them may be the one named
    assert re.search(r"worker \d \(world rank \d\): the parameter server \(world rank 0\) did not answer request",
                     res.stdout), res.stdout
    assert "within 4 s" in res.stdout
    assert "stopped answering; ending the job" in res.stderr


@pytest.mark.slow
def test_worker_that_never_pushes_does_not_hold_up_the_others(tmp_path):
    res = run_mpi(4, "faults.py", "--mode", "idle", out_dir=tmp_path).check()
    results = res.results()
    assert results[2]["stats"]["pushes"] == 0
    assert results[0]["stats"]["pushes"] == results[1]["stats"]["pushes"] == 20


def test_hung_worker_is_named_checkpointed_and_the_job_ends(tmp_path):
    ck = tmp_path / "ck.pt"
    res = run_mpi(4, "faults.py", "--mode", "hung", "--ckpt", str(ck), out_dir=tmp_path, timeout=90,
                  env={"HVD_DC_TIMEOUT": "4"})
    assert res.returncode != 0
    assert "worker 2 (world rank 3) sent nothing for" in res.stderr
    assert "checkpoints written; ending the job" in res.stderr
    assert torch.load(ck, weights_only=True)["accepted"] == [20, 20, 0]


@pytest.mark.slow
def test_sparse_gradients_unused_parameters_and_nonfinite_raise(tmp_path):
    res = run_mpi(3, "inputs.py", out_dir=tmp_path).check()
    for r in res.results().values():
        assert r["sparse_ok"], "sparse embedding gradients must be applied densely and exactly"
        assert r["unused_unchanged"], "a parameter with no gradient pushes zeros (SGD without decay: unchanged)"
        assert "the server rejected it and the model was not changed (nonfinite='raise')" in r["raised"]
        assert r["model_unchanged_after_raise"]


@pytest.mark.slow
def test_world_of_two_has_one_worker(tmp_path):
    res = run_mpi(2, "conservation.py", "--variant", "adaptive", out_dir=tmp_path).check()
    r = res.results()[0]
    assert r["size"] == 1 and r["conserved"]


@pytest.mark.parametrize(
    "env, message",
    [
        ({"SLURM_STEP_NUM_TASKS": "4"}, "srun started 4 tasks (SLURM_STEP_NUM_TASKS=4) but MPI sees a world of one"),
        ({"OMPI_COMM_WORLD_SIZE": "3"}, "started 3 tasks (OMPI_COMM_WORLD_SIZE=3)"),
        ({"HOROVOD_CONTROLLER": "gloo", "HOROVOD_SIZE": "2"}, "started by horovodrun --gloo, which starts no MPI job"),
    ],
)
def test_singleton_ranks_from_a_multi_task_launch_are_refused(tmp_path, env, message):
    res = subprocess.run([sys.executable, str(SCRIPTS / "singleton.py"), "--out", str(tmp_path)], capture_output=True,
                         text=True, timeout=60, env={**__import__("os").environ, **env})
    assert res.returncode != 0
    assert message in res.stderr
    assert not (tmp_path / "worker0.json").exists()


def test_singleton_override(tmp_path):
    env = {**__import__("os").environ, "SLURM_STEP_NUM_TASKS": "4", "HVD_DC_ALLOW_SINGLETON": "1"}
    res = subprocess.run([sys.executable, str(SCRIPTS / "singleton.py"), "--out", str(tmp_path)], capture_output=True,
                         text=True, timeout=60, env=env)
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "worker0.json").read_text())["size"] == 1


def test_calls_before_init_are_refused_clearly():
    code = (
        "import torch, hvd_dc as hvd\n"
        "m = torch.nn.Linear(2, 1)\n"
        "for f in (lambda: hvd.size(), lambda: hvd.DistributedDCOptimizer(torch.optim.SGD(m.parameters(), lr=0.1)),\n"
        "          lambda: hvd.allreduce(torch.ones(1))):\n"
        "    try:\n"
        "        f(); print('NO ERROR')\n"
        "    except RuntimeError as e:\n"
        "        print(e)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("hvd_dc has not been initialized; call hvd_dc.init() first") == 3, res.stdout

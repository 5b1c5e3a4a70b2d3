"""Under mpiexec: bad set-ups end with a clear error on every rank, never a hang."""

import pytest

from mpi_run import run_mpi


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind, message",
    [
        ("shape", "parameter '0.weight' has shape [8, 4] on worker 0 but [9, 4] on worker 2"),
        ("extra", "worker 0 trains 4 parameters but worker 2 trains 6 (only on worker 2: 3.bias, 3.weight)"),
        ("dtype", "parameter '2.weight' is float32 on worker 0 but float64 on worker 2"),
        ("variant", "dc_variant is 'adaptive' on worker 0 but 'constant' on worker 2"),
    ],
)
def test_mismatched_models_fail_clearly(tmp_path, kind, message):
    res = run_mpi(4, "mismatch.py", "--kind", kind, out_dir=tmp_path, timeout=60)
    assert res.returncode != 0
    assert "UNREACHABLE" not in res.stdout
    assert res.stderr.count(f"the workers' models differ: {message}") >= 3, res.stderr  # every worker says it
    assert "aborting at the workers' request" in res.stderr  # and the server


def test_worker_that_never_registers_is_named(tmp_path):
    res = run_mpi(4, "missing_worker.py", out_dir=tmp_path, timeout=60, env={"HVD_DC_START_TIMEOUT": "4"})
    assert res.returncode != 0
    assert "UNREACHABLE" not in res.stdout
    assert res.stderr.count("worker 2 (world rank 3) did not reach DistributedDCOptimizer within 4 s") >= 3, res.stderr


def test_different_op_is_a_value_error_and_the_job_goes_on(tmp_path):
    """As in Horovod: a DistributedOptimizer op that differs between workers is a ValueError
    on every worker naming it; nothing was registered, so a corrected call trains."""
    res = run_mpi(3, "mismatch.py", "--kind", "op", out_dir=tmp_path, timeout=60).check()
    assert res.stdout.count("the workers passed different DistributedOptimizer options: "
                            "op is 'average' on worker 0 but 'sum' on worker 1") == 2, res.stdout
    assert res.stdout.count("registered after the correction") == 2, res.stdout

"""How a test harness runs hvd_dc code (docs/HOROVOD.md, 'Test harnesses and hvd_dc.run')."""

import os
import sys

import pytest

import hvd_dc
from mpi_run import SCRIPTS, mpiexec, run_mpi


def test_run_returns_every_workers_result():
    """hvd_dc.run from the pytest process: 2 workers + the server are launched; the
    harness process never calls init(), so the server's never-returning init is a child's."""
    env = {"PYTHONPATH": os.pathsep.join([str(SCRIPTS), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    sys.path.insert(0, str(SCRIPTS))
    try:
        import harness_fns
    finally:
        sys.path.remove(str(SCRIPTS))

    assert hvd_dc.run(harness_fns.rank_and_sum, args=(10,), np=2, env=env, timeout=180) == [(0, 10.0), (1, 10.0)]
    with pytest.raises(RuntimeError, match="worker 1 raised:(.|\\n)*worker 1 broke on purpose"):
        hvd_dc.run(harness_fns.fails_on_worker_1, np=2, env=env, timeout=180)
    with pytest.raises(ValueError, match="elastic"):
        hvd_dc.run(harness_fns.rank_and_sum, args=(1,), np=2, min_np=1)
    with pytest.raises(ValueError, match="MPI only"):
        hvd_dc.run(harness_fns.rank_and_sum, args=(1,), np=2, use_gloo=True)


def test_init_inside_pytest_on_rank_0_says_why_it_does_not_return(tmp_path):
    """pytest run inside every rank: the workers' test passes, rank 0's init() serves and
    tells the harness why (it used to end as 'Killed (signal 9)' with nothing else)."""
    res = run_mpi(3, "", out_dir=tmp_path, timeout=120,
                  command=mpiexec() + ["-n", "3", sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                       str(SCRIPTS / "harness_pytest_demo.py")])
    out = res.stdout + res.stderr  # pytest shows rank 0's captured stderr in its report
    assert "this process (world rank 0) is the parameter server: hvd_dc.init() does not return here" in out, out
    assert "hvd_dc.run(fn, np=workers)" in out
    assert res.stdout.count("1 passed") == 2, res.stdout  # the two workers' runs

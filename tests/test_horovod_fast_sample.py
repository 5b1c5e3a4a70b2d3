"""Two of Horovod's behaviours for the fast tier (``-m "not slow"``).

test_horovod_conformance.py runs every case of mpi_scripts/horovod_cases.py, one
``mpiexec -n 3`` each, and is marked slow as a whole (about 45 launches). These two cases
keep what no other fast test reaches: the optimizer's Horovod arguments applied on the
server (op=Sum pushes size() times the gradient, hvd_dc/optimizer_options.py) and
broadcast_parameters after wrapping, which must reach the server's weights
(hvd_dc/weights_sync.py). The full suite runs them twice; each is a few seconds.
"""

import pytest

from mpi_run import run_mpi


@pytest.mark.parametrize("case", ["optimizer_op_sum", "checkpoint_after_wrap"])
def test_horovod_case(case, tmp_path):
    res = run_mpi(3, "horovod_cases.py", "--case", case, out_dir=tmp_path, timeout=120)
    results = res.results()
    assert res.returncode == 0 and sorted(results) == [0, 1], (
        f"mpiexec exited {res.returncode}\n--- stdout\n{res.stdout}\n--- stderr\n{res.stderr}")
    assert all(r["ok"] and r["case"] == case and r["size"] == 2 for r in results.values())

"""The README's quick-start job runs under mpiexec and learns."""

import re
import sys
from pathlib import Path

from mpi_run import mpiexec, run_mpi

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_digits.py"


def test_quick_start_example_trains(tmp_path):
    res = run_mpi(3, "", out_dir=tmp_path, timeout=180,
                  command=mpiexec() + ["-n", "3", sys.executable, str(EXAMPLE), "--epochs", "6"])
    assert res.returncode == 0, res.stderr
    accs = [float(a) for a in re.findall(r"test accuracy ([0-9.]+)", res.stdout)]
    assert len(accs) == 6, res.stdout
    assert accs[-1] > 0.8, res.stdout

"""Soak under mpiexec: 16 ranks on this 2-core machine, thousands of pushes.

HVD_DC_SOAK_PUSHES sets pushes per worker (default 300: 4,500 pushes, about a minute
here); e.g. HVD_DC_SOAK_PUSHES=5000 python -m pytest tests/test_mpi_soak.py for a long run."""

import os
import sys

import pytest
import torch

from mpi_run import SCRIPTS, run_mpi

sys.path.insert(0, str(SCRIPTS))
from common import is_torn  # noqa: E402

PUSHES = int(os.environ.get("HVD_DC_SOAK_PUSHES", "300"))


@pytest.mark.slow
def test_soak_16_ranks_conserves_and_never_tears(tmp_path):
    res = run_mpi(16, "soak.py", "--pushes", str(PUSHES), out_dir=tmp_path, timeout=150 + PUSHES * 0.3).check()
    results = res.results()
    assert len(results) == 15
    assert sum(r["snapshots"] for r in results.values()) >= 15 * PUSHES
    assert sum(r["torn"] for r in results.values()) == 0
    assert all(r["conserved"] for r in results.values())
    assert {r["server_updates"] for r in results.values()} == {15 * PUSHES}
    assert max(r["staleness_max"] for r in results.values()) > 0  # the workers really overlapped


def test_the_torn_read_invariant_detects_a_mixed_snapshot():
    base = torch.arange(1000, dtype=torch.float32)
    old, new = base - 3, base - 5
    assert not is_torn(old, base) and not is_torn(new, base)
    assert is_torn(torch.cat([new[:500], old[500:]]), base)
    assert is_torn(torch.cat([old[:999], new[999:]]), base)

"""scripts/horovod_suite.py, which counts Horovod's own test_torch.py on hvd_dc: its import
rewrite, and its counting (a test passes only when it passed on both workers; a skip is
never a pass), checked on a small stand-in for Horovod's file, under mpiexec."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import horovod_suite  # noqa: E402

FAKE = '''import unittest

import torch

import horovod.torch as hvd
from common import mpi_env_rank_and_size, skip_or_fail_gpu_test, temppath


class TorchTests(unittest.TestCase):
    def test_passes(self):
        hvd.init()
        assert hvd.allreduce(torch.ones(1), op=hvd.Sum).item() == hvd.size() == 2
        assert mpi_env_rank_and_size() == (hvd.rank() + 1, 3)
        with temppath() as p:
            assert p.endswith("temp_test_file")

    def test_fails_on_worker_1(self):
        hvd.init()
        assert hvd.rank() == 0

    def test_skips(self):
        skip_or_fail_gpu_test(self, "No GPUs available")
'''


def test_prepare_rewrites_only_the_import(tmp_path):
    src = tmp_path / "test_torch.py"
    src.write_text(FAKE)
    out = tmp_path / "out"
    out.mkdir()
    names = horovod_suite.prepare(src, out)
    assert names == ["test_passes", "test_fails_on_worker_1", "test_skips"]
    copied = (out / "test_torch.py").read_text()
    assert copied == FAKE.replace("import horovod.torch as hvd", "import hvd_dc as hvd")
    assert (out / "common.py").exists()


def test_prepare_refuses_another_file(tmp_path):
    src = tmp_path / "test_torch.py"
    src.write_text("import torch\n")
    with pytest.raises(SystemExit, match="import horovod.torch as hvd"):
        horovod_suite.prepare(src, tmp_path)


def test_counts_on_both_workers(tmp_path):
    src = tmp_path / "test_torch.py"
    src.write_text(FAKE)
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "horovod_suite.py"), str(src), "--json",
                           str(report), "--timeout", "180"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # one test failed
    data = json.loads(report.read_text())
    status = {r["test"]: r["status"] for r in data["results"]}
    assert status == {"test_passes": "passed", "test_fails_on_worker_1": "failed", "test_skips": "skipped"}, (
        proc.stdout + proc.stderr)
    failed = next(r for r in data["results"] if r["test"] == "test_fails_on_worker_1")
    assert failed["reason"].startswith("worker 1:"), failed
    assert data["counts"] == {"passed": 1, "skipped": 1, "failed": 1}
    assert "passed 1 of 3 on 2 workers" in proc.stdout

"""The README's quick-start job runs under mpiexec and learns."""

import re
import sys
from pathlib import Path

import pytest

from mpi_run import mpiexec, run_mpi

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_digits.py"


def test_quick_start_example_trains(tmp_path):
    res = run_mpi(3, "", out_dir=tmp_path, timeout=180,
                  command=mpiexec() + ["-n", "3", sys.executable, str(EXAMPLE), "--epochs", "6"])
    assert res.returncode == 0, res.stderr
    accs = [float(a) for a in re.findall(r"test accuracy ([0-9.]+)", res.stdout)]
    assert len(accs) == 6, res.stdout
    assert accs[-1] > 0.8, res.stdout


@pytest.mark.slow
def test_synthetic_benchmark_runs(tmp_path):
    bench = EXAMPLE.parent / "pytorch_synthetic_benchmark.py"
    res = run_mpi(3, "", out_dir=tmp_path, timeout=180,
                  command=mpiexec() + ["-n", "3", sys.executable, str(bench), "--model", "cnn", "--width", "512",
                                       "--image-size", "16", "--sync-bn", "--num-warmup-batches", "2",
                                       "--num-batches-per-iter", "3", "--num-iters", "2"])
    assert res.returncode == 0, res.stderr
    assert re.search(r"Total img/sec on 2 worker\(s\): [0-9.]+", res.stdout), res.stdout
    assert "mean staleness" in res.stdout


@pytest.mark.slow
def test_mnist_example_through_run(tmp_path):
    """The MNIST-shaped example (Horovod's pytorch_mnist.py calls) trains through
    hvd.run(train, args=(args,), np=2) from a plain Python process: the harness launches
    the server and 2 workers and returns each worker's final test accuracy."""
    script = EXAMPLE.parent / "pytorch_mnist_synthetic.py"
    res = run_mpi(3, "", out_dir=tmp_path, timeout=240,
                  command=[sys.executable, str(script), "--num-proc", "2", "--epochs", "2",
                           "--gradient-predivide-factor", "2.0"])
    assert res.returncode == 0, res.stdout + res.stderr
    accs = [float(a) for a in re.findall(r"Accuracy: ([0-9.]+)%", res.stdout)]
    assert len(accs) == 2, res.stdout
    final = re.search(r"Final test accuracy per worker: \[([0-9., ]+)\]", res.stdout)
    assert final, res.stdout
    per_worker = [float(a) for a in final.group(1).split(",")]
    assert len(per_worker) == 2 and min(per_worker) > 0.5, res.stdout


def test_port_diff_is_two_code_lines():
    """examples/port_horovod/port.diff is current, and outside the docstring only the
    import line and the optimizer line change."""
    import difflib

    d = EXAMPLE.parent / "port_horovod"
    a = (d / "train_horovod.py").read_text().splitlines(keepends=True)
    b = (d / "train_hvd_dc.py").read_text().splitlines(keepends=True)
    diff = list(difflib.unified_diff(a, b, "train_horovod.py", "train_hvd_dc.py"))
    shipped = [l for l in (d / "port.diff").read_text().splitlines(keepends=True) if not l.startswith(("---", "+++"))]
    assert [l for l in diff if not l.startswith(("---", "+++"))] == shipped
    doc_end_a = a.index('"""\n', 1)
    doc_end_b = b.index('"""\n', 1)
    removed = [l.strip() for l in a[doc_end_a:] if l not in b[doc_end_b:]]
    added = [l.strip() for l in b[doc_end_b:] if l not in a[doc_end_a:]]
    assert removed == ["optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())"]
    assert added[0].startswith("import hvd_dc.horovod")
    assert added[1] == "optimizer = hvd_dc.DistributedDCOptimizer(optimizer, named_parameters=model.named_parameters())"
    assert len(added) == 2

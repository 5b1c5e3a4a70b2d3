"""The Fashion-MNIST reader of the convergence study (benchmarks/convergence_lib/common.py):
the IDX format, the error that names the Debian package, and the real files' contents.
The real data is required (``apt-get install dataset-fashion-mnist``, as .ci/run does):
without it these tests fail, they are not skipped."""

import gzip
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.convergence_lib import common  # noqa: E402


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path, compress):
    a = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28)).astype(np.uint8)
    path = tmp_path / ("x.idx.gz" if compress else "x.idx")
    _write_idx(path, a, compress)
    assert np.array_equal(common.read_idx(str(path)), a)
    labels = np.arange(7, dtype=np.uint8)
    _write_idx(tmp_path / "y", labels, False)
    assert np.array_equal(common.read_idx(str(tmp_path / "y")), labels)


def test_idx_bad_magic_and_truncation_are_refused(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(struct.pack(">HBB", 0, 0x0D, 1) + struct.pack(">I", 2) + b"\0" * 8)  # float data
    with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
        common.read_idx(str(bad))
    short = tmp_path / "short"
    short.write_bytes(struct.pack(">HBB", 0, 0x08, 2) + struct.pack(">II", 3, 4) + b"\0" * 11)
    with pytest.raises(ValueError, match=r"\(3, 4\)"):
        common.read_idx(str(short))


def test_missing_files_name_the_debian_package(tmp_path):
    with pytest.raises(common.DataMissing, match="apt-get install dataset-fashion-mnist") as e:
        common.fashion_paths(str(tmp_path))
    assert str(tmp_path) in str(e.value) and "train-images-idx3-ubyte" in str(e.value)


def test_the_study_refuses_a_wrong_data_directory(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "convergence_fashion.py"), "--quick",
                          "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "dataset-fashion-mnist" in res.stderr and "nowhere" in res.stderr


def test_the_installed_fashion_mnist_files():
    """The Debian package's files: 60,000 + 10,000 images of 28x28, 10 balanced classes."""
    xtr, ytr, xte, yte = common.load_fashion_arrays()
    assert xtr.shape == (60000, 28, 28) and xte.shape == (10000, 28, 28)
    assert np.bincount(ytr).tolist() == [6000] * 10 and np.bincount(yte).tolist() == [1000] * 10
    assert 60 < xtr.mean() < 85  # grey clothing on black: the mean pixel is about 72.9 of 255


def test_the_splits_are_fixed_and_disjoint(monkeypatch):
    tr, va = common.fashion_split(60000, common.FASHION_TRAIN)
    small_tr, small_va = common.fashion_split(60000, 3000)
    assert len(tr) == common.FASHION_TRAIN and len(va) == common.FASHION_VAL
    assert not set(tr.tolist()) & set(va.tolist())  # no training image is validated on
    assert (small_va == va).all() and (small_tr == tr[:3000]).all()
    with pytest.raises(ValueError, match="available"):
        common.fashion_split(60000, 56000)
    monkeypatch.setenv(common.FASHION_TRAIN_ENV, "3000")
    common._CACHE.pop("fashion", None)
    try:
        x_tr, y_tr, x_va, y_va, x_te, y_te = common.load_task("fashion")
    finally:
        common._CACHE.pop("fashion", None)
    assert x_tr.shape == (3000, 1, 28, 28) and x_va.shape == (common.FASHION_VAL, 1, 28, 28)
    assert x_te.shape == (10000, 1, 28, 28) and y_te.bincount().tolist() == [1000] * 10
    assert abs(float(x_tr.mean())) < 1e-4 and abs(float(x_tr.std()) - 1.0) < 1e-4  # standardised on the subset
    raw = common.load_fashion_arrays()
    assert (y_tr.numpy() == raw[1][small_tr]).all() and (y_va.numpy() == raw[1][va]).all()

"""Checkpoint format, atomic write and exact continuation (no MPI)."""

import os

import pytest
import torch

from hvd_dc import checkpoint
from server_fixtures import flat_weights, make_state, push


def _state(num_workers=2, seed=0, **dc):
    torch.manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(4))]
    return make_state(torch.optim.Adam(params, lr=1e-2), num_workers, **dc)


def _grads(step):
    g = torch.Generator().manual_seed(step)
    return [torch.randn(5, 3, generator=g), torch.randn(4, generator=g)]


def test_restored_state_continues_bit_identically(tmp_path):
    a = _state()
    for step in range(7):
        push(a, step % 2, _grads(step))
        a.pull(step % 2)
    path = str(tmp_path / "ck.pt")
    checkpoint.save_atomic(checkpoint.snapshot(a, 1.0), path)
    b = _state(seed=1)  # different initial weights: everything must come from the file
    assert checkpoint.restore(b, checkpoint.load(path), path) is None
    for step in range(7, 15):
        for s in (a, b):
            push(s, step % 2, _grads(step))
            s.pull(step % 2)
    assert torch.equal(flat_weights(a), flat_weights(b))
    assert a.updates == b.updates == 15
    assert a.accepted.tolist() == b.accepted.tolist()


def test_checkpoint_loads_with_weights_only(tmp_path):
    path = tmp_path / "ck.pt"
    checkpoint.save_atomic(checkpoint.snapshot(_state(), 0.0), str(path))
    obj = torch.load(path, weights_only=True)
    assert obj["format"] == checkpoint.FORMAT


def test_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "ck.pt")
    first = _state()
    checkpoint.save_atomic(checkpoint.snapshot(first, 0.0), path)
    push(first, 0, _grads(1))

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_atomic(checkpoint.snapshot(first, 0.0), path)
    monkeypatch.undo()
    assert checkpoint.load(path)["updates"] == 0
    checkpoint.save_atomic(checkpoint.snapshot(first, 0.0), path)  # and the next write cleans up
    assert checkpoint.load(path)["updates"] == 1
    assert [f for f in os.listdir(tmp_path) if ".tmp-" in f] == []


def test_a_different_model_is_refused_by_name(tmp_path):
    path = str(tmp_path / "ck.pt")
    checkpoint.save_atomic(checkpoint.snapshot(_state(), 0.0), path)
    other = make_state(torch.optim.Adam([torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(5))]), 2)
    with pytest.raises(checkpoint.CheckpointMismatch, match=r"parameter \['g0.p1', \[4\]"):
        checkpoint.restore(other, checkpoint.load(path), path)
    sgd = make_state(torch.optim.SGD([torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(4))], lr=0.1), 2)
    with pytest.raises(checkpoint.CheckpointMismatch, match="optimizer_class"):
        checkpoint.restore(sgd, checkpoint.load(path), path)


def test_not_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(checkpoint.CheckpointMismatch, match="not an hvd_dc checkpoint"):
        checkpoint.load(str(path))


def test_resume_with_another_worker_count_keeps_weights_and_optimizer(tmp_path):
    a = _state(num_workers=2)
    for step in range(4):
        push(a, step % 2, _grads(step))
    path = str(tmp_path / "ck.pt")
    checkpoint.save_atomic(checkpoint.snapshot(a, 0.0), path)
    b = _state(num_workers=3, seed=5)
    warning = checkpoint.restore(b, checkpoint.load(path), path)
    assert "written with 2 workers and this job has 3" in warning
    assert torch.equal(flat_weights(a), flat_weights(b)) and b.updates == 4
    assert all(torch.equal(bk, b.weights) for bk in b.backups)


def test_the_staleness_record_is_restored_with_the_counters(tmp_path):
    a = _state(num_workers=3)
    for step in range(9):
        push(a, [0, 1, 1, 2, 0][step % 5], _grads(step))
        a.pull(step % 3)
    path = str(tmp_path / "ck.pt")
    checkpoint.save_atomic(checkpoint.snapshot(a, 0.0), path)
    b = _state(num_workers=3, seed=2)
    checkpoint.restore(b, checkpoint.load(path), path)
    assert sum(sum(h.values()) for h in a.staleness.hists) == a.updates == 9
    assert b.staleness.hists == a.staleness.hists and b.summary() == a.summary()
    push(a, 1, _grads(20))
    push(b, 1, _grads(20))
    assert b.staleness.hists == a.staleness.hists


def test_a_version_1_checkpoint_still_loads_without_staleness(tmp_path):
    a = _state()
    push(a, 0, _grads(0))
    new = checkpoint.snapshot(a, 0.0)
    old = {**new["chunks"][0], "format": "hvd_dc.checkpoint/1", "model": new["model"], "num_workers": 2}
    del old["staleness"]  # format 1 had one state at the top level and no staleness record
    path = str(tmp_path / "v1.pt")
    checkpoint.save_atomic(old, path)
    b = _state(seed=3)
    assert checkpoint.restore(b, checkpoint.load(path), path) is None
    assert torch.equal(flat_weights(a), flat_weights(b)) and b.updates == 1 and b.staleness.hists == [{}, {}]

"""The staged server (server_device): same bits as the window-resident server.

A staged ServerState keeps its master weights, backups and optimizer state on its device
and copies each gradient in and each reply out. On the CPU (``device="cpu"``) that path
must give exactly what the unstaged server gives, reply areas included; on CUDA (run only
where a GPU exists) it must agree to float rounding.
"""

from __future__ import annotations

import pytest
import torch

from hvd_dc import checkpoint
from server_fixtures import make_state, push

CUDA_REASON = "no CUDA device (torch.cuda.is_available() is False): CUDA server tests SKIPPED"


def _model(dtypes=(torch.float32,)):
    g = torch.Generator().manual_seed(5)
    params = []
    for i, dt in enumerate(dtypes):
        params.append(torch.nn.Parameter(torch.randn(7, 5, generator=g).to(dt)))
        params.append(torch.nn.Parameter(torch.randn(11, generator=g).to(dt)))
    return params


def _optimizer(name, params):
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=True)
    if name == "adam":
        return torch.optim.Adam(params, lr=1e-2)
    if name == "sgd_plain":
        return torch.optim.SGD(params, lr=0.1)
    raise ValueError(name)


def _schedule(state_a, state_b, n_workers, dtypes, steps=24, nonfinite_at=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [p.shape for p in state_a.layout.params]
    for t in range(steps):
        m = int(torch.randint(n_workers, (1,), generator=g))
        grads = [torch.randn(*[int(d) for d in s], generator=g).to(dtypes[i // 2]) for i, s in enumerate(shapes)]
        if t == nonfinite_at:
            grads[0].view(-1)[3] = float("nan")
        pull = bool(torch.randint(2, (1,), generator=g))
        ok_a = push(state_a, m, grads, pull=pull)
        ok_b = push(state_b, m, grads, pull=pull)
        assert ok_a == ok_b
        if not pull and t % 5 == 0:
            state_a.pull(m)
            state_b.pull(m)


def _assert_same(host, staged):
    assert torch.equal(host.weights, staged.weights.cpu())
    for r_host, r_staged, b_staged in zip(host.replies, staged.replies, staged.backups):
        assert torch.equal(r_host, r_staged), "a reply area differs"
        assert torch.equal(r_staged, b_staged.cpu()), "a reply area is not its worker's w_bak"
    for k, bufs in host.compensator.mean_square.items():
        for a, b in zip(bufs, staged.compensator.mean_square[k]):
            assert torch.equal(a, b.cpu())
    assert host.updates == staged.updates
    assert host.rejected.tolist() == staged.rejected.tolist()
    assert host.updates_at_pull.tolist() == staged.updates_at_pull.tolist()


@pytest.mark.parametrize("opt_name", ["sgd", "adam", "sgd_plain"])
@pytest.mark.parametrize("variant", ["adaptive", "constant"])
def test_staged_cpu_server_bit_matches_window_server(opt_name, variant):
    dtypes = (torch.float32, torch.float64)
    host = make_state(_optimizer(opt_name, _model(dtypes)), 3, variant=variant)
    staged = make_state(_optimizer(opt_name, _model(dtypes)), 3, device="cpu", variant=variant)
    assert staged.staged and not host.staged
    _schedule(host, staged, 3, dtypes, nonfinite_at=7)
    assert host.rejected.sum() == 1
    _assert_same(host, staged)


def test_staged_server_with_fp16_wire_and_16_bit_parameters():
    dtypes = (torch.float32, torch.bfloat16)
    host = make_state(_optimizer("sgd", _model(dtypes)), 2, compression="fp16")
    staged = make_state(_optimizer("sgd", _model(dtypes)), 2, device="cpu", compression="fp16")
    _schedule(host, staged, 2, dtypes)
    _assert_same(host, staged)


def test_staged_server_starts_every_reply_at_w0():
    staged = make_state(_optimizer("sgd", _model()), 3, device="cpu")
    for reply in staged.replies:
        assert torch.equal(reply, staged.weights)
    assert all(r.data_ptr() != b.data_ptr() for r, b in zip(staged.replies, staged.backups))


def test_staged_server_checkpoint_restores_replies(tmp_path):
    dtypes = (torch.float32,)
    a = make_state(_optimizer("sgd", _model(dtypes)), 2, device="cpu")
    b = make_state(_optimizer("sgd", _model(dtypes)), 2, device="cpu")
    _schedule(a, b, 2, dtypes, steps=9)
    path = str(tmp_path / "ck.pt")
    checkpoint.save_atomic(checkpoint.snapshot(a, 1.0), path)
    fresh = make_state(_optimizer("sgd", _model(dtypes)), 2, device="cpu")
    assert checkpoint.restore(fresh, checkpoint.load(path), path) is None
    _assert_same(a, fresh)
    # the restored state continues the same trajectory as the original
    _schedule(a, fresh, 2, dtypes, steps=6, seed=3)
    _assert_same(a, fresh)


@pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_REASON)
@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_cuda_server_agrees_with_cpu_server(opt_name):
    dtypes = (torch.float32,)
    host = make_state(_optimizer(opt_name, _model(dtypes)), 3)
    cuda = make_state(_optimizer(opt_name, _model(dtypes)), 3, device="cuda")
    assert cuda.weights.is_cuda and cuda.backups[0].is_cuda and not cuda.replies[0].is_cuda
    _schedule(host, cuda, 3, dtypes, nonfinite_at=4)
    torch.testing.assert_close(cuda.weights.cpu().view(torch.float32), host.weights.view(torch.float32),
                               rtol=1e-5, atol=1e-6)
    for r, b in zip(cuda.replies, cuda.backups):
        assert torch.equal(r, b.cpu())
    assert cuda.rejected.tolist() == host.rejected.tolist()

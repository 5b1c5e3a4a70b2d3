"""The fused C kernels give the same bits as the torch path (HVD_DC_KERNELS=torch)."""

import pytest
import torch

from hvd_dc import kernels
from hvd_dc.dc_math import DCVariant
from server_fixtures import flat_weights, make_state, push


def test_the_extension_is_built():
    assert kernels.simd() != "unavailable", "hvd_dc._kernels was not built: install with a C compiler (pip install -e .)"
    assert kernels.available()


def _run(monkeypatch, path, opt_factory, variant, dtypes, steps=12, pull_with_push=True, workers=3):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(n, dtype=dt)) for n, dt in zip((37, 1000, 5), dtypes)]
    lam = {"constant": 0.5, "adaptive": 2.0, "none": None}[variant]
    state = make_state(opt_factory(params), workers, kernels=path, variant=variant, dc_lambda=lam)
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        m = step % workers
        grads = [torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3 for p in params]
        if pull_with_push:
            ok, _ = state.apply_push(m, _wire(state, grads), _hyper(state), pull=True)
            assert ok
        else:
            assert push(state, m, grads)
            if step % 2:
                state.pull(m)
    return state


def _wire(state, grads):
    layout = state.layout
    wire = torch.zeros(layout.wire_nbytes, dtype=torch.uint8)
    segs = layout.segment_views(wire, wire=True)
    for seg, flat in zip(layout.wire_segments, segs):
        for i, off in zip(seg.param_indices, seg.param_offsets):
            flat[off : off + grads[i].numel()].copy_(grads[i].reshape(-1))
    return segs


def _hyper(state):
    from hvd_dc.layout import read_hyperparameters

    values = [0.0] * len(state.spec.hyper_slots)
    read_hyperparameters(state.spec.groups, state.spec.hyper_slots, values)
    return values


SGD_KINDS = {
    "plain": lambda ps: torch.optim.SGD(ps, lr=0.05),
    "momentum": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
    "nesterov+wd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "dampening+wd+maximize": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.5, dampening=0.3, weight_decay=1e-2, maximize=True),
    "two groups": lambda ps: torch.optim.SGD([{"params": ps[:1], "lr": 0.1, "momentum": 0.9}, {"params": ps[1:]}], lr=0.02),
}


@pytest.mark.parametrize("kind", list(SGD_KINDS))
@pytest.mark.parametrize("variant", ["adaptive", "constant", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("pull_with_push", [True, False])
def test_fused_sgd_bit_matches_torch(monkeypatch, kind, variant, dtype, pull_with_push):
    fused = _run(monkeypatch, "fused", SGD_KINDS[kind], variant, [dtype] * 3, pull_with_push=pull_with_push)
    ref = _run(monkeypatch, "torch", SGD_KINDS[kind], variant, [dtype] * 3, pull_with_push=pull_with_push)
    assert fused.fused_sgd and not ref.fused_sgd
    assert torch.equal(flat_weights(fused), flat_weights(ref))
    for a, b in zip(fused.backups, ref.backups):
        assert torch.equal(torch.cat([v.reshape(-1) for v in fused.layout.param_views(a)]),
                           torch.cat([v.reshape(-1) for v in ref.layout.param_views(b)]))
    if variant == "adaptive":
        for m in range(3):
            for x, y in zip(fused.compensator.mean_square_of(m), ref.compensator.mean_square_of(m)):
                assert torch.equal(x, y)


@pytest.mark.parametrize("opt", [lambda ps: torch.optim.Adam(ps, lr=1e-2), lambda ps: torch.optim.RMSprop(ps, lr=1e-2, momentum=0.5)],
                         ids=["adam", "rmsprop"])
@pytest.mark.parametrize("dtypes", [[torch.float32] * 3, [torch.float32, torch.bfloat16, torch.float64]], ids=["f32", "mixed"])
def test_fused_compensation_bit_matches_torch(monkeypatch, opt, dtypes):
    fused = _run(monkeypatch, "fused", opt, "adaptive", dtypes)
    ref = _run(monkeypatch, "torch", opt, "adaptive", dtypes)
    assert any(fused.fused_segments) and not any(ref.fused_segments)
    assert torch.equal(flat_weights(fused), flat_weights(ref))


def test_mixed_dtypes_with_sgd_use_the_per_segment_path(monkeypatch):
    fused = _run(monkeypatch, "fused", SGD_KINDS["momentum"], "adaptive", [torch.float32, torch.bfloat16, torch.float32])
    ref = _run(monkeypatch, "torch", SGD_KINDS["momentum"], "adaptive", [torch.float32, torch.bfloat16, torch.float32])
    assert not fused.fused_sgd and fused.fused_segments == [False, True]  # (bfloat16, float32) segments
    assert torch.equal(flat_weights(fused), flat_weights(ref))


def test_all_finite_kernel():
    for dtype in (torch.float32, torch.float64):
        t = torch.randn(1001, dtype=dtype)
        assert kernels.all_finite(t)
        for bad in (float("nan"), float("inf"), float("-inf")):
            u = t.clone()
            u[1000] = bad
            assert not kernels.all_finite(u)


def test_bad_kernel_arguments_are_refused():
    g = torch.zeros(10)
    with pytest.raises(ValueError, match="contiguous CPU torch.float32 tensor of 10 elements"):
        kernels.compensate(DCVariant.CONSTANT, g, torch.zeros(10, dtype=torch.float64), g, None, g, 0.1, 0.9, 1e-7)
    with pytest.raises(ValueError, match="momentum buffer"):
        kernels.sgd(DCVariant.NONE, g, g.clone(), g, None, None, None, 0.0, 0.9, 1e-7,
                    {"lr": 0.1, "momentum": 0.9, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False})

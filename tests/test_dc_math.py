"""DC math against the float64 reference in tests/reference.py (written from the paper)."""

import numpy as np
import pytest
import torch

from hvd_dc.dc_math import DCOptions, DelayCompensator, compensate_reference, default_lambda, validate_dc_options
from reference import Algorithm2, adaptive_lambda, dc_gradient
from server_fixtures import flat_weights, make_state, push

RTOL = 1e-12  # float64 arithmetic in a different order than the reference


def _rand(n, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g, dtype=torch.float64) * scale


def test_constant_matches_formula():
    g, w, wb = _rand(257, 1), _rand(257, 2), _rand(257, 3)
    comp = DelayCompensator(DCOptions.create("constant", 0.04), 1, [257], [torch.float64])
    out = torch.empty(257, dtype=torch.float64)
    comp.compensate(0, 0, g, w, wb, out)
    ref = dc_gradient(g.numpy(), w.numpy(), wb.numpy(), 0.04)
    np.testing.assert_allclose(out.numpy(), ref, rtol=RTOL, atol=0)


def test_adaptive_matches_formula_over_several_pushes():
    comp = DelayCompensator(DCOptions.create("adaptive", 2.0, momentum=0.95, eps=1e-7), 1, [100], [torch.float64])
    ms_ref = np.zeros(100)
    for step in range(5):
        g, w, wb = _rand(100, 10 + step, 0.1), _rand(100, 20 + step), _rand(100, 30 + step)
        out = torch.empty(100, dtype=torch.float64)
        comp.compensate(0, 0, g, w, wb, out)
        lam = adaptive_lambda(ms_ref, g.numpy(), 2.0, 0.95, 1e-7)
        ref = dc_gradient(g.numpy(), w.numpy(), wb.numpy(), lam)
        np.testing.assert_allclose(out.numpy(), ref, rtol=RTOL, atol=0)
        np.testing.assert_allclose(comp.mean_square_of(0)[0].numpy(), ms_ref, rtol=RTOL, atol=0)


def test_adaptive_mean_square_is_per_worker_by_default():
    comp = DelayCompensator(DCOptions.create("adaptive", 2.0), 2, [10], [torch.float64])
    g = _rand(10, 5)
    comp.compensate(0, 1, g, _rand(10, 6), _rand(10, 7), torch.empty(10, dtype=torch.float64))
    assert torch.count_nonzero(comp.mean_square_of(0)[0]) == 0
    assert torch.count_nonzero(comp.mean_square_of(1)[0]) == 10


def test_adaptive_global_mean_square_is_shared():
    comp = DelayCompensator(DCOptions.create("adaptive", 2.0, mean_square="global"), 2, [10], [torch.float64])
    ms_ref = np.zeros(10)
    for m, seed in [(0, 1), (1, 2), (0, 3)]:
        g, w, wb = _rand(10, seed), _rand(10, seed + 10), _rand(10, seed + 20)
        out = torch.empty(10, dtype=torch.float64)
        comp.compensate(0, m, g, w, wb, out)
        lam = adaptive_lambda(ms_ref, g.numpy(), 2.0, 0.95, 1e-7)
        np.testing.assert_allclose(out.numpy(), dc_gradient(g.numpy(), w.numpy(), wb.numpy(), lam), rtol=RTOL)
    assert comp.mean_square_of(0)[0] is comp.mean_square_of(1)[0]


@pytest.mark.parametrize("variant", ["constant", "adaptive"])
def test_vectorised_path_bit_matches_the_module_reference(variant):
    n = 1000
    comp = DelayCompensator(DCOptions.create(variant), 1, [n], [torch.float32])
    ms = torch.zeros(n)
    for step in range(3):
        g, w, wb = (_rand(n, 40 + 3 * step + k).float() for k in range(3))
        out = torch.empty(n)
        comp.compensate(0, 0, g, w, wb, out)
        ref = compensate_reference(g, w, wb, variant, default_lambda(variant), mean_square=ms)
        assert torch.equal(out, ref)


def test_out_may_alias_grad():
    g, w, wb = _rand(50, 1), _rand(50, 2), _rand(50, 3)
    expected = dc_gradient(g.numpy(), w.numpy(), wb.numpy(), 0.5)
    comp = DelayCompensator(DCOptions.create("constant", 0.5), 1, [50], [torch.float64])
    comp.compensate(0, 0, g, w, wb, g)
    np.testing.assert_allclose(g.numpy(), expected, rtol=RTOL)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_parameters_compute_in_float32(dtype):
    g32, w32, wb32 = _rand(64, 1, 0.01).float(), _rand(64, 2).float(), _rand(64, 3).float()
    g, w, wb = g32.to(dtype), w32.to(dtype), wb32.to(dtype)
    comp = DelayCompensator(DCOptions.create("adaptive", 2.0), 1, [64], [dtype])
    out = torch.empty(64, dtype=dtype)
    comp.compensate(0, 0, g, w, wb, out)
    ms = np.zeros(64)
    lam = adaptive_lambda(ms, g.double().numpy(), 2.0, 0.95, 1e-7)
    ref = dc_gradient(g.double().numpy(), w.double().numpy(), wb.double().numpy(), lam)
    np.testing.assert_allclose(out.double().numpy(), ref, rtol=1e-2, atol=1e-3)
    assert comp.mean_square_of(0)[0].dtype == torch.float32


def _sgd_state(variant, lam, num_workers=2, n=33, **opt_kw):
    w0 = _rand(n, 99)
    p = torch.nn.Parameter(w0.clone())
    opt = torch.optim.SGD([p], lr=0.1, **opt_kw)
    return make_state(opt, num_workers, variant=variant, dc_lambda=lam), w0


@pytest.mark.parametrize("variant", ["constant", "adaptive", "none"])
def test_lambda_zero_is_plain_sgd(variant):
    lam = None if variant == "none" else 0.0
    state, w0 = _sgd_state(variant, lam)
    w = w0.clone()
    for step, m in enumerate([0, 1, 1, 0, 1]):
        if step % 2 == 0:
            state.pull(m)
        g = _rand(33, 200 + step)
        assert push(state, m, [g])
        w = w - 0.1 * g
    np.testing.assert_allclose(flat_weights(state).numpy(), w.numpy(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    "opt_kw",
    [
        dict(momentum=0.9),
        dict(momentum=0.9, weight_decay=1e-2),
        dict(momentum=0.9, nesterov=True, weight_decay=5e-4),
        dict(weight_decay=1e-2),
    ],
    ids=["momentum", "momentum+wd", "nesterov+wd", "wd"],
)
@pytest.mark.parametrize("variant", ["constant", "adaptive"])
def test_momentum_and_weight_decay_apply_to_the_compensated_gradient(variant, opt_kw):
    lam = 0.5 if variant == "constant" else 2.0
    state, w0 = _sgd_state(variant, lam, **opt_kw)
    ref = Algorithm2(w0.numpy(), 2, variant, lam, lr=0.1, momentum=opt_kw.get("momentum", 0.0),
                     weight_decay=opt_kw.get("weight_decay", 0.0), nesterov=opt_kw.get("nesterov", False))
    for step, (m, pull) in enumerate([(0, False), (1, False), (0, True), (1, False), (0, False), (1, True), (0, False)]):
        if pull:
            state.pull(m)
            ref.pull(m)
        g = _rand(33, 300 + step, 0.5)
        assert push(state, m, [g])
        ref.push(m, g.numpy())
    np.testing.assert_allclose(flat_weights(state).numpy(), ref.w, rtol=1e-11, atol=1e-13)


def test_backup_is_the_copy_the_worker_pulled_not_the_last_update():
    """The mistake PAPER.md warns about: w - w_bak must be m's drift since its own pull."""
    state, w0 = _sgd_state("constant", 1.0, num_workers=2, n=4)
    ref = Algorithm2(w0.numpy(), 2, "constant", 1.0, lr=0.1)
    for m, g in [(1, 1.0), (1, 2.0), (1, -1.0), (0, 0.5)]:  # worker 0 computed on w0, three updates ago
        grad = torch.full((4,), g, dtype=torch.float64)
        push(state, m, [grad])
        ref.push(m, grad.numpy())
        if m == 1:
            state.pull(1)
            ref.pull(1)
    np.testing.assert_allclose(flat_weights(state).numpy(), ref.w, rtol=1e-12)
    backup0 = torch.cat([v.reshape(-1) for v in state.layout.param_views(state.backups[0])])
    assert torch.equal(backup0, w0)  # still the w_0 worker 0 computed on


def test_nonfinite_gradient_is_rejected_and_counted():
    state, w0 = _sgd_state("adaptive", 2.0)
    before = flat_weights(state).clone()
    g = _rand(33, 1)
    g[5] = float("nan")
    assert not push(state, 0, [g])
    g[5] = float("inf")
    assert not push(state, 1, [g])
    assert torch.equal(flat_weights(state), before)
    assert state.rejected.tolist() == [1, 1]
    assert state.updates == 0
    assert torch.count_nonzero(state.compensator.mean_square_of(0)[0]) == 0  # MeanSquare untouched too


@pytest.mark.parametrize(
    "args, match",
    [
        (("bogus", None, 0.95, 1e-7), "dc_variant"),
        (("constant", -1.0, 0.95, 1e-7), "dc_lambda"),
        (("constant", float("nan"), 0.95, 1e-7), "dc_lambda"),
        (("none", 0.5, 0.95, 1e-7), "dc_lambda"),
        (("adaptive", None, 1.0, 1e-7), "dc_momentum"),
        (("adaptive", None, 0.95, 0.0), "dc_eps"),
    ],
)
def test_bad_options_are_named(args, match):
    with pytest.raises(ValueError, match=match):
        validate_dc_options(*args)


def test_paper_lambdas():
    assert validate_dc_options("constant", None, 0.95, 1e-7) == 0.04
    assert validate_dc_options("adaptive", None, 0.95, 1e-7) == 2.0
    assert validate_dc_options("none", None, 0.95, 1e-7) == 0.0


class _MySGD(torch.optim.SGD):
    """Not on the element-wise list: the server must fall back to per-parameter views."""


@pytest.mark.parametrize("opt_cls, kw", [(torch.optim.Adam, dict(lr=1e-2, weight_decay=1e-3)),
                                         (torch.optim.RMSprop, dict(lr=1e-2, momentum=0.5)),
                                         (_MySGD, dict(lr=0.1, momentum=0.9))])
def test_server_runs_the_users_optimizer_class(opt_cls, kw):
    """With lambda = 0 the server's master weights follow the user's optimizer exactly,
    whether it runs on flat segments or (unknown classes) on per-parameter views."""
    torch.manual_seed(0)
    shapes = [(4, 3), (3,), (2, 2)]
    local = [torch.nn.Parameter(torch.randn(s, dtype=torch.float64)) for s in shapes]
    served = [torch.nn.Parameter(p.detach().clone()) for p in local]
    local_opt = opt_cls(local, **kw)
    state = make_state(opt_cls(served, **kw), 1, variant="none")
    assert state.flat_optimizer == (opt_cls is not _MySGD)
    for step in range(6):
        grads = [torch.randn(s, dtype=torch.float64) for s in shapes]
        for p, g in zip(local, grads):
            p.grad = g.clone()
        local_opt.step()
        assert push(state, 0, grads)
    expected = torch.cat([p.detach().reshape(-1) for p in local])
    np.testing.assert_allclose(flat_weights(state).numpy(), expected.numpy(), rtol=1e-12, atol=1e-14)

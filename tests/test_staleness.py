"""Staleness policies (hvd_dc/staleness.py) against the float64 references in tests/reference.py,
on the server's own ServerState: the factors, Gap-Aware's running average, the combination
with DC-ASGD, the fused/torch paths, checkpoints and the option checks."""

import numpy as np
import pytest
import torch

from hvd_dc import checkpoint, kernels
from hvd_dc.layout import diff_specs
from hvd_dc.staleness import (
    POLICIES,
    StalenessPolicy,
    delay_adaptive_scale,
    gap_reference,
    staleness_lr_scale,
    validate_staleness_policy,
)
from reference import Algorithm2, delay_adaptive_factor, gap_damped, staleness_lr_factor
from server_fixtures import flat_weights, make_spec, make_state, push

N = 37


def _rand(n, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g, dtype=torch.float64) * scale


def test_scalar_factors_match_the_formulas():
    for tau in range(0, 70):
        assert staleness_lr_scale(tau) == staleness_lr_factor(tau)
        for m in (1, 4, 8, 32):
            assert delay_adaptive_scale(tau, m) == delay_adaptive_factor(tau, m)
    assert staleness_lr_scale(0) == staleness_lr_scale(1) == 1.0 and staleness_lr_scale(4) == 0.25
    assert delay_adaptive_scale(8, 8) == 1.0 and delay_adaptive_scale(9, 8) == 1.0 / 9


def test_gap_reference_of_the_module_matches_the_element_wise_one():
    g, w, wb = _rand(N, 1), _rand(N, 2), _rand(N, 3)
    c = _rand(N, 4, 0.1).abs()
    c[::5] = 0.0  # never moved: G = 1 there
    for k in (0, 1, 3, 50):
        ref = gap_damped(g.numpy(), w.numpy(), wb.numpy(), c.numpy(), k)
        np.testing.assert_allclose(gap_reference(g, w, wb, c, k).numpy(), ref, rtol=1e-14, atol=0)
    # the gap only ever damps
    out = gap_reference(g, w, wb, c, 3)
    assert bool((out.abs() <= g.abs()).all()) and not torch.equal(out, g)


# ---------------------------------------------------------------------------------------
# the server's state, push by push, against Algorithm 2 with the policy


SCHEDULE = [  # (worker, pull before pushing): staleness 0..5, repeated pulls, a straggler (worker 2)
    (0, False), (1, False), (2, False), (0, True), (1, True), (0, False), (1, False), (0, True),
    (1, True), (0, False), (2, False), (1, False), (0, True), (1, True), (2, True), (0, False),
]


def _sgd_state(policy, variant, lam, num_workers=3, **opt_kw):
    w0 = _rand(N, 99)
    p = torch.nn.Parameter(w0.clone())
    opt = torch.optim.SGD([p], lr=0.1, **opt_kw)
    return make_state(opt, num_workers, variant=variant, dc_lambda=lam, staleness_policy=policy), w0


def _run_both(policy, variant, lam, opt_kw, scale=0.5):
    state, w0 = _sgd_state(policy, variant, lam, **opt_kw)
    ref = Algorithm2(w0.numpy(), 3, variant, lam or 0.0, lr=0.1, momentum=opt_kw.get("momentum", 0.0),
                     weight_decay=opt_kw.get("weight_decay", 0.0), nesterov=opt_kw.get("nesterov", False),
                     policy=policy)
    seen = []
    for step, (m, pull) in enumerate(SCHEDULE):
        if pull:
            state.pull(m)
            ref.pull(m)
        g = _rand(N, 500 + step, scale)
        seen.append(int(state.updates - state.updates_at_pull[m]))
        assert push(state, m, [g])
        ref.push(m, g.numpy())
        np.testing.assert_allclose(flat_weights(state).numpy(), ref.w, rtol=1e-11, atol=1e-13,
                                   err_msg=f"push {step} (worker {m}, staleness {seen[-1]})")
    assert seen == ref.staleness
    return state, ref


@pytest.mark.parametrize("opt_kw", [{}, dict(momentum=0.9), dict(momentum=0.9, weight_decay=1e-2, nesterov=True)],
                         ids=["sgd", "momentum", "nesterov+wd"])
@pytest.mark.parametrize("variant, lam", [("none", None), ("constant", 0.5), ("adaptive", 2.0)])
@pytest.mark.parametrize("policy", ["staleness_lr", "delay_adaptive", "gap_aware"])
def test_server_applies_the_policy_as_the_reference(policy, variant, lam, opt_kw):
    state, ref = _run_both(policy, variant, lam, opt_kw)
    assert max(ref.staleness) > 3  # the schedule reaches past tau_C = M = 3 (delay_adaptive acts)
    # Gap-Aware runs inside the fused SGD kernel; the scalar policies take the torch optimizer step
    assert state.fused_sgd == (policy == "gap_aware" and kernels.available())
    if policy == "gap_aware":
        np.testing.assert_allclose(state.policy.c_avg[0].numpy(), ref.c_avg, rtol=1e-11, atol=1e-15)
        assert state.policy.updates == len(SCHEDULE)


@pytest.mark.parametrize("policy", ["staleness_lr", "delay_adaptive", "gap_aware"])
def test_each_policy_changes_the_trajectory(policy):
    """The comparison above cannot pass by both sides ignoring the policy."""
    with_policy, _ = _run_both(policy, "adaptive", 2.0, {})
    without, _ = _run_both("none", "adaptive", 2.0, {})
    assert not torch.allclose(flat_weights(with_policy), flat_weights(without), rtol=1e-6)


def test_policy_none_keeps_the_fused_sgd_kernel():
    state, _ = _sgd_state("none", "adaptive", 2.0)
    assert state.fused_sgd == kernels.available()
    assert not state.policy.active


@pytest.mark.skipif(not kernels.available(), reason="the fused kernels are not built")
@pytest.mark.parametrize("policy", POLICIES)
def test_fused_compensation_and_torch_path_give_the_same_bits(policy):
    """With a policy, the compensation (and with Gap-Aware the whole step) runs in the fused
    kernel: same bits as the torch path."""
    torch.manual_seed(0)
    shapes = [(6, 5), (7,)]

    def run(kernel_choice):
        params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]  # float32
        state = make_state(torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3), 3,
                           kernels=kernel_choice, variant="adaptive", staleness_policy=policy)
        assert state.fused_segments == [kernel_choice == "fused"] * len(state.fused_segments)
        for step, (m, pull) in enumerate(SCHEDULE):
            if pull:
                state.pull(m)
            gen = torch.Generator().manual_seed(step)
            push(state, m, [torch.randn(s, generator=gen) for s in shapes])
        assert state.fused_sgd == (kernel_choice == "fused" and policy in ("none", "gap_aware"))
        return flat_weights(state), state.policy.c_avg

    torch.manual_seed(0)
    fused, c_fused = run("fused")
    torch.manual_seed(0)
    plain, c_plain = run("torch")
    assert torch.equal(fused, plain)
    for a, b in zip(c_fused, c_plain):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gap_aware_on_16_bit_parameters_keeps_float32_state(dtype):
    p = torch.nn.Parameter(_rand(N, 7).to(dtype))
    state = make_state(torch.optim.SGD([p], lr=0.1), 2, variant="none", staleness_policy="gap_aware")
    for step, (m, pull) in enumerate(SCHEDULE[:8]):
        if pull:
            state.pull(m % 2)
        assert push(state, m % 2, [_rand(N, step).to(dtype)])
    assert state.policy.c_avg[0].dtype == torch.float32
    assert bool(torch.isfinite(flat_weights(state)).all())
    assert bool((state.policy.c_avg[0] > 0).any())


def test_rejected_push_leaves_the_policy_state_alone():
    state, _ = _sgd_state("gap_aware", "none", None)
    push(state, 0, [_rand(N, 1)])
    c = state.policy.c_avg[0].clone()
    g = _rand(N, 2)
    g[3] = float("nan")
    assert not push(state, 1, [g])
    assert torch.equal(state.policy.c_avg[0], c) and state.policy.updates == 1


# ---------------------------------------------------------------------------------------
# checkpoints, workers' agreement, option checks


def test_gap_aware_state_survives_a_checkpoint_and_continues_bit_identically(tmp_path):
    def build(seed):
        torch.manual_seed(seed)
        params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(4))]
        return make_state(torch.optim.SGD(params, lr=0.05, momentum=0.9), 2, variant="adaptive",
                          staleness_policy="gap_aware")

    def grads(step):
        g = torch.Generator().manual_seed(step)
        return [torch.randn(5, 3, generator=g), torch.randn(4, generator=g)]

    a = build(0)
    for step in range(7):
        push(a, step % 2, grads(step))
        if step % 3 == 0:
            a.pull(step % 2)
    path = str(tmp_path / "ck.pt")
    checkpoint.save_atomic(checkpoint.snapshot(a, 1.0), path)
    b = build(1)
    assert checkpoint.restore(b, checkpoint.load(path), path) is None
    assert b.policy.updates == 7 and torch.equal(b.policy.c_avg[0], a.policy.c_avg[0])
    for step in range(7, 15):
        for s in (a, b):
            push(s, step % 2, grads(step))
            if step % 3 == 0:
                s.pull(step % 2)
    assert torch.equal(flat_weights(a), flat_weights(b))
    # without the saved average, the continuation differs: the state matters
    c = build(1)
    ck = checkpoint.load(path)
    del ck["chunks"][0]["staleness_policy"]
    checkpoint.restore(c, ck, path)
    for step in range(7, 15):
        push(c, step % 2, grads(step))
        if step % 3 == 0:
            c.pull(step % 2)
    assert not torch.equal(flat_weights(a), flat_weights(c))


def test_checkpoint_of_another_policy_is_refused(tmp_path):
    params = [torch.nn.Parameter(torch.randn(4))]
    a = make_state(torch.optim.SGD(params, lr=0.1), 2, staleness_policy="gap_aware")
    path = str(tmp_path / "ck.pt")
    checkpoint.save_atomic(checkpoint.snapshot(a, 0.0), path)
    b = make_state(torch.optim.SGD([torch.nn.Parameter(torch.randn(4))], lr=0.1), 2, staleness_policy="staleness_lr")
    with pytest.raises(checkpoint.CheckpointMismatch, match="staleness_policy='gap_aware'"):
        checkpoint.restore(b, checkpoint.load(path), path)


def test_checkpoint_from_before_policies_restores_as_none(tmp_path):
    a = make_state(torch.optim.SGD([torch.nn.Parameter(torch.randn(4))], lr=0.1), 2)
    ck = checkpoint.snapshot(a, 0.0)
    del ck["chunks"][0]["staleness_policy"], ck["model"]["staleness_policy"]
    b = make_state(torch.optim.SGD([torch.nn.Parameter(torch.randn(4))], lr=0.1), 2)
    assert checkpoint.restore(b, ck, "old.pt") is None
    c = make_state(torch.optim.SGD([torch.nn.Parameter(torch.randn(4))], lr=0.1), 2, staleness_policy="gap_aware")
    with pytest.raises(checkpoint.CheckpointMismatch, match="staleness_policy='none'"):
        checkpoint.restore(c, ck, "old.pt")


def test_workers_must_agree_on_the_policy():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.randn(3))], lr=0.1)
    a = make_spec(opt, 2, staleness_policy="none")
    b = make_spec(opt, 2, staleness_policy="gap_aware")
    assert diff_specs(a, b, 1) == "staleness_policy is 'none' on worker 0 but 'gap_aware' on worker 1"
    assert a.agreed_options()["staleness_policy"] == "none" != b.agreed_options()["staleness_policy"]
    assert diff_specs(a, make_spec(opt, 2), 1) is None


@pytest.mark.parametrize("bad", ["gap", "", None, "Gap_Aware"])
def test_unknown_policy_is_named(bad):
    with pytest.raises(ValueError, match="staleness_policy must be one of"):
        validate_staleness_policy(bad)
    with pytest.raises(ValueError, match="staleness_policy"):
        StalenessPolicy(bad, 2, [3], [torch.float32])


def test_public_optimizer_refuses_an_unknown_policy():
    import hvd_dc

    opt = torch.optim.SGD([torch.nn.Parameter(torch.randn(3))], lr=0.1)
    with pytest.raises(ValueError, match="staleness_policy must be one of"):
        hvd_dc.DistributedDCOptimizer(opt, staleness_policy="bogus")


@pytest.mark.parametrize("policy", ["staleness_lr", "gap_aware"])
def test_staged_server_state_applies_the_policy_identically(policy):
    """server_device staging (here through separate CPU buffers) keeps the policy's math."""
    def run(device):
        torch.manual_seed(3)
        params = [torch.nn.Parameter(torch.randn(6, 2)), torch.nn.Parameter(torch.randn(5))]
        state = make_state(torch.optim.SGD(params, lr=0.05), 3, device=device, variant="adaptive",
                           staleness_policy=policy)
        for step, (m, pull) in enumerate(SCHEDULE):
            if pull:
                state.pull(m)
            gen = torch.Generator().manual_seed(step)
            push(state, m, [torch.randn(6, 2, generator=gen), torch.randn(5, generator=gen)])
        return flat_weights(state)

    assert torch.equal(run(None), run("cpu"))


@pytest.mark.parametrize("policy", ["staleness_lr", "delay_adaptive", "gap_aware"])
def test_a_model_cut_into_chunks_gets_the_same_bits_as_one_state(policy):
    """Several servers / chunks (ShardState): each chunk runs its own policy state, and every
    chunk sees every push with the same staleness when the pushes arrive in one order, so
    the chunked model must equal the unchunked one bit for bit (Gap-Aware's average is
    element-wise, the scalar factors are per push)."""
    from hvd_dc.chunks import ChunkPlan, chunk_spec
    from hvd_dc.dc_math import DCOptions
    from hvd_dc.layout import ModelSpec, read_hyperparameters
    from hvd_dc.server_state import ShardState

    n, workers = 5000, 3

    def run(chunk_bytes):
        torch.manual_seed(5)
        p = torch.nn.Parameter(torch.randn(n))
        opt = torch.optim.SGD([p], lr=0.05, momentum=0.9)
        spec = ModelSpec.from_optimizer(opt, workers, chunk_bytes=chunk_bytes,
                                        dc=DCOptions.create("adaptive", staleness_policy=policy))
        plan = ChunkPlan.for_spec(spec, 1)
        initial = torch.zeros(plan.layout.nbytes, dtype=torch.uint8)
        plan.layout.param_views(initial)[0].copy_(p.detach())
        areas = [[torch.zeros(chunk_spec(spec, c).layout().nbytes, dtype=torch.uint8) for c in plan.chunks]
                 for _ in range(workers)]
        shard = ShardState(spec, plan.chunks, initial, areas)
        hyper = [0.0] * len(spec.hyper_slots)
        read_hyperparameters(spec.groups, spec.hyper_slots, hyper)
        for step, (m, pull) in enumerate(SCHEDULE * 2):
            g = torch.randn(n, generator=torch.Generator().manual_seed(step))
            for st, c in zip(shard.states, plan.chunks):
                if pull:
                    st.pull(m)
                wire = st.layout.segment_views(g[c.start:c.start + c.numel].clone().view(torch.uint8), wire=True)
                assert st.apply_push(m, wire, hyper)[0]
        return torch.cat([st.weight_segments[0] for st in shard.states]), len(plan.chunks)

    whole, one = run(1 << 20)
    cut, chunks = run(4096)
    assert one == 1 and chunks == 5
    assert torch.equal(whole, cut)

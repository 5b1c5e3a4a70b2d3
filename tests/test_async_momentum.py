"""Momentum under asynchrony on the server (hvd_dc/async_momentum.py): DANA against
references written from its formulas (tests/reference.py), the lowered-momentum baseline,
and the server-side lr scale, through the server's own ServerState."""

import random

import numpy as np
import pytest
import torch

from hvd_dc import checkpoint
from hvd_dc import kernels as hvd_kernels
from hvd_dc.async_momentum import reduced_momentum
from hvd_dc.chunks import ChunkPlan, chunk_spec
from hvd_dc.dc_math import DCOptions, default_lambda
from hvd_dc.server_state import ServerState, ShardState
from reference import Dana, DanaFloat32
from server_fixtures import flat_weights, make_spec, make_state, push


def schedule(num_workers, steps, n, seed, pulls=True, order="random"):
    """Pushes (each followed by its pull) and, with ``pulls``, some extra pull-only ops."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    ops = []
    for t in range(steps):
        m = t % num_workers if order == "round_robin" else rng.randrange(num_workers)
        if pulls and rng.random() < 0.15:
            ops.append(("pull", m, None))
        else:
            ops.append(("push", m, torch.randn(n, generator=gen) * 0.3))
    return ops


def hyper_of(state, lr, momentum, **extra):
    """The float64 hyperparameter slots of ``state``'s SGD group, as a worker sends them."""
    values = []
    group = {**state.spec.groups[0], "lr": lr, "momentum": momentum, **extra}
    for gi, key, j in state.spec.hyper_slots:
        values.append(float(group[key] if j < 0 else group[key][j]))
    return values


@pytest.mark.parametrize("kernels", ["fused", "torch"])
@pytest.mark.parametrize("variant", ["none", "constant", "adaptive"])
@pytest.mark.parametrize("num_workers", [2, 4, 8])
def test_dana_replay_bit_matches_the_float32_transcription(kernels, variant, num_workers):
    """Pushes and pulls in a random interleaving, with the lr and momentum changing as a
    scheduler on the workers would change them, and weight decay: the server's bits are
    the transcription's."""
    n = 301
    w0 = torch.randn(n, generator=torch.Generator().manual_seed(num_workers))
    lam = default_lambda(variant) if variant != "none" else None
    p = torch.nn.Parameter(w0.clone())
    opt = torch.optim.SGD([p], lr=0.05, momentum=0.9, weight_decay=1e-3)
    state = make_state(opt, num_workers, kernels=kernels, variant=variant, dc_lambda=lam, async_momentum="dana")
    if hvd_kernels.available():  # the fused kernel runs the whole push, or the torch path does
        assert state.update.fused_segments == [kernels == "fused"]
    ref = DanaFloat32(w0, num_workers, variant, default_lambda(variant))
    for t, (op, m, g) in enumerate(schedule(num_workers, 240, n, seed=11 * num_workers)):
        lr, mu = (0.05, 0.9) if t < 120 else (0.005, 0.8)
        if op == "push":
            assert push(state, m, [g], hyper=hyper_of(state, lr, mu, weight_decay=1e-3))
            ref.push(m, g, lr, mu, wd=1e-3)
        state.pull(m)
        ref.pull(m)
        assert torch.equal(state.backup_segments[m][0], ref.bak[m]), f"reply to worker {m} differs at op {t}"
    assert torch.equal(state.weight_segments[0], ref.w)


@pytest.mark.skipif(not hvd_kernels.available(), reason="the C extension is not built")
@pytest.mark.parametrize("policy", ["none", "gap_aware"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("variant", ["none", "adaptive"])
def test_dana_fused_kernel_gives_the_torch_path_bits_with_every_option(dtype, variant, policy):
    """maximize, dampening, weight decay, a first push after others, replies with and without
    a push, Gap-Aware's damping and its running average: the kernel and the torch path agree
    bit for bit."""
    n, M = 257, 3
    w0 = torch.randn(n, dtype=dtype, generator=torch.Generator().manual_seed(21))
    mk = lambda k: make_state(torch.optim.SGD([torch.nn.Parameter(w0.clone())], lr=0.05, momentum=0.8,  # noqa
                                              dampening=0.25, weight_decay=1e-2, maximize=True), M, kernels=k,
                              variant=variant, async_momentum="dana", staleness_policy=policy)
    fused, torch_path = mk("fused"), mk("torch")
    assert fused.update.fused_segments == [True] and torch_path.update.fused_segments == [False]
    for t, (op, m, g) in enumerate(schedule(M, 150, n, seed=22)):
        for st in (fused, torch_path):
            if op == "push":
                assert push(st, m, [g.to(dtype)], pull=t % 2 == 0)
            st.pull(m)
        assert torch.equal(fused.backups[m], torch_path.backups[m]), f"op {t}"
    assert torch.equal(fused.weights, torch_path.weights)
    for a, b in zip(fused.dana.velocity, torch_path.dana.velocity):
        assert torch.equal(a[0], b[0])
    for a, b in zip(fused.policy.c_avg, torch_path.policy.c_avg):
        assert torch.equal(a, b)
    assert fused.policy.updates == torch_path.policy.updates


@pytest.mark.parametrize("variant,policy", [("none", "none"), ("adaptive", "none"), ("none", "gap_aware"),
                                            ("adaptive", "gap_aware"), ("constant", "gap_aware")])
def test_dana_with_compensation_and_policy_matches_the_float64_reference(variant, policy):
    """Every rule at once (DC-ASGD to the look-ahead, Gap-Aware's gap from it, dampening,
    weight decay, maximize), float64 parameters against the element-wise reference."""
    n, M = 64, 4
    w0 = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    lam = default_lambda(variant) if variant != "none" else None
    p = torch.nn.Parameter(w0.clone())
    opt = torch.optim.SGD([p], lr=0.03, momentum=0.7, dampening=0.1, weight_decay=1e-2, maximize=True)
    state = make_state(opt, M, variant=variant, dc_lambda=lam, async_momentum="dana", staleness_policy=policy)
    ref = Dana(w0.numpy(), M, 0.03, 0.7, dampening=0.1, weight_decay=1e-2, maximize=True, variant=variant,
               lambda0=default_lambda(variant), policy=policy)
    for op, m, g in schedule(M, 200, n, seed=3):
        if op == "push":
            assert push(state, m, [g.double()])
            ref.push(m, g.double().numpy())
        state.pull(m)
        np.testing.assert_allclose(state.backup_segments[m][0].numpy(), ref.pull(m), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(state.weight_segments[0].numpy(), ref.w, rtol=1e-10, atol=1e-12)


def test_dana_with_one_worker_is_torch_nesterov():
    """With one worker DANA's reply is torch.optim.SGD(nesterov=True)'s parameters (torch
    stores the look-ahead), weight decay included, and DC-ASGD-a and Gap-Aware change
    nothing (the look-ahead the gradient was computed on is where it is applied)."""
    n = 50
    w0 = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    target = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    q = torch.nn.Parameter(w0.clone())
    torch_opt = torch.optim.SGD([q], lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2)
    states = {}
    for name, extra in {"dana": {}, "dana+dc": {"variant": "adaptive"},
                        "dana+ga": {"staleness_policy": "gap_aware"}}.items():
        p = torch.nn.Parameter(w0.clone())
        opt = torch.optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2)
        states[name] = make_state(opt, 1, async_momentum="dana", **{"variant": "none", **extra})
    for _ in range(60):
        g_at = {}
        for name, st in states.items():
            w = st.backup_segments[0][0]  # what the one worker computes on
            g_at[name] = (w - target) * 2.0
            assert push(st, 0, [g_at[name]], pull=True)
        q.grad = (q.detach() - target) * 2.0
        torch_opt.step()
        for name, st in states.items():
            np.testing.assert_allclose(st.backup_segments[0][0].numpy(), q.detach().numpy(), rtol=1e-12, atol=1e-13,
                                       err_msg=name)


def test_dana_without_momentum_is_asgd():
    n, M = 40, 3
    w0 = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    a = make_state(torch.optim.SGD([torch.nn.Parameter(w0.clone())], lr=0.1), M, variant="none")
    b = make_state(torch.optim.SGD([torch.nn.Parameter(w0.clone())], lr=0.1), M, variant="none",
                   async_momentum="dana")
    for op, m, g in schedule(M, 100, n, seed=1):
        if op == "push":
            push(a, m, [g.double()])
            push(b, m, [g.double()])
        a.pull(m)
        b.pull(m)
        np.testing.assert_allclose(b.backup_segments[m][0].numpy(), a.backup_segments[m][0].numpy(), rtol=1e-12,
                                   atol=1e-14)


def test_dana_momentum_is_per_worker_not_shared():
    """Two workers pushing opposite constant gradients: with a shared buffer the momentum
    cancels; with DANA each worker's own momentum grows to g / (1 - mu), so the look-ahead
    a worker receives runs ahead along its own direction as the formula says."""
    n = 4
    g = torch.ones(n, dtype=torch.float64)
    st = make_state(torch.optim.SGD([torch.nn.Parameter(torch.zeros(n, dtype=torch.float64))], lr=0.1,
                                    momentum=0.5), 2, variant="none", async_momentum="dana")
    for _ in range(40):
        push(st, 0, [g])
        st.pull(0)
        push(st, 1, [-g])
        st.pull(1)
    v0, v1 = st.dana.velocity[0][0], st.dana.velocity[1][0]
    torch.testing.assert_close(v0, 2.0 * g)  # g / (1 - 0.5)
    torch.testing.assert_close(v1, -2.0 * g)
    torch.testing.assert_close(st.dana.total[0], v0 + v1)


@pytest.mark.parametrize("servers", [1, 2, 3])
def test_dana_on_a_model_cut_into_chunks_bit_matches_one_state(servers):
    """Per-worker momentum lives with each chunk; element-wise rules, so a model cut into
    chunks over several servers gives the one-state bits."""
    torch.manual_seed(0)
    shapes = [(33, 7), (5,), (129,), (16, 4)]
    M = 3
    ws = [torch.randn(s) for s in shapes]
    mk = lambda: torch.optim.SGD([torch.nn.Parameter(w.clone()) for w in ws], lr=0.02, momentum=0.9,  # noqa: E731
                                 weight_decay=1e-4)
    whole = make_state(mk(), M, variant="adaptive", async_momentum="dana", staleness_policy="gap_aware")
    spec = make_spec(mk(), M, variant="adaptive", async_momentum="dana", staleness_policy="gap_aware")
    plan = ChunkPlan(spec.layout(), 256, servers, spec.elementwise)
    assert len(plan.chunks) > servers
    initial = torch.zeros(spec.layout().nbytes, dtype=torch.uint8)
    for view, w in zip(spec.layout().param_views(initial), ws):
        view.copy_(w)
    shards = []
    for s in range(servers):
        mine = plan.of_server(s)
        replies = [[torch.zeros(chunk_spec(spec, c).layout().nbytes, dtype=torch.uint8) for c in mine] for _ in range(M)]
        shards.append(ShardState(spec, mine, initial, replies))
    rng = random.Random(4)
    for t in range(60):
        m = rng.randrange(M)
        grads = [torch.randn(s) * 0.2 for s in shapes]
        push(whole, m, grads)
        whole.pull(m)
        full = torch.zeros(spec.layout().nbytes, dtype=torch.uint8)
        for view, g in zip(spec.layout().param_views(full), grads):
            view.copy_(g)
        for shard in shards:
            for c, st in zip(shard.chunks, shard.states):
                piece = torch.zeros(st.layout.wire_nbytes, dtype=torch.uint8)
                piece[: c.nbytes] = full[c.offset : c.offset + c.nbytes]
                st.apply_push(m, st.layout.segment_views(piece, wire=True),
                              [0.02 if k == "lr" else 0.9 if k == "momentum" else 1e-4
                               for _, k, _ in st.spec.hyper_slots])
                st.pull(m)
    got = torch.zeros(spec.layout().nbytes, dtype=torch.uint8)
    for shard in shards:
        for c, st in zip(shard.chunks, shard.states):
            got[c.offset : c.offset + c.nbytes] = st.weights[: c.nbytes]
    assert torch.equal(got[: whole.layout.nbytes], whole.weights)


def test_dana_checkpoint_round_trip_continues_bit_for_bit(tmp_path):
    n, M = 77, 3
    w0 = torch.randn(n, generator=torch.Generator().manual_seed(9))
    mk = lambda: make_state(torch.optim.SGD([torch.nn.Parameter(w0.clone())], lr=0.05, momentum=0.9), M,  # noqa: E731
                            variant="adaptive", async_momentum="dana")
    ops = schedule(M, 120, n, seed=6)
    a = mk()
    for op, m, g in ops[:60]:
        if op == "push":
            push(a, m, [g])
        a.pull(m)
    path = str(tmp_path / "ckpt")
    checkpoint.save_atomic(checkpoint.snapshot(a, 0.0), path)
    b = mk()
    assert checkpoint.restore(b, checkpoint.load(path), path) is None
    for op, m, g in ops[60:]:
        for st in (a, b):
            if op == "push":
                push(st, m, [g])
            st.pull(m)
    assert torch.equal(a.weights, b.weights)
    for m in range(M):
        assert torch.equal(a.backups[m], b.backups[m])


def test_dana_checkpoint_refused_by_a_shared_momentum_job_and_fresh_with_other_workers(tmp_path):
    n = 10
    w0 = torch.randn(n)
    dana = make_state(torch.optim.SGD([torch.nn.Parameter(w0.clone())], lr=0.1, momentum=0.9), 2,
                      async_momentum="dana", variant="none")
    push(dana, 0, [torch.ones(n)])
    dana.pull(0)
    path = str(tmp_path / "ckpt")
    checkpoint.save_atomic(checkpoint.snapshot(dana, 0.0), path)
    shared = make_state(torch.optim.SGD([torch.nn.Parameter(w0.clone())], lr=0.1, momentum=0.9), 2, variant="none")
    with pytest.raises(checkpoint.CheckpointMismatch, match="async_momentum='dana'"):
        checkpoint.restore(shared, checkpoint.load(path), path)
    three = make_state(torch.optim.SGD([torch.nn.Parameter(w0.clone())], lr=0.1, momentum=0.9), 3,
                       async_momentum="dana", variant="none")
    warning = checkpoint.restore(three, checkpoint.load(path), path)
    assert "fresh per-worker state" in warning
    assert all(not v.any() for vs in three.dana.velocity for v in vs) and not three.dana.total[0].any()
    for m in range(3):  # no momentum left: every worker starts from the restored weights themselves
        assert torch.equal(three.backups[m], three.weights)


def test_dana_staged_server_bit_matches_the_window_server():
    n, M = 90, 3
    w0 = torch.randn(n, generator=torch.Generator().manual_seed(1))
    mk = lambda dev: make_state(torch.optim.SGD([torch.nn.Parameter(w0.clone())], lr=0.05, momentum=0.9), M,  # noqa
                                device=dev, kernels="torch", variant="adaptive", async_momentum="dana")
    a, b = mk(None), mk("cpu")
    for op, m, g in schedule(M, 80, n, seed=2):
        for st in (a, b):
            if op == "push":
                push(st, m, [g])
            st.pull(m)
        assert torch.equal(a.replies[m], b.replies[m])


def test_dana_16_bit_parameters_follow_the_float64_reference():
    n, M = 64, 3
    w0 = torch.randn(n, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    st = make_state(torch.optim.SGD([torch.nn.Parameter(w0.clone())], lr=0.05, momentum=0.9), M, variant="none",
                    async_momentum="dana")
    assert st.dana.total[0].dtype == torch.float32  # the momentum is kept in float32
    ref = Dana(w0.double().numpy(), M, 0.05, 0.9)
    for op, m, g in schedule(M, 60, n, seed=5, pulls=False):
        g = g.to(torch.bfloat16)
        push(st, m, [g])
        st.pull(m)
        ref.push(m, g.double().numpy())
        ref.pull(m)
    np.testing.assert_allclose(st.weight_segments[0].double().numpy(), ref.w, rtol=0.05, atol=0.05)


def test_dana_needs_sgd():
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="async_momentum='dana' runs torch.optim.SGD"):
        make_state(torch.optim.Adam([p], lr=0.1), 2, async_momentum="dana")


def test_options_are_validated():
    with pytest.raises(ValueError, match="async_momentum must be one of"):
        DCOptions.create("none", async_momentum="nesterov")
    with pytest.raises(ValueError, match="lr_scale must be a finite number > 0"):
        DCOptions.create("none", lr_scale=0.0)
    with pytest.raises(ValueError, match="lr_scale"):
        DCOptions.create("none", lr_scale=float("nan"))


def test_reduced_momentum_rule():
    assert reduced_momentum(0.9, 1) == 0.9
    assert reduced_momentum(0.9, 4) == pytest.approx(0.9 - 0.75)
    assert reduced_momentum(0.9, 8) == pytest.approx(0.9 - 0.875)
    assert reduced_momentum(0.9, 16) == 0.0
    assert reduced_momentum(0.0, 4) == 0.0


def test_reduced_momentum_is_shared_sgd_with_the_lowered_momentum_bit_for_bit():
    n, M = 55, 4
    w0 = torch.randn(n, generator=torch.Generator().manual_seed(12))
    a = make_state(torch.optim.SGD([torch.nn.Parameter(w0.clone())], lr=0.05, momentum=0.9), M, variant="adaptive",
                   async_momentum="reduced")
    b = make_state(torch.optim.SGD([torch.nn.Parameter(w0.clone())], lr=0.05, momentum=reduced_momentum(0.9, M)), M,
                   variant="adaptive")
    for op, m, g in schedule(M, 80, n, seed=3):
        if op == "push":
            push(a, m, [g], hyper=hyper_of(a, 0.05, 0.9))  # the workers send 0.9
            push(b, m, [g], hyper=hyper_of(b, 0.05, reduced_momentum(0.9, M)))
        a.pull(m)
        b.pull(m)
    assert a.optimizer.param_groups[0]["momentum"] == reduced_momentum(0.9, M)
    assert torch.equal(a.weights, b.weights)


@pytest.mark.parametrize("async_momentum", ["shared", "dana"])
def test_lr_scale_is_the_server_applying_a_scaled_lr_bit_for_bit(async_momentum):
    """lr_scale = 1/3: a worker sending lr is a worker sending lr * (1/3) without it."""
    n, M = 60, 3
    w0 = torch.randn(n, generator=torch.Generator().manual_seed(13))
    scaled = make_state(torch.optim.SGD([torch.nn.Parameter(w0.clone())], lr=0.3, momentum=0.9), M,
                        variant="adaptive", async_momentum=async_momentum, lr_scale=1.0 / 3.0)
    plain = make_state(torch.optim.SGD([torch.nn.Parameter(w0.clone())], lr=0.3 * (1.0 / 3.0), momentum=0.9), M,
                       variant="adaptive", async_momentum=async_momentum)
    for t, (op, m, g) in enumerate(schedule(M, 90, n, seed=4)):
        lr = 0.3 if t < 45 else 0.03
        if op == "push":
            push(scaled, m, [g], hyper=hyper_of(scaled, lr, 0.9))
            push(plain, m, [g], hyper=hyper_of(plain, lr * (1.0 / 3.0), 0.9))
        scaled.pull(m)
        plain.pull(m)
    assert torch.equal(scaled.weights, plain.weights)
    assert isinstance(scaled, ServerState)

"""A recorded schedule of pushes and pulls from several workers, applied by the server's
own code (ServerState, the object the server loop drives, with whichever kernels it uses),
bit-matches a plain single-process float32 transcription of Algorithm 2."""

import random

import pytest
import torch

from hvd_dc.dc_math import default_lambda
from reference import Algorithm2Float32
from server_fixtures import make_state, push


def algorithm2_float32(w0, schedule, num_workers, variant, lambda0, lr, momentum=0.95, eps=1e-7, shared_ms=False):
    """Algorithm 2, literally, in float32 (tests/reference.py): every push is followed by
    that worker's pull (Algorithm 1)."""
    ref = Algorithm2Float32(w0, num_workers, variant, lambda0, lr, momentum, eps, shared_ms)
    for op, m, g in schedule:
        if op == "push":
            ref.push(m, g)
        ref.pull(m)
    return ref.w


def recorded_schedule(num_workers, steps, n, seed):
    """Random interleaving: each op is a push (with its pull) or an extra pull-only."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    schedule = []
    for _ in range(steps):
        m = rng.randrange(num_workers)
        if rng.random() < 0.2:
            schedule.append(("pull", m, None))
        else:
            schedule.append(("push", m, torch.randn(n, generator=gen) * 0.3))
    return schedule


@pytest.mark.parametrize("variant", ["adaptive", "constant", "none"])
@pytest.mark.parametrize("num_workers", [2, 4, 8])
def test_replay_bit_matches_algorithm2(variant, num_workers):
    n = 513
    w0 = torch.randn(n, generator=torch.Generator().manual_seed(7))
    lam = default_lambda(variant)
    p = torch.nn.Parameter(w0.clone())
    state = make_state(torch.optim.SGD([p], lr=0.05), num_workers, variant=variant, dc_lambda=lam if variant != "none" else None)
    schedule = recorded_schedule(num_workers, 200, n, seed=num_workers)
    for op, m, g in schedule:
        if op == "push":
            assert push(state, m, [g])
        state.pull(m)  # the loop answers every request with a pull
    expected = algorithm2_float32(w0, schedule, num_workers, variant, lam, 0.05)
    got = state.weight_segments[0]
    assert torch.equal(got, expected), f"max diff {float((got - expected).abs().max())}"


def test_replay_global_mean_square_bit_matches():
    n, M = 100, 3
    w0 = torch.randn(n, generator=torch.Generator().manual_seed(3))
    p = torch.nn.Parameter(w0.clone())
    state = make_state(torch.optim.SGD([p], lr=0.1), M, variant="adaptive", mean_square="global")
    schedule = recorded_schedule(M, 100, n, seed=11)
    for op, m, g in schedule:
        if op == "push":
            push(state, m, [g])
        state.pull(m)
    assert torch.equal(state.weight_segments[0], algorithm2_float32(w0, schedule, M, "adaptive", 2.0, 0.1, shared_ms=True))


def test_staleness_counts_updates_by_others_since_the_pull():
    p = torch.nn.Parameter(torch.zeros(4))
    state = make_state(torch.optim.SGD([p], lr=0.1), 3, variant="constant")
    g = [torch.ones(4)]
    for m in (0, 1, 2):
        push(state, m, g)
        state.pull(m)
    # worker 0 pulled after update 1; updates 2 and 3 came from others since
    _, staleness = state.apply_push(0, state.layout.segment_views(torch.zeros(state.layout.wire_nbytes, dtype=torch.uint8), wire=True), [0.1])
    assert staleness == 2

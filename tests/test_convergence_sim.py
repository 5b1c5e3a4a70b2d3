"""The delay simulator of benchmarks/convergence.py replays the staleness it claims to,
is deterministic, and with one worker is plain sequential SGD."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.convergence_lib import simulate  # noqa: E402


@pytest.mark.parametrize("m", [4, 16])
def test_round_robin_staleness_is_m_minus_1(m):
    res = simulate.simulate("digits", "dc-a", m, seed=0, lr=0.05, epochs=1)
    s = res["server"]
    assert s["staleness_max"] == m - 1
    n = s["updates"]
    # the first round has staleness 0..m-1, every later push exactly m-1
    expected = ((n - m) * (m - 1) + m * (m - 1) / 2) / n
    assert s["staleness_mean"] == pytest.approx(expected)


def test_simulator_is_deterministic_and_one_worker_asgd_is_sgd():
    a = simulate.simulate("digits", "asgd", 3, seed=1, lr=0.05, epochs=1, pattern="random")
    b = simulate.simulate("digits", "asgd", 3, seed=1, lr=0.05, epochs=1, pattern="random")
    assert a["curve"]["err"] == b["curve"]["err"] and a["curve"]["loss"] == b["curve"]["loss"]
    sgd = simulate.simulate("digits", "sgd", 1, seed=2, lr=0.05, epochs=1)
    one = simulate.simulate("digits", "dc-a", 1, seed=2, lr=0.05, epochs=1)
    # one worker: its backup is always the current weights, so the DC term is exactly 0
    assert one["server"]["staleness_max"] == 0
    assert sgd["curve"]["loss"] == one["curve"]["loss"]


def test_policies_in_the_simulator_delay_adaptive_cannot_act_under_round_robin():
    """The study's claim: with round-robin order every push has staleness M-1 <= tau_C = M,
    so the delay-adaptive policy is exactly ASGD (same bits); under a random order, and for
    the other policies, the trajectory changes."""
    def run(method, pattern):
        c = simulate.simulate("digits", method, 4, seed=3, lr=0.1, epochs=1, pattern=pattern)["curve"]
        return {k: c[k] for k in ("err", "loss", "train_loss")}  # not the timings

    assert run("da", "round_robin") == run("asgd", "round_robin")
    assert run("dc-a+da", "round_robin") == run("dc-a", "round_robin")
    assert run("da", "random")["loss"] != run("asgd", "random")["loss"]
    assert run("sa", "round_robin")["loss"] != run("asgd", "round_robin")["loss"]
    assert run("ga", "round_robin")["loss"] != run("asgd", "round_robin")["loss"]


@pytest.mark.parametrize("pattern", ["round_robin", "random"])
@pytest.mark.parametrize("method", ["dc-a", "dana"])
def test_batched_gradients_give_the_loop_s_pushes_and_trajectory(pattern, method):
    """gradients="batched" (one vmap call per run of pushes whose weights are known) applies
    the same pushes in the same order with the same staleness as the one-at-a-time loop;
    the trajectory differs only by floating-point rounding."""
    opts = simulate.ServerOptions("adaptive", momentum=0.9, lr_scale=0.25,
                                  async_momentum="dana" if method == "dana" else "shared")
    runs = {g: simulate.run("digits", 4, seed=5, lr=0.2, epochs=2, options=opts, pattern=pattern, gradients=g)
            for g in ("loop", "batched")}
    a, b = runs["loop"], runs["batched"]
    assert a["server"]["updates"] == b["server"]["updates"] > 100
    assert a["server"]["staleness_mean"] == b["server"]["staleness_mean"]
    assert a["server"]["staleness_max"] == b["server"]["staleness_max"]
    for key in ("loss", "train_loss"):
        assert a["curve"][key] == pytest.approx(b["curve"][key], rel=1e-4), key
    assert a["curve"]["err"] == pytest.approx(b["curve"]["err"], abs=0.7)  # at most two of 297 test images


def test_batched_ssgd_is_one_forward_backward_on_the_concatenated_minibatches():
    opts = simulate.ServerOptions(momentum=0.9)
    a = simulate.run("digits", 4, seed=6, lr=0.2, epochs=2, options=opts, synchronous=True, gradients="loop")
    b = simulate.run("digits", 4, seed=6, lr=0.2, epochs=2, options=opts, synchronous=True, gradients="batched")
    assert a["server"]["updates"] == b["server"]["updates"]
    assert a["curve"]["loss"] == pytest.approx(b["curve"]["loss"], rel=1e-4)


def test_batched_groups_end_before_a_repeated_worker():
    g = simulate._Gradients(None, [], None, None, batched=False)
    assert g.groups([0, 1, 2, 0]) == [[0], [1], [2], [3]]  # the loop: one push at a time
    g.batched = True
    assert g.groups([0, 1, 2, 3, 0, 1, 2, 3]) == [[0, 1, 2, 3], [4, 5, 6, 7]]  # round robin: M at a time
    assert g.groups([2, 0, 2, 1, 1, 3]) == [[0, 1], [2, 3], [4, 5]]


@pytest.mark.parametrize("m", [4, 7])
def test_round_robin_continues_across_epochs(m):
    """run() keeps the round robin going over an epoch's end (the digits training set is not a
    multiple of M minibatches), so every push after the first round has staleness exactly M - 1."""
    res = simulate.run("digits", m, seed=0, lr=0.05, epochs=3, options=simulate.ServerOptions("adaptive"))
    s = res["server"]
    n = s["updates"]
    assert (n // 3) % m != 0  # an epoch's end falls inside a round
    assert s["staleness_max"] == m - 1
    assert s["staleness_mean"] == pytest.approx(((n - m) * (m - 1) + m * (m - 1) / 2) / n)

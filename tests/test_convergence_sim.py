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

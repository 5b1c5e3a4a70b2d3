"""hvd_dc/divergence.py: one warning, the first time a run shows divergence, naming the
cause that fits the configuration."""

import warnings

import pytest
import torch

from hvd_dc.divergence import (CHECK_EVERY, GROWTH, REFERENCE_SAMPLES, WEIGHT_GROWTH, DivergenceWarning,
                               DivergenceWatch, likely_cause)


def test_cause_per_push_lr_with_horovod_scaling():
    cause = likely_cause(8, 1.0, "per_push", True, "dana", 0.9)
    assert "lr_scaling='per_push'" in cause and "lr_scaling='per_step'" in cause and "8 times" in cause


def test_cause_shared_momentum():
    cause = likely_cause(8, 0.125, "per_step", True, "shared", 0.9)
    assert "momentum of 0.9" in cause and "async_momentum='dana'" in cause and "0.875" in cause


def test_cause_otherwise_the_lr():
    for args in [(8, 0.125, "per_step", True, "dana", 0.9), (4, 1.0, "per_push", False, "shared", 0.0),
                 (1, 1.0, "per_push", True, "shared", 0.9)]:
        cause = likely_cause(*args)
        assert "too large" in cause and "gap_aware" in cause, args


def test_rejections_warn_once():
    watch = DivergenceWatch(3, "the cause")
    with pytest.warns(DivergenceWarning, match=r"worker 3: training is diverging: the server rejected .* Likely cause: "
                                               r"the cause"):
        watch.rejected()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        watch.rejected()  # no second warning


def steady(watch, norm, steps, weights=1.0):
    g = [torch.full((4,), norm / 2.0)]  # norm of 4 elements of norm/2 is norm
    w = [torch.full((4,), weights / 2.0)]
    for _ in range(steps):
        watch.step(g, w)


def test_an_exploding_gradient_norm_warns_once_with_the_numbers():
    watch = DivergenceWatch(0, "c")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        steady(watch, 1.0, CHECK_EVERY * REFERENCE_SAMPLES)  # the reference: 1.0
        steady(watch, GROWTH * 0.9, CHECK_EVERY * 3)  # large, but not GROWTH times larger
    with pytest.warns(DivergenceWarning, match=r"gradient norm grew from 1 .* to 2e\+03"):
        steady(watch, GROWTH * 2, CHECK_EVERY)
    assert watch.warned
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        steady(watch, GROWTH * 100, CHECK_EVERY * 2)
        watch.rejected()


def test_non_finite_norms_are_left_to_the_rejection():
    watch = DivergenceWatch(0, "c")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        steady(watch, 1.0, CHECK_EVERY * REFERENCE_SAMPLES)
        steady(watch, float("inf"), CHECK_EVERY * 2)
    assert not watch.warned


def test_weights_that_grow_a_hundredfold_warn_once():
    watch = DivergenceWatch(1, "c")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        steady(watch, 1.0, 1, weights=5.0)  # the reference: the weights after step 1
        steady(watch, 1.0, CHECK_EVERY * 3, weights=5.0 * WEIGHT_GROWTH * 0.9)  # grown, not diverged
    with pytest.warns(DivergenceWarning, match=r"norm of the weights grew from 5 \(after step 1\) to 1e\+03"):
        steady(watch, 1.0, CHECK_EVERY, weights=1000.0)
    assert watch.warned


def test_zero_initial_weights_take_the_first_nonzero_norm_as_reference():
    watch = DivergenceWatch(1, "c")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        steady(watch, 1.0, 1, weights=0.0)
        steady(watch, 1.0, CHECK_EVERY, weights=1.0)
        steady(watch, 1.0, CHECK_EVERY, weights=50.0)
    with pytest.warns(DivergenceWarning, match="weights grew"):
        steady(watch, 1.0, CHECK_EVERY, weights=float("nan"))

"""What hvd.DistributedOptimizer's "auto" options resolve to, per optimizer
(hvd_dc/optimizer_options.py's MEASURED_DEFAULTS, chosen by benchmarks/convergence_horovod.py)."""

import pytest
import torch

from hvd_dc import optimizer_options as oo
from hvd_dc.collectives import Average, Sum


def _params():
    return [torch.nn.Parameter(torch.zeros(3))]


def test_momentum_sgd_gets_dana_with_dc_and_gap_aware():
    opt = torch.optim.SGD(_params(), lr=0.1, momentum=0.9)
    assert oo.resolve_defaults(opt, "auto", "auto") == ("adaptive", "gap_aware")
    assert oo.resolve_async_momentum("auto", opt) == "dana"


def test_plain_sgd_gets_gap_aware_alone():
    opt = torch.optim.SGD(_params(), lr=0.1)
    assert oo.resolve_defaults(opt, "auto", "auto") == ("none", "gap_aware")
    assert oo.resolve_async_momentum("auto", opt) == "shared"


def test_a_momentum_in_any_group_counts():
    opt = torch.optim.SGD([{"params": _params()}, {"params": _params(), "momentum": 0.5}], lr=0.1)
    assert oo.optimizer_kind(opt) == "sgd_momentum"


@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.RMSprop])
def test_other_optimizers_keep_dc_asgd_a(cls):
    opt = cls(_params(), lr=0.1)
    assert oo.resolve_defaults(opt, "auto", "auto") == ("adaptive", "none")
    assert oo.resolve_async_momentum("auto", opt) == "shared"


def test_explicit_options_win():
    opt = torch.optim.SGD(_params(), lr=0.1, momentum=0.9)
    assert oo.resolve_defaults(opt, "constant", "none") == ("constant", "none")
    assert oo.resolve_async_momentum("shared", opt) == "shared"


def test_dana_needs_sgd():
    with pytest.raises(ValueError, match="async_momentum='dana' acts on torch.optim.SGD's momentum"):
        oo.resolve_async_momentum("dana", torch.optim.Adam(_params(), lr=0.1))
    with pytest.raises(ValueError, match="async_momentum must be 'auto' or one of"):
        oo.resolve_async_momentum("nesterov", torch.optim.SGD(_params(), lr=0.1))


@pytest.mark.parametrize("op, scaling, workers, scale", [
    (Average, "auto", 8, 1 / 8), (Average, "per_step", 4, 0.25), (Sum, "per_step", 4, 1.0),
    (Average, "per_push", 4, 1.0), (Sum, "per_push", 4, 1.0), (Average, "auto", 1, 1.0)])
def test_lr_scale_of_op_and_lr_scaling(op, scaling, workers, scale):
    options = oo.check(op, 1.0, 0, None, False, None, workers, scaling)
    assert oo.lr_scale(options, workers) == scale


def test_lr_scaling_is_validated():
    with pytest.raises(ValueError, match="lr_scaling must be 'auto', 'per_step' or 'per_push'"):
        oo.check(Average, 1.0, 0, None, False, None, 2, "per_epoch")

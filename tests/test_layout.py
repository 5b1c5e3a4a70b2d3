"""Flat layout, hyperparameter slots and model comparison (no MPI)."""

import torch

from hvd_dc.layout import ALIGN, FlatLayout, ParamInfo, diff_specs, read_hyperparameters, scalar_hyperparameters, write_hyperparameters
from server_fixtures import make_spec


def _params():
    return [
        ParamInfo("a", (3, 5), "float32", 0),
        ParamInfo("b", (7,), "float64", 0),
        ParamInfo("c", (2, 2), "float32", 1),
        ParamInfo("d", (11,), "float32", 0),
        ParamInfo("e", (4,), "bfloat16", 1),
    ]


def test_segments_group_by_group_and_dtype_keeping_user_order():
    layout = FlatLayout(_params())
    keys = [(s.group, s.dtype, s.param_indices) for s in layout.segments]
    assert keys == [
        (0, torch.float32, (0, 3)),
        (0, torch.float64, (1,)),
        (1, torch.bfloat16, (4,)),
        (1, torch.float32, (2,)),
    ]
    assert all(s.offset % ALIGN == 0 for s in layout.segments)
    assert layout.numel == 15 + 7 + 4 + 11 + 4


def test_param_views_alias_one_buffer_without_overlap():
    layout = FlatLayout(_params())
    buf = torch.zeros(layout.nbytes, dtype=torch.uint8)
    views = layout.param_views(buf)
    for i, v in enumerate(views):
        v.fill_(i + 1)
    for i, v in enumerate(layout.param_views(buf)):
        assert v.shape == torch.Size(_params()[i].shape)
        assert torch.all(v == i + 1)


def test_fp16_wire_layout_halves_wide_float_segments_only():
    layout = FlatLayout(_params(), wire_fp16=True)
    wire = {(s.group, s.param_indices): s.dtype for s in layout.wire_segments}
    assert wire[(0, (0, 3))] == torch.float16 and wire[(0, (1,))] == torch.float16
    assert wire[(1, (4,))] == torch.bfloat16
    assert layout.wire_nbytes < layout.nbytes


def test_hyperparameter_slots_round_trip_including_betas():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.Adam([{"params": [p], "lr": 0.1}], betas=(0.9, 0.99), weight_decay=0.0)
    slots = scalar_hyperparameters(opt.param_groups)
    assert (0, "lr", -1) in slots and (0, "betas", 0) in slots and (0, "betas", 1) in slots
    assert not any(k in ("amsgrad", "maximize", "foreach") for _, k, _ in slots)
    values = [0.0] * len(slots)
    read_hyperparameters(opt.param_groups, slots, values)
    target = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=1.0, betas=(0.5, 0.5))
    write_hyperparameters(target.param_groups, slots, values)
    assert target.param_groups[0]["lr"] == 0.1 and target.param_groups[0]["betas"] == (0.9, 0.99)


def test_diff_specs_names_the_first_difference():
    a = torch.nn.Linear(3, 2)
    spec = make_spec(torch.optim.SGD(a.parameters(), lr=0.1), 2)
    assert diff_specs(spec, spec, 1) is None
    other = make_spec(torch.optim.SGD(torch.nn.Linear(3, 4).parameters(), lr=0.1), 2)
    assert diff_specs(spec, other, 1) == "parameter 'g0.p0' has shape [2, 3] on worker 0 but [4, 3] on worker 1"
    adam = make_spec(torch.optim.Adam(a.parameters()), 2)
    assert "wraps optimizer torch.optim.sgd.SGD but worker 1 wraps torch.optim.adam.Adam" in diff_specs(spec, adam, 1)

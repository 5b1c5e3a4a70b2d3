"""Device staging of worker gradients and weights (hvd_dc.staging), device choice
(hvd_dc.devices), and the staged paths end to end under mpiexec.

Without a GPU the staging runs on CPU buffers (HVD_DC_STAGING=always): the same object,
the same decisions, synchronous copies. The CUDA runs at the end need a GPU and are
skipped with a printed reason elsewhere.
"""

from __future__ import annotations

import types

import pytest
import torch

from hvd_dc.devices import parse_server_device, resolve_server_device, worker_device
from hvd_dc.settings import Settings
from hvd_dc.layout import FlatLayout, ParamInfo, diff_specs
from hvd_dc.staging import DeviceStaging
from mpi_run import conserved_results, run_mpi
from server_fixtures import make_spec

CUDA_REASON = "no CUDA device (torch.cuda.is_available() is False): CUDA staging tests SKIPPED"
STAGED = {"HVD_DC_STAGING": "always"}


# -- DeviceStaging on CPU buffers -------------------------------------------------------------


def _staging(wire_fp16=False):
    layout = FlatLayout([ParamInfo("a", (3, 4), "float32", 0), ParamInfo("b", (5,), "float32", 0),
                         ParamInfo("c", (2,), "float64", 0)], wire_fp16=wire_fp16)
    host_grad = torch.zeros(layout.wire_nbytes, dtype=torch.uint8)
    host_weights = torch.zeros(layout.nbytes, dtype=torch.uint8)
    return layout, DeviceStaging(layout, torch.device("cpu"), host_grad, host_weights, wire_fp16)


def _fill_grads(st, seed=0):
    g = torch.Generator().manual_seed(seed)
    for view in st.grad_views:
        view.copy_(torch.randn(view.shape, generator=g).to(view.dtype))


def _host_grads(layout, st):
    return [v.clone() for v in layout.param_views(st.host_grad, wire=True)]


def test_staging_buffers_are_separate_from_the_host_areas():
    _, st = _staging()
    assert st.weights.data_ptr() != st.host_weights.data_ptr()
    assert st.grads.data_ptr() != st.host_grad.data_ptr()


def test_every_parameter_staged_during_backward_is_used_as_is():
    layout, st = _staging()
    _fill_grads(st)
    for i in range(3):
        st.stage_parameter(i)
    assert st.eager_copy_valid()
    st.gradients_to_host()
    assert (st.eager_pushes, st.full_pushes) == (1, 0)
    for host, dev in zip(_host_grads(layout, st), st.grad_views):
        assert torch.equal(host, dev)


def test_a_parameter_missed_during_backward_means_a_full_copy():
    layout, st = _staging()
    _fill_grads(st)
    st.stage_parameter(0)
    st.stage_parameter(2)
    assert not st.eager_copy_valid()
    st.gradients_to_host()
    assert (st.eager_pushes, st.full_pushes) == (0, 1)
    for host, dev in zip(_host_grads(layout, st), st.grad_views):
        assert torch.equal(host, dev)


def test_an_in_place_edit_after_staging_is_pushed():
    layout, st = _staging()
    _fill_grads(st)
    for i in range(3):
        st.stage_parameter(i)
    assert st.eager_copy_valid()
    st.grad_views[1].mul_(0.5)  # what clip_grad_norm_ does to a real gradient
    assert not st.eager_copy_valid()
    st.gradients_to_host()
    assert torch.equal(_host_grads(layout, st)[1], st.grad_views[1])


def test_after_synchronize_even_untracked_edits_are_pushed():
    layout, st = _staging()
    _fill_grads(st)
    st.forbid_eager_copy()
    for i in range(3):
        st.stage_parameter(i)  # ignored: the user may still edit through .data
    st.grad_views[0].data.mul_(0.5)  # .data edits do not move the version counter
    st.gradients_to_host()
    assert (st.eager_pushes, st.full_pushes) == (0, 1)
    assert torch.equal(_host_grads(layout, st)[0], st.grad_views[0])
    # the next step may stage eagerly again
    for i in range(3):
        st.stage_parameter(i)
    assert st.eager_copy_valid()


def test_fp16_wire_rounds_on_the_staging_device():
    layout, st = _staging(wire_fp16=True)
    _fill_grads(st, seed=3)
    st.stage_parameter(0)  # eager for one, then the full path for all
    st.gradients_to_host()
    host = _host_grads(layout, st)
    assert host[0].dtype == torch.float16 and host[2].dtype == torch.float16
    for h, dev in zip(host, st.grad_views):
        assert torch.equal(h, dev.to(torch.float16))


def test_weights_to_device_copies_the_fetched_weights():
    layout, st = _staging()
    for view in layout.param_views(st.host_weights):
        view.copy_(torch.arange(view.numel(), dtype=view.dtype).view(view.shape))
    st.before_host_weights_written()
    st.weights_to_device()
    assert torch.equal(st.weights, st.host_weights)


def test_host_areas_must_match_the_layout():
    layout = FlatLayout([ParamInfo("a", (3,), "float32", 0)])
    with pytest.raises(ValueError, match="host areas"):
        DeviceStaging(layout, torch.device("cpu"), torch.zeros(1, dtype=torch.uint8),
                      torch.zeros(layout.nbytes, dtype=torch.uint8), False)


# -- device choice ---------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["auto", "cpu", "cuda", "cuda:0", "cuda:3", torch.device("cuda", 1)])
def test_server_device_accepted_forms(option):
    assert parse_server_device(option) == str(option)


@pytest.mark.parametrize("option", ["gpu", "cuda:", "cuda:x", "mps", 0, None])
def test_server_device_malformed_is_refused(option):
    with pytest.raises(ValueError, match="server_device must be"):
        parse_server_device(option)


def test_auto_is_the_cpu_without_cuda_and_the_current_gpu_with_it():
    assert resolve_server_device("auto", cuda_available=False) is None  # compute in the window
    assert resolve_server_device("auto", cuda_available=True, device_count=2, current_device=1) == torch.device("cuda", 1)
    assert resolve_server_device("cuda:1", cuda_available=True, device_count=2) == torch.device("cuda", 1)
    assert resolve_server_device("cpu", cuda_available=True) is None


def test_forced_staging_stages_a_cpu_server():
    assert resolve_server_device("cpu", "always", cuda_available=False) == torch.device("cpu")
    with pytest.raises(ValueError, match="HVD_DC_STAGING"):
        Settings.from_environ({"HVD_DC_STAGING": "sometimes"})


def test_cuda_server_device_without_cuda_names_the_server():
    with pytest.raises(ValueError, match=r"world rank 0\) has no usable CUDA device"):
        resolve_server_device("cuda", cuda_available=False)
    with pytest.raises(ValueError, match="sees 1 CUDA device"):
        resolve_server_device("cuda:2", cuda_available=True, device_count=1)


def _fake(dev):
    return types.SimpleNamespace(device=torch.device(dev))


def test_worker_device_is_the_parameters_device():
    assert worker_device([("a", _fake("cpu")), ("b", _fake("cpu"))]) == torch.device("cpu")
    assert worker_device([("a", _fake("cuda:1")), ("b", _fake("cuda:1"))]) == torch.device("cuda", 1)


def test_parameters_on_two_devices_are_refused_by_name():
    with pytest.raises(ValueError, match=r"'a' is on cuda:0 but 'b' is on cpu"):
        worker_device([("a", _fake("cuda:0")), ("b", _fake("cpu"))])


def test_parameters_on_other_devices_are_refused_by_name():
    with pytest.raises(ValueError, match=r"parameter 'w' lives on meta"):
        worker_device([("w", torch.nn.Parameter(torch.empty(2, device="meta")))])


def test_workers_disagreeing_on_server_device_is_named():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    a, b = make_spec(opt, 2), make_spec(opt, 2)
    b.server_device = "cpu"
    assert diff_specs(a, b, 1) == "server_device is 'auto' on worker 0 but 'cpu' on worker 1"


# -- end to end under mpiexec ------------------------------------------------------------------


def _conserved(res, workers):
    results = conserved_results(res, workers)
    for r in results.values():
        assert r["stats"]["staged"]
    return results


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["none", "adaptive"])
def test_staged_conservation(tmp_path, variant):
    res = run_mpi(3, "conservation.py", "--variant", variant, out_dir=tmp_path,
                  env={**STAGED, "HVD_DC_LOG_LEVEL": "INFO"}).check()
    for r in _conserved(res, 2).values():
        assert r["stats"]["server_device"] == "cpu (staged)"
        # no gradient was edited after backward: every push used the copies made during it
        assert r["stats"]["pushes_copied_during_backward"] == r["steps"]
        assert r["stats"]["pushes_copied_at_step"] == 0
    assert "master weights on cpu (staged through the window)" in res.stderr


@pytest.mark.slow
def test_staged_conservation_mixed_dtypes_fp16_wire(tmp_path):
    res = run_mpi(3, "conservation.py", "--variant", "adaptive", "--compression", "fp16",
                  "--dtypes", "float32,float64,bfloat16,float16", out_dir=tmp_path, env=STAGED).check()
    _conserved(res, 2)


@pytest.mark.slow
@pytest.mark.parametrize("edit", ["inplace", "data_after_synchronize"])
def test_staged_push_carries_gradients_edited_after_backward(tmp_path, edit):
    res = run_mpi(3, "conservation.py", "--variant", "none", "--edit", edit, out_dir=tmp_path, env=STAGED).check()
    for r in _conserved(res, 2).values():
        assert r["stats"]["pushes_copied_at_step"] == r["steps"]


@pytest.mark.slow
def test_staged_accumulation_over_backward_passes(tmp_path):
    res = run_mpi(3, "conservation.py", "--variant", "constant", "--passes", "3", out_dir=tmp_path, env=STAGED).check()
    for r in _conserved(res, 2).values():
        assert r["stats"]["pushes_copied_during_backward"] == r["steps"]


@pytest.mark.slow
def test_cuda_server_device_on_a_server_without_cuda_fails_registration(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the server can use it")
    res = run_mpi(3, "server_device.py", out_dir=tmp_path, timeout=90)
    assert res.returncode != 0
    for r in res.results().values():
        assert "has no usable CUDA device" in r["error"], r


@pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_REASON)
@pytest.mark.parametrize("variant", ["none", "adaptive"])
def test_cuda_workers_conservation(tmp_path, variant):
    res = run_mpi(3, "conservation.py", "--variant", variant, "--device", "cuda", out_dir=tmp_path).check()
    for r in _conserved(res, 2).values():
        assert r["device"].startswith("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_REASON)
def test_cuda_workers_fp16_wire_and_edits(tmp_path):
    res = run_mpi(3, "conservation.py", "--variant", "none", "--device", "cuda", "--compression", "fp16",
                  "--edit", "inplace", out_dir=tmp_path).check()
    _conserved(res, 2)


@pytest.mark.slow
def test_staged_sparse_gradients_and_an_unused_parameter(tmp_path):
    res = run_mpi(3, "inputs.py", out_dir=tmp_path, env=STAGED).check()
    for r in res.results().values():
        assert r["sparse_ok"] and r["unused_unchanged"] and r["model_unchanged_after_raise"]
        assert "the server rejected it and the model was not changed" in r["raised"]


@pytest.mark.slow
def test_staged_resumed_trajectory_bit_matches_an_uninterrupted_run(tmp_path):
    """A staged server's restore must also refill the reply areas the workers start from."""
    args = ("--mode", "trajectory", "--steps", "60", "--every", "10")

    def run(name, ckpt, env=None):
        return run_mpi(2, "resume.py", "--ckpt", str(tmp_path / ckpt), *args, out_dir=tmp_path / name,
                       env={**STAGED, **(env or {})}, timeout=150)

    whole = run("whole", "whole.pt").check()
    crashed = run("run", "ck.pt", {"HVD_DC_FAULT": "kill_server_mid_update:37"})
    assert crashed.returncode != 0
    r = run("restart", "ck.pt").check().results()[0]
    assert 30 <= r["start"] < 37
    assert r["final"] == whole.results()[0]["final"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_REASON)
@pytest.mark.parametrize("wire_fp16", [False, True])
def test_cuda_staging_copies_during_backward_match_the_gradients(wire_fp16):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 3)).cuda()
    params = list(model.parameters())
    layout = FlatLayout([ParamInfo(f"p{i}", tuple(p.shape), "float32", 0) for i, p in enumerate(params)],
                        wire_fp16=wire_fp16)
    st = DeviceStaging(layout, torch.device("cuda", torch.cuda.current_device()),
                       torch.zeros(layout.wire_nbytes, dtype=torch.uint8, pin_memory=True),
                       torch.zeros(layout.nbytes, dtype=torch.uint8, pin_memory=True), wire_fp16)
    with torch.no_grad():
        for view, p in zip(st.weight_views, params):
            view.copy_(p)
    for p, wv, gv in zip(params, st.weight_views, st.grad_views):
        p.data, p.grad = wv, gv
    for i, p in enumerate(params):
        p.register_post_accumulate_grad_hook(lambda _p, i=i: st.stage_parameter(i))
    for step in range(3):
        st.grads.zero_()
        model(torch.randn(32, 64, device="cuda")).square().mean().backward()
        st.gradients_to_host()
        assert st.eager_pushes == step + 1
        wire = torch.float16 if wire_fp16 else torch.float32
        for host, dev in zip(layout.param_views(st.host_grad, wire=True), st.grad_views):
            assert torch.equal(host, dev.to(wire).cpu())
        # the server's reply: the next forward must see it without a host wait
        for view in layout.param_views(st.host_weights):
            view.fill_(float(step))
        st.before_host_weights_written()
        st.weights_to_device()
        assert all(bool((p == float(step)).all()) for p in params)

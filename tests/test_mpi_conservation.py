"""Under mpiexec, 1 server + 2 and + 4 workers: every push is applied exactly once."""

import pytest
import torch

from mpi_run import conserved_results, run_mpi

# server_device='auto': the server computes in the window unless it has a GPU
SERVER_DEVICE = "cuda:0 (staged)" if torch.cuda.is_available() else "cpu (window)"


def _check_conserved(res, workers):
    results = conserved_results(res, workers)
    for r in results.values():
        assert r["stats"]["server_device"] == SERVER_DEVICE and not r["stats"]["staged"]
    return results


@pytest.mark.slow
@pytest.mark.parametrize("workers", [2, 4])
@pytest.mark.parametrize("variant", ["none", "constant", "adaptive"])
def test_conservation(tmp_path, workers, variant):
    res = run_mpi(workers + 1, "conservation.py", "--variant", variant, out_dir=tmp_path).check()
    results = _check_conserved(res, workers)
    # workers ran different numbers of steps, so they finished at different times
    assert len({r["steps"] for r in results.values()}) == workers


@pytest.mark.slow
def test_conservation_mixed_dtypes_and_fp16_wire(tmp_path):
    res = run_mpi(3, "conservation.py", "--variant", "adaptive", "--compression", "fp16",
                  "--dtypes", "float32,float64,bfloat16,float16", out_dir=tmp_path).check()
    _check_conserved(res, 2)


@pytest.mark.slow
@pytest.mark.parametrize("order", ["before", "after"])
def test_lr_a_worker_holds_when_pushing_is_applied(tmp_path, order):
    """LambdaLR cycles lr through 1, 1/2, 1/4 on each worker independently; conservation
    with sum(lr_i * g_i) holds only if each push is applied with its own worker's lr."""
    res = run_mpi(4, "conservation.py", "--variant", "constant", "--lr-schedule", order, out_dir=tmp_path).check()
    _check_conserved(res, 3)
    assert "overridden after learning rate scheduler" not in res.stderr


def test_nonfinite_gradients_are_rejected_counted_and_the_model_stays_finite(tmp_path):
    res = run_mpi(3, "conservation.py", "--variant", "adaptive", "--nan-every", "4", out_dir=tmp_path).check()
    results = _check_conserved(res, 2)  # the accepted pushes, and only they, were applied
    w0 = results[0]
    assert w0["rejected_expected"] > 0
    assert w0["rejected"] == w0["rejected_expected"]
    assert results[1]["rejected"] == 0
    assert "rejected a gradient with NaN/Inf from worker 0" in res.stderr


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["staleness_lr", "delay_adaptive"])
def test_conservation_with_a_staleness_policy(tmp_path, policy):
    """Every accepted push is applied once, scaled by its policy's factor of the staleness the
    server measured for it (1 / max(1, tau), or 1 / tau above tau_C = M); worker 0 is a straggler so
    that some pushes are staler than M."""
    res = run_mpi(4, "conservation.py", "--variant", "adaptive", "--policy", policy, "--dtypes", "float64",
                  "--slow-worker", out_dir=tmp_path).check()
    results = _check_conserved(res, 3)
    taus = results[0]["staleness"]
    assert max(taus) > 3, taus  # the straggler's pushes: the factor is not 1 for them
    assert len(set(t for r in results.values() for t in r["staleness"])) >= 3


@pytest.mark.parametrize("workers", [2, 4])
def test_conservation_with_dana(tmp_path, workers):
    """DANA (async_momentum="dana", momentum 0.5, float64): the server's weights are w0 minus
    every push's lr * v with each worker's own momentum v (whatever the arrival order), and
    the final pull is the look-ahead w - lr * mu * sum_i v_i. (v = sum of mu^k g is exact in
    float64 for these step counts, not in float32.)"""
    res = run_mpi(workers + 1, "conservation.py", "--variant", "adaptive", "--dtypes", "float64",
                  "--momentum", "0.5", "--async-momentum", "dana", out_dir=tmp_path).check()
    _check_conserved(res, workers)


def test_conservation_per_push_lr_scaling(tmp_path):
    """lr_scaling="per_push": every push is applied with the lr its worker holds (not / size())."""
    res = run_mpi(3, "conservation.py", "--variant", "constant", "--lr-scaling", "per_push",
                  out_dir=tmp_path).check()
    _check_conserved(res, 2)

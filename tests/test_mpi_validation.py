"""Under mpiexec: bad arguments raise errors that name the problem, and the job goes on."""

from mpi_run import run_mpi


def test_bad_arguments_are_named(tmp_path):
    res = run_mpi(3, "validation.py", out_dir=tmp_path).check()
    results = res.results()
    assert sorted(results) == [0, 1]
    for r in results.values():
        e = r["errors"]
        assert e["not_optimizer"] == "TypeError: DistributedDCOptimizer wraps a torch.optim.Optimizer; got Linear"
        assert "dc_variant must be one of 'adaptive', 'constant', 'none'; got 'fast'" in e["variant"]
        assert "dc_lambda must be finite and >= 0; got -1.0" in e["lambda"]
        assert "compression must be hvd_dc.Compression.none or hvd_dc.Compression.fp16" in e["compression"]
        assert "backward_passes_per_step must be an int >= 1; got 0" in e["bpps"]
        assert "1 of the optimizer's parameters are not in it" in e["unnamed"]
        assert "duplicate names: a" in e["dup_names"]
        assert "LBFGS is not supported" in e["lbfgs"]
        assert "TypeError" in e["complex_param"] and "complex64" in e["complex_param"]
        assert "no parameter that requires grad" in e["frozen_only"]
        assert "list-of-ranks form is not supported" in e["init_comm"]
        assert "server_device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got 'gpu'" in e["server_device"]
        assert "parameter 'param.0.0' lives on meta" in e["meta_param"]
        assert r["twice"] == "this optimizer is already wrapped by hvd_dc.DistributedDCOptimizer"
        assert "accumulated over 3 backward passes but backward_passes_per_step=2" in r["too_many"]
        assert "can no longer step or pull" in r["after_shutdown"]
        assert "no hvd_dc call is possible after hvd_dc.shutdown()" in r["size_after"]

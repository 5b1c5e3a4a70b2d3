"""Every behaviour Horovod's test/parallel/test_torch.py checks for the names hvd_dc
provides, each case in its own ``mpiexec -n 3`` (the server + 2 workers), so that one
failure cannot leave the next case's collectives out of step. The cases are in
mpi_scripts/horovod_cases.py; docs/HOROVOD.md maps each Horovod test to its case.
"""

import pytest

from mpi_run import run_mpi

#: cases that expect an error get a short HVD_DC_TIMEOUT: a mismatch must be reported
#: well within it (the cases assert < 2.5 s), and a hang would fail them quickly
SHORT = {"HVD_DC_TIMEOUT": "5"}
ENV = {
    "allreduce_shape_mismatch": SHORT, "allreduce_type_mismatch": SHORT, "op_mismatch": SHORT,
    "allgather_mismatch": SHORT, "broadcast_mismatch": SHORT, "alltoall_mismatch": SHORT,
    "reducescatter_mismatch": SHORT, "out_of_step": SHORT, "join_other_collectives": SHORT,
    "optimizer_op_mismatch": SHORT, "process_set_mismatch": SHORT, "process_set_add_remove": SHORT,
    "barrier_and_timeout": {"HVD_DC_TIMEOUT": "3"}, "process_set_timeout": {"HVD_DC_TIMEOUT": "3"},
    "join_timeout": {"HVD_DC_TIMEOUT": "3"},
    # a regression (waiting for the name until the timeout) must show as slow, not pass after 60 s
    "match_by_name": {"HVD_DC_TIMEOUT": "30"},
}
#: cases that need 3 workers (sets of two, a worker outside, a set not coordinated by worker 0)
WORKERS = {"process_set_collectives": 3, "process_set_grads": 3, "process_set_independent": 3,
           "process_set_mismatch": 3, "process_set_timeout": 3}
CASES = [
    "ranks",
    "allreduce_sum", "allreduce_average", "allreduce_min_max_product", "allreduce_inplace",
    "allreduce_positional_order", "allreduce_async_fused", "allreduce_prescale_postscale",
    "allreduce_shape_mismatch", "allreduce_type_mismatch", "op_mismatch", "duplicate_names", "allreduce_grad",
    "grouped_allreduce", "grouped_allreduce_grad",
    "allgather", "allgather_async_fused", "allgather_mismatch", "allgather_grad", "grouped_allgather",
    "broadcast", "broadcast_mismatch", "broadcast_grad",
    "alltoall", "alltoall_argument_errors", "alltoall_mismatch", "alltoall_grad",
    "reducescatter", "reducescatter_mismatch", "reducescatter_grad", "grouped_reducescatter",
    "objects", "join_allreduce", "join_other_collectives", "join_timeout", "barrier_and_timeout", "out_of_step",
    "optimizer_keywords", "optimizer_op_sum", "optimizer_op_mismatch", "checkpoint_after_wrap",
    "broadcast_state_options", "broadcast_state_loaded_checkpoint_refused", "broadcast_state_no_grad",
    "named_parameters", "unused_parameters",
    "gradient_clipping", "sync_batch_norm",
    "match_by_name", "process_set_collectives", "process_set_grads", "process_set_independent",
    "process_set_mismatch", "process_set_timeout", "process_set_add_remove", "process_set_non_member",
    "process_set_optimizer", "process_sets_at_init", "parameter_names_without_named_parameters",
    "sparse_allreduce",
]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_horovod_behaviour(case, tmp_path):
    workers = WORKERS.get(case, 2)
    res = run_mpi(workers + 1, "horovod_cases.py", "--case", case, out_dir=tmp_path, timeout=120, env=ENV.get(case))
    results = res.results()
    assert res.returncode == 0 and sorted(results) == list(range(workers)), (
        f"mpiexec exited {res.returncode}\n--- stdout\n{res.stdout}\n--- stderr\n{res.stderr}")
    assert all(r["ok"] and r["case"] == case and r["size"] == workers for r in results.values())


def test_every_case_runs():
    """The list above is every case the script defines (none silently left out)."""
    import ast
    from pathlib import Path

    tree = ast.parse((Path(__file__).parent / "mpi_scripts" / "horovod_cases.py").read_text())
    defined = {f.name for f in tree.body if isinstance(f, ast.FunctionDef)
               and any(getattr(d, "id", None) == "case" for d in f.decorator_list)}
    assert defined == set(CASES), defined ^ set(CASES)


# -- what needs no MPI job -----------------------------------------------------------------


def test_build_queries():
    """Horovod's *_built()/*_enabled() queries answer for hvd_dc's own paths."""
    import torch

    import hvd_dc as hvd

    assert hvd.mpi_built() is True and hvd.mpi_enabled() is True
    assert hvd.gloo_built() is False and hvd.gloo_enabled() is False
    assert hvd.nccl_built() == 0 and hvd.ddl_built() is False and hvd.ccl_built() is False
    assert hvd.cuda_built() == (torch.version.cuda is not None) and hvd.rocm_built() is False
    assert isinstance(hvd.mpi_threads_supported(), bool)


def test_elastic_names_refuse_with_advice():
    """hvd.elastic's names fail at first use, naming what to use instead."""
    import hvd_dc as hvd

    for fn in (lambda: hvd.elastic.run(lambda state: None), lambda: hvd.elastic.TorchState(None, None),
               lambda: hvd.elastic.ObjectState(), lambda: hvd.elastic.ElasticSampler([1, 2])):
        with pytest.raises(NotImplementedError, match="checkpoint_path"):
            fn()


def test_compression_fp16():
    """Compression.fp16 turns float32/float64 into float16 and back; other dtypes pass."""
    import torch

    import hvd_dc as hvd

    for dtype in (torch.float32, torch.float64):
        t = torch.ones(5, 5, 5, dtype=dtype)
        c, ctx = hvd.Compression.fp16.compress(t)
        assert c.dtype == torch.float16
        d = hvd.Compression.fp16.decompress(c, ctx)
        assert d.dtype == dtype and torch.equal(d, t)
    for dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
        t = torch.ones(5, 5, 5, dtype=dtype)
        c, ctx = hvd.Compression.fp16.compress(t)
        assert c.dtype == dtype and torch.equal(hvd.Compression.fp16.decompress(c, ctx), t)


def test_duplicate_names_before_init():
    """The duplicate-name check of DistributedOptimizer raises ValueError before anything
    needs hvd.init(), as Horovod's does (this process never initialised hvd_dc); a model
    without the problem reaches the point where init() is needed."""
    import itertools

    import torch

    import hvd_dc as hvd
    from hvd_dc import context

    assert context.peek() is None
    net1, net2 = torch.nn.Conv2d(1, 1, 1), torch.nn.Conv2d(1, 1, 1)
    opt = torch.optim.SGD(itertools.chain(net1.parameters(), net2.parameters()), lr=0.1)
    with pytest.raises(ValueError, match="duplicate"):
        hvd.DistributedOptimizer(opt, named_parameters=itertools.chain(net1.named_parameters(),
                                                                       net2.named_parameters()))
    with pytest.raises(RuntimeError, match="init"):
        hvd.DistributedOptimizer(torch.optim.SGD(net1.parameters(), lr=0.1), named_parameters=net1.named_parameters())


def test_horovod_internal_error_catches_timeouts():
    """Regression: HvdDcTimeout was a TimeoutError, missed by Horovod-style handlers."""
    import hvd_dc as hvd

    assert issubclass(hvd.HvdDcTimeout, hvd.HorovodInternalError)
    assert issubclass(hvd.HorovodInternalError, RuntimeError)
    assert issubclass(hvd.CollectiveMismatch, hvd.HorovodInternalError)

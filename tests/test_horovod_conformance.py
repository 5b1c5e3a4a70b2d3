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
    "optimizer_op_mismatch": SHORT,
    "barrier_and_timeout": {"HVD_DC_TIMEOUT": "3"},
}
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
    "objects", "join_allreduce", "join_other_collectives", "barrier_and_timeout", "out_of_step",
    "optimizer_keywords", "optimizer_op_sum", "optimizer_op_mismatch", "checkpoint_after_wrap",
    "broadcast_state_options", "broadcast_state_no_grad", "named_parameters", "unused_parameters",
    "gradient_clipping", "sync_batch_norm",
]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_horovod_behaviour(case, tmp_path):
    res = run_mpi(3, "horovod_cases.py", "--case", case, out_dir=tmp_path, timeout=120, env=ENV.get(case))
    results = res.results()
    assert res.returncode == 0 and sorted(results) == [0, 1], (
        f"mpiexec exited {res.returncode}\n--- stdout\n{res.stdout}\n--- stderr\n{res.stderr}")
    assert all(r["ok"] and r["case"] == case and r["size"] == 2 for r in results.values())


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


def test_horovod_internal_error_catches_timeouts():
    """Regression: HvdDcTimeout was a TimeoutError, missed by Horovod-style handlers."""
    import hvd_dc as hvd

    assert issubclass(hvd.HvdDcTimeout, hvd.HorovodInternalError)
    assert issubclass(hvd.HorovodInternalError, RuntimeError)
    assert issubclass(hvd.CollectiveMismatch, hvd.HorovodInternalError)

"""Under mpiexec: the Horovod-shaped worker collectives (the server takes no part)."""

from mpi_run import run_mpi


def test_collectives(tmp_path):
    res = run_mpi(4, "collectives.py", out_dir=tmp_path).check()
    results = res.results()
    assert sorted(results) == [0, 1, 2]
    for rank, r in results.items():
        assert r["size"] == 3 and r["local_size"] == 3 and r["local_rank"] == rank
        assert r["avg"] == r["avg_kw"] == [1.0, 3.0]
        assert r["sum"] == r["sum_avgfalse"] == r["scaled"] == r["inplace"] == [3.0, 9.0]
        assert r["max"] == [2.0, 5.0] and r["min"] == [0.0, 1.0]
        assert r["fp16"] == [1.0, 3.0] and r["bf16_dtype"] == "torch.bfloat16"
        assert r["int_sum"] == [6]
        assert r["gather"] == [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0], [2.0, 2.0], [2.0, 2.0], [2.0, 2.0]]
        assert r["object"] == {"from": 2, "list": [1, 2]}
        assert r["gather_obj"] == ["w0", "w1", "w2"]
        assert r["bcast_params"] == [0.0] * 6
        assert r["bcast_opt_lr"] == 0.1
        assert "Adasum" in r["errors"]["adasum"]
        assert "not both" in r["errors"]["both"]
        assert "root_rank must be a worker rank in 0..2" in r["errors"]["root"]

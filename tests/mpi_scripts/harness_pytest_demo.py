"""A pytest file run *inside* every rank (``mpiexec -n 3 python -m pytest ...``): the
pattern that does not work with hvd_dc, because rank 0's hvd.init() serves and never
returns. tests/test_harness.py checks that rank 0 says so instead of only hanging."""

import hvd_dc as hvd


def test_init_inside_pytest():
    hvd.init()
    hvd.barrier()

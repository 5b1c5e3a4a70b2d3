"""Ranks launched with different HVD_DC_SERVERS (or HVD_DC_CHUNK_BYTES): init() must raise
the same error on every rank, quickly, and nothing may hang."""

from mpi4py import MPI

import hvd_dc as hvd
from common import parser, write_result

args = parser().parse_args()
rank = MPI.COMM_WORLD.Get_rank()
try:
    hvd.init()
    error = None
except RuntimeError as exc:
    error = str(exc)
write_result(args.out, rank, error=error)

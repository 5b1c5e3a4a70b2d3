"""``barrier`` (any process set) and Horovod's ``join`` (all the workers).

``join()``: this worker has no more data. It first completes its own outstanding
collectives, then tells the coordinator it joined; until every worker has joined, the
coordinator completes the other workers' ``allreduce`` and ``grouped_allreduce`` without
it and this worker takes part in their data phases with identity elements (zeros for
Sum/Average, so an average still divides by ``size()``). Any other collective called
meanwhile is an error on the workers that called it. Returns the rank of the worker that
joined last.
"""

from __future__ import annotations

import time
from typing import Any, List, Tuple

import torch
from mpi4py import MPI

from ..context import current as context
from ..negotiation import Engine, Verdict, engine
from ..waiting import Backoff, HvdDcTimeout
from .handles import drain, progress_all, submit, synchronize
from .ops import MPI_OPS, WIDE, ReduceOp, dtype_of, identity
from .process_sets import global_process_set, resolve

__all__ = ["barrier", "join"]


def barrier(process_set: Any = global_process_set) -> None:
    """Wait until every member of ``process_set`` (default: every worker; the server never
    takes part) reaches this call. A member missing after ``HVD_DC_TIMEOUT`` is named in
    the error on all the others."""
    eng = resolve(process_set, "barrier")
    synchronize(submit(eng, "barrier", None, [], lambda v: [], lambda v: None))


def join(device: int = -1) -> int:
    """Horovod's ``join``: this worker has no more data. Until every worker has joined it
    takes part in the others' ``allreduce`` and ``grouped_allreduce`` calls with its
    identity element (zeros for ``Sum``/``Average``, so an average still divides by
    ``size()``); any other collective called meanwhile is an error on the workers that
    called it. Returns the rank of the worker that joined last. Each wait for the others'
    next collective is bounded by ``HVD_DC_TIMEOUT``."""
    eng = engine(context())
    eng.check_usable()
    drain(eng)
    eng.start_join()
    serving: List[Tuple[torch.Tensor, MPI.Request]] = []
    last = time.monotonic()
    backoff = Backoff()
    while True:
        progress_all()
        while eng.to_serve:
            serving.extend(_serve(eng, eng.to_serve.pop(0)))
            last = time.monotonic()
            backoff.reset()
        serving = [(b, r) for b, r in serving if not r.Test()]
        if eng.join_result is not None and not serving:
            return int(eng.join_result)
        if time.monotonic() - last > eng.timeout:
            if serving:
                eng.broken = "an allreduce served from join() did not complete"
                raise HvdDcTimeout(f"hvd_dc worker {eng.worker_rank}: an allreduce served from join() did not "
                                   f"complete within {eng.timeout:g} s")
            missing = eng.not_joined()  # before leaving: on the coordinator, who has not joined
            eng.leave_join()
            if eng.coordinator is not None:
                who = f"workers {missing} neither joined nor called an allreduce"
            else:
                who = (f"no allreduce or end of join came from {eng.describe(0)}, which coordinates collectives and "
                       "names the workers that did not join when it waits in join() too")
            raise HvdDcTimeout(f"hvd_dc worker {eng.worker_rank}: join() waited {eng.timeout:g} s: {who} (set "
                               "HVD_DC_TIMEOUT to wait longer)")
        backoff.wait()


def _serve(eng: Engine, verdict: Verdict) -> List[Tuple[torch.Tensor, MPI.Request]]:
    """Take part in another worker's allreduce with identity elements."""
    desc = next(d for d in verdict.descriptors or () if d is not None)
    op = ReduceOp(desc.op)
    reqs = []
    for tinfo in desc.tensors:
        dtype = dtype_of(tinfo.dtype)
        wide = WIDE.get(dtype, dtype)
        buf = torch.full(tinfo.shape, identity(op, wide), dtype=wide)
        if buf.numel():
            reqs.append((buf, eng.comm.Iallreduce(MPI.IN_PLACE, buf.reshape(-1).numpy(), op=MPI_OPS[op])))
    return reqs

"""Run under ``mpiexec -n 2``: hvd_dc.protocol on its own, no server state, no optimizer.

Rank 0 answers with ServerWindows: a push's reply weights are a function of its gradient,
hyperparameters and sequence number, so the worker (rank 1, worker 0) can check every byte
it gets back, and the reply headers carry made-up counters that must come back unchanged.
``--case jump``: the worker skips a sequence number; the server must refuse it with a
ProtocolError naming the worker, and the worker's wait must time out naming the server.
"""

import time

import torch
from mpi4py import MPI

from common import parser, write_result
from hvd_dc.layout import FlatLayout, ParamInfo
from hvd_dc.protocol import ProtocolError, Reply, ReplyStatus, RequestKind, ServerWindows, WindowLayout, WorkerChannel
from hvd_dc.waiting import Backoff, HvdDcTimeout

p = parser()
p.add_argument("--case", choices=["exchange", "jump"], default="exchange")
p.add_argument("--requests", type=int, default=40)
args = p.parse_args()

comm = MPI.COMM_WORLD
assert comm.Get_size() == 2, "run with mpiexec -n 2"
layout = FlatLayout([ParamInfo("a", (5, 3), "float32", 0), ParamInfo("b", (7,), "float64", 1)])
wl = WindowLayout(layout, num_hyper=2, num_workers=1)


def expected_weights(kind, seq, grads, hyper):
    """What the server answers: a push's weights from its gradient, a pull's from seq."""
    if kind == RequestKind.PUSH:
        return [grads[0] * 2 + seq, grads[1] + hyper[0]]
    return [torch.full((15,), -float(seq)), torch.full((7,), -float(seq), dtype=torch.float64)]


def reply_header(kind, seq, hyper):
    status = ReplyStatus.OK if kind == RequestKind.PUSH else ReplyStatus.REJECTED_NONFINITE
    return Reply(seq, status, 10 * seq, seq % 3, int(hyper[1]))


if comm.Get_rank() == 0:
    sw = ServerWindows(comm, wl)
    for seg, value in zip(layout.segment_views(sw.reply_weights[0]), (0.5, 0.25)):
        seg.fill_(value)  # the initial weights the worker reads at open()
    sw.data_win.Sync()
    comm.Barrier()
    seen, error = [], None
    backoff, deadline = Backoff(), time.monotonic() + 60
    while len(seen) < args.requests and error is None and time.monotonic() < deadline:
        if not sw.pending().size:
            backoff.wait()
            continue
        backoff.reset()
        try:
            req = sw.request(0)
        except ProtocolError as exc:
            error = str(exc)
            break
        grads = [g.clone() for g in req.grad]
        hyper = req.hyper.copy()
        for seg, value in zip(layout.segment_views(sw.reply_weights[0]), expected_weights(req.kind, req.seq, grads, hyper)):
            seg.copy_(value)
        sw.reply(req, reply_header(req.kind, req.seq, hyper))
        seen.append([int(req.kind), req.seq])
    comm.Barrier()
    sw.free()
    write_result(args.out, "server", seen=seen, error=error, answered=sw.answered.tolist())
else:
    ch = WorkerChannel(comm, wl, 0, timeout=3.0)
    comm.Barrier()
    ch.open()
    initial = [seg.clone() for seg in layout.segment_views(ch.weights_area)]
    initial_ok = bool((initial[0] == 0.5).all() and (initial[1] == 0.25).all())
    gen = torch.Generator().manual_seed(0)
    grad_views = layout.segment_views(ch.grad_area, wire=True)
    mismatches, timeout_error = [], None
    for i in range(args.requests):
        kind = RequestKind.PULL if i % 4 == 3 else RequestKind.PUSH
        grads = [torch.randn(15, generator=gen), torch.randn(7, generator=gen, dtype=torch.float64)]
        for view, g in zip(grad_views, grads):
            view.copy_(g)
        ch.hyper[:] = [float(i), float(100 + i)]
        if args.case == "jump" and i == 2:
            ch.seq += 1  # a broken worker: request #4 follows #2
        try:
            reply = ch.exchange(kind)
        except HvdDcTimeout as exc:
            timeout_error = str(exc)
            break
        want = expected_weights(kind, ch.seq, grads, ch.hyper)
        got = layout.segment_views(ch.weights_area)
        if reply != reply_header(kind, ch.seq, ch.hyper) or not all(torch.equal(a, b) for a, b in zip(got, want)):
            mismatches.append(i)
    comm.Barrier()
    ch.free()
    write_result(args.out, 0, initial_ok=initial_ok, mismatches=mismatches, last_seq=ch.seq,
                 timeout_error=timeout_error)

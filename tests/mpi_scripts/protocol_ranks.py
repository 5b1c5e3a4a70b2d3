"""Run under ``mpiexec -n S+1``: hvd_dc.protocol on its own, no server state, no optimizer.

Ranks 0..S-1 answer with ServerWindows, each for its chunks of a model cut small: a
push's reply weights are a function of its gradient chunk, hyperparameters and sequence
number, so the worker (rank S) can check every byte it gets back, and the reply headers
carry made-up counters that must come back unchanged. The worker pushes its chunks in a
random order and reads replies while it pushes, as during backward.
``--case jump``: the worker skips a sequence number; the server must refuse it with a
ProtocolError naming the worker, and the worker's wait must time out naming the server.
"""

import random
import time

import torch
from mpi4py import MPI

from common import parser, write_result
from hvd_dc.chunks import ChunkPlan, chunk_spec
from hvd_dc.layout import ModelSpec
from hvd_dc.protocol import (ProtocolError, Reply, ReplyStatus, RequestKind, ServerWindows, Topology, WindowLayout,
                             WorkerChannel)
from hvd_dc.waiting import Backoff, HvdDcTimeout

p = parser()
p.add_argument("--servers", type=int, default=1)
p.add_argument("--case", choices=["exchange", "jump"], default="exchange")
p.add_argument("--requests", type=int, default=40)
args = p.parse_args()

comm = MPI.COMM_WORLD
topo = Topology(args.servers, comm.Get_size())
assert topo.num_workers == 1, "run with mpiexec -n servers+1"
a = torch.nn.Parameter(torch.zeros(1000))
b = torch.nn.Parameter(torch.zeros(300, dtype=torch.float64))
opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
spec = ModelSpec.from_optimizer(opt, 1, chunk_bytes=1024)
plan = ChunkPlan.for_spec(spec, topo.servers)
layouts = [WindowLayout.for_server(spec, plan, s, 1) for s in range(topo.servers)]


def expected(kind, seq, grad, hyper, n, dtype):
    """What a server answers for one chunk: a push's weights from its gradient, a pull's from seq."""
    if kind == RequestKind.PUSH:
        return grad * 2 + seq + hyper[0]
    return torch.full((n,), -float(seq), dtype=dtype)


def header(kind, seq, chunk, hyper):
    status = ReplyStatus.OK if kind == RequestKind.PUSH else ReplyStatus.REJECTED_NONFINITE
    return Reply(seq, status, 10 * seq + chunk, seq % 3, int(hyper[1]))


me = comm.Get_rank()
if me < topo.servers:
    wl = layouts[me]
    chunk_layouts = [chunk_spec(spec, c).layout() for c in wl.chunks]
    sw = ServerWindows(comm, topo, wl, chunk_layouts)
    for j, c in enumerate(wl.chunks):
        chunk_layouts[j].segment_views(sw.reply_weights[0][j])[0].fill_(0.5 + c.index)  # initial weights
    sw.data_win.Sync()
    comm.Barrier()
    seen, error = [], None
    goal = args.requests * len(wl.chunks)
    backoff, deadline = Backoff(), time.monotonic() + 60
    while len(seen) < goal and error is None and time.monotonic() < deadline:
        pending = sw.pending()
        if not pending:
            backoff.wait()
            continue
        backoff.reset()
        for m, j in pending:
            try:
                req = sw.request(m, j)
            except ProtocolError as exc:
                error = str(exc)
                break
            c = wl.chunks[j]
            view = chunk_layouts[j].segment_views(sw.reply_weights[m][j])[0]
            view.copy_(expected(req.kind, req.seq, req.grad[0], req.hyper, c.numel, view.dtype))
            sw.reply(req, header(req.kind, req.seq, c.index, req.hyper))
            seen.append([c.index, req.seq, int(req.kind)])
    comm.Barrier()
    answered = sw.answered.tolist()
    sw.free()
    write_result(args.out, f"server{me}", seen=seen, error=error, answered=answered,
                 chunks=[c.index for c in wl.chunks])
else:
    ch = WorkerChannel(comm, topo, plan, layouts, 0, timeout=3.0)
    comm.Barrier()
    ch.open(target=0)
    layout = plan.layout
    initial_ok = all(
        bool((layout.segment_views(ch.weights[0])[c.segment][c.start : c.start + c.numel] == 0.5 + c.index).all())
        for c in plan.chunks)
    gen = torch.Generator().manual_seed(0)
    rng = random.Random(0)
    grads = layout.segment_views(ch.grad_area, wire=True)
    mismatches, timeout_error = [], None
    for i in range(args.requests):
        kind = RequestKind.PULL if i % 4 == 3 else RequestKind.PUSH
        for g in grads:
            g.copy_(torch.randn(g.shape, generator=gen, dtype=g.dtype))
        ch.hyper[:] = [float(i), float(100 + i), 0.0][: ch.hyper.size]
        target = i % 2
        ch.begin(kind, target)
        if args.case == "jump" and i == 2:
            ch.seq += 1  # a broken worker: request #4 follows #2
        order = list(range(len(plan.chunks)))
        rng.shuffle(order)
        for c in order:
            ch.push(c)
            ch.progress()
        try:
            heads = ch.finish()
        except HvdDcTimeout as exc:
            timeout_error = str(exc)
            break
        got = layout.segment_views(ch.weights[target])
        for c in plan.chunks:
            want = expected(kind, ch.seq, grads[c.segment][c.start : c.start + c.numel], ch.hyper, c.numel,
                            got[c.segment].dtype)
            ok = torch.equal(got[c.segment][c.start : c.start + c.numel], want)
            if not ok or tuple(int(x) for x in heads[c.index][:5]) != tuple(header(kind, ch.seq, c.index, ch.hyper)):
                mismatches.append([i, c.index])
    comm.Barrier()
    ch.free()
    write_result(args.out, 0, initial_ok=initial_ok, mismatches=mismatches, last_seq=ch.seq,
                 timeout_error=timeout_error, chunks=len(plan.chunks),
                 servers_of_chunks=[c.server for c in plan.chunks])

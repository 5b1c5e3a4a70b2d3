"""Run under ``mpiexec -n 2``: rank 0 answers with hvd_dc's ServerWindows, rank 1 times one
request through WorkerChannel: every chunk of the model pushed (Put gradient chunk, raise its
flag), then every reply read (wait, Get weights chunk), with the default chunking.

The server side is a minimal answering loop: it publishes each reply without applying
anything (no DC math, no optimizer, no weight copy), so the time is the transport alone.
It waits with hvd_dc's own Backoff, as the real server loop does.
"""

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch
from mpi4py import MPI

from hvd_dc.chunks import ChunkPlan, chunk_spec
from hvd_dc.layout import ModelSpec
from hvd_dc.protocol import Reply, ReplyStatus, RequestKind, ServerWindows, Topology, WindowLayout, WorkerChannel
from hvd_dc.waiting import Backoff

p = argparse.ArgumentParser()
p.add_argument("--out", required=True)
p.add_argument("--sizes", required=True)
p.add_argument("--repeats", type=int, default=20)
args = p.parse_args()

torch.set_num_threads(1)
comm = MPI.COMM_WORLD
rank = comm.Get_rank()
assert comm.Get_size() == 2, "run with mpiexec -n 2"
rows = []
topo = Topology(1, 2)
for n in [int(s) for s in args.sizes.split(",")]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.empty(n, device="meta"))], lr=0.1)
    spec = ModelSpec.from_optimizer(opt, 1)
    plan = ChunkPlan.for_spec(spec, 1)
    wl = WindowLayout.for_server(spec, plan, 0, 1)
    if rank == 0:
        sw = ServerWindows(comm, topo, wl, [chunk_spec(spec, c).layout() for c in wl.chunks])
        done = comm.Ibarrier()
        backoff = Backoff()
        while True:
            pending = sw.pending()
            if pending:
                for m, j in pending:
                    req = sw.request(m, j)
                    sw.reply(req, Reply(req.seq, ReplyStatus.OK, req.seq, 0, 0))
                backoff.reset()
            elif done.Test():
                break
            else:
                backoff.wait()
        sw.free()
    else:
        ch = WorkerChannel(comm, topo, plan, [wl], 0, timeout=120.0, double_buffer=False)
        ch.open()
        ch.grad_area.view(torch.float32)[:n].normal_(0, 1e-3)

        def exchange():
            ch.begin(RequestKind.PUSH, 0)
            for c in range(len(plan.chunks)):
                ch.push(c)
            ch.finish()

        for _ in range(3):  # warm-up: first touches of the window pages
            exchange()
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            exchange()
            times.append(time.perf_counter() - t0)
        moved = sum(wl.push_nbytes) + sum(wl.reply_nbytes)
        src = np.random.default_rng(0).random(moved // 4, dtype=np.float32)
        dst = np.empty_like(src)
        mt = []
        for i in range(args.repeats + 2):
            t0 = time.perf_counter()
            np.copyto(dst, src)
            if i >= 2:
                mt.append(time.perf_counter() - t0)
        comm.Ibarrier().Wait()  # matches the server's Ibarrier (a blocking Barrier would not)
        ch.free()
        t = statistics.median(times)
        m = statistics.median(mt)
        rows.append({
            "n": n,
            "chunks": len(plan.chunks),
            "push_bytes": sum(wl.push_nbytes),
            "pull_bytes": sum(wl.reply_nbytes),
            "exchange_s": t,
            "exchange_p90_s": float(np.percentile(times, 90)),
            "memcpy_s": m,
            "exchange_vs_memcpy": t / m,
            "exchange_GBps": moved / t / 1e9,
            "memcpy_GBps": moved / m / 1e9,
        })
    del wl
if rank == 1:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "rank1.json"), "w") as f:
        json.dump({"rank": 1, "rows": rows}, f)

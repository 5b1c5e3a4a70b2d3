"""Run under ``mpiexec -n 2``: rank 0 answers with hvd_dc's ServerWindows, rank 1 times
WorkerChannel.exchange(RequestKind.PUSH) (Put gradient, raise flag, wait, Get weights).

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

from hvd_dc.layout import FlatLayout, ParamInfo
from hvd_dc.protocol import Reply, ReplyStatus, RequestKind, ServerWindows, WindowLayout, WorkerChannel
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
for n in [int(s) for s in args.sizes.split(",")]:
    layout = FlatLayout([ParamInfo("w", (n,), "float32", 0)])
    wl = WindowLayout(layout, num_hyper=1, num_workers=1)
    if rank == 0:
        sw = ServerWindows(comm, wl)
        done = comm.Ibarrier()
        backoff = Backoff()
        while True:
            if sw.pending().size:
                req = sw.request(0)
                sw.reply(req, Reply(req.seq, ReplyStatus.OK, req.seq, 0, 0))
                backoff.reset()
            elif done.Test():
                break
            else:
                backoff.wait()
        sw.free()
    else:
        ch = WorkerChannel(comm, wl, 0, timeout=120.0)
        ch.open()
        ch.grad_area.view(torch.float32)[:n].normal_(0, 1e-3)
        for _ in range(3):  # warm-up: first touches of the window pages
            ch.exchange(RequestKind.PUSH)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            ch.exchange(RequestKind.PUSH)
            times.append(time.perf_counter() - t0)
        moved = wl.push_nbytes + wl.reply_nbytes
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
            "push_bytes": wl.push_nbytes,
            "pull_bytes": wl.reply_nbytes,
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

"""Benchmark 6: scale-out. Exposed communication with and without overlap, the server tier
(updates/s with 1 and 2 server ranks, apply on 1 and 2 threads), and a 25M-parameter
straggler run against synchronous data parallelism.

1. **Exposed communication per step.** One worker, a 25M-parameter float32 model whose
   backward takes T (layers whose backward sleeps: the CPU is free, as when a GPU
   computes): step time / compute time - 1, blocking exchange (``overlap="off"``) vs
   overlapped (``overlap="on"``). Target <= 0.10 at T = 100 ms.
2. **Server tier.** (a) Updates/s with S = 1 and S = 2 server ranks when the servers are the
   bottleneck (workers with T = 0: a push as soon as the last reply arrived). (b) One push
   of a 25M and a 50M model applied by a server's chunk states on 1 and 2 threads, in one
   process (``ShardState``, the fused kernels). Target >= 1.6x with 2 threads.
3. **Straggler at 25M.** 4 workers, T = 100 ms, one 4x slower: gradients/s as a fraction of
   the asynchronous ideal (3 + 1/4) / T, and against DDP (and Horovod when its interpreter
   is there) in the same run. Targets >= 0.9 and >= 3x.

Every ratio is measured in one run; timings are medians. Run:
``python benchmarks/scale_out.py [--quick] [--only exposed,tier,apply,straggler] [--out DIR]``.
"""

from __future__ import annotations

import concurrent.futures
import sys
import tempfile
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent / "_workers")]

import torch  # noqa: E402

import common  # noqa: E402
import launch  # noqa: E402
from hvd_dc.chunks import ChunkPlan, chunk_spec  # noqa: E402
from hvd_dc.layout import ModelSpec, read_hyperparameters  # noqa: E402
from hvd_dc.server_state import ShardState  # noqa: E402

PARTS = ("exposed", "apply", "tier", "straggler")


def exposed(quick: bool) -> dict:
    params, T, steps = (2_500_000, 0.02, 5) if quick else (25_000_000, 0.1, 20)
    rows = []
    for overlap in ("off", "on"):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = common.mpiexec() + ["-n", "2", sys.executable, str(common.WORKERS / "exposed_worker.py"),
                                      "--out", tmp, "--params", str(params), "--sleep", str(T), "--overlap", overlap,
                                      "--measure-steps", str(steps)]
            common.run(cmd, timeout=600)
            r = common.read_rank_results(Path(tmp))[0]
        rows.append({"overlap": overlap, "params": params, "T_s": T, "compute_s": r["compute_s"], "step_s": r["step_s"],
                     "exposed": r["exposed"], "chunks": r["stats"]["chunks"]})
        print(f"exposed, overlap={overlap}: {r['exposed']:.3f} of the compute time", flush=True)
    return {"rows": rows, "target": 0.10}


def _shard(n: int, threads: int):
    p = torch.nn.Parameter(torch.empty(n, device="meta"))
    opt = torch.optim.SGD([p], lr=0.01, momentum=0.9)
    spec = ModelSpec.from_optimizer(opt, 1)
    plan = ChunkPlan.for_spec(spec, 1)
    g = torch.Generator().manual_seed(0)
    initial = torch.zeros(plan.layout.nbytes, dtype=torch.uint8)
    plan.layout.param_views(initial)[0].copy_(torch.randn(n, generator=g))
    replies = [[torch.zeros(chunk_spec(spec, c).layout().nbytes, dtype=torch.uint8) for c in plan.chunks]]
    shard = ShardState(spec, plan.chunks, initial, replies)
    grads = [st.layout.segment_views((torch.randn(c.numel, generator=g) * 1e-3).view(torch.uint8), wire=True)
             for st, c in zip(shard.states, plan.chunks)]
    hyper = [0.0] * len(spec.hyper_slots)
    read_hyperparameters(spec.groups, spec.hyper_slots, hyper)
    return shard, grads, hyper


def apply_threads(quick: bool) -> dict:
    sizes = [2_500_000] if quick else [25_000_000, 50_000_000]
    repeats = 3 if quick else 9
    rows = []
    torch.set_num_threads(1)
    for n in sizes:
        shard, grads, hyper = _shard(n, 1)
        times = {}
        for threads in (1, 2):
            pool = concurrent.futures.ThreadPoolExecutor(threads)

            def push():
                futures = [pool.submit(st.apply_push, 0, g, hyper, True) for st, g in zip(shard.states, grads)]
                for f in futures:
                    f.result()

            times[threads] = common.median_time(push, repeats, warmup=2)
            pool.shutdown()
        rows.append({"params": n, "chunks": len(shard.states), "one_thread_s": times[1], "two_threads_s": times[2],
                     "speedup": times[1] / times[2]})
        print(f"apply {n:,}: 1 thread {times[1] * 1e3:.1f} ms, 2 threads {times[2] * 1e3:.1f} ms "
              f"({times[1] / times[2]:.2f}x)", flush=True)
    return {"rows": rows, "target": 1.6}


def tier(quick: bool) -> dict:
    params = 2_500_000 if quick else 25_000_000
    warmup, window = (0.5, 1.5) if quick else (2.0, 8.0)
    rows = []
    for servers in (1, 2):
        res = launch.launch("hvd_dc", 2, ["--model", "sleepy", "--params", params, "--sleep", 0.0, "--overlap", "on",
                                          "--warmup", warmup, "--window", window], timeout=600,
                            servers=servers)
        rate = launch.rate("hvd_dc", res)
        rows.append({"servers": servers, "workers": 2, "params": params, "updates_per_s": rate})
        print(f"tier: {servers} server(s): {rate:.1f} updates/s", flush=True)
    return {"rows": rows, "ratio": rows[1]["updates_per_s"] / rows[0]["updates_per_s"]}


def straggler(quick: bool) -> dict:
    params, T = (2_500_000, 0.02) if quick else (25_000_000, 0.1)
    warmup, window = (0.5, 2.0) if quick else (3.0, 12.0)
    systems = ["hvd_dc", "ddp"] + (["horovod"] if common.horovod_available() else [])
    rates = {}
    for s in systems:
        extra = ["--model", "sleepy", "--params", params, "--sleep", T, "--slow-factor", 4, "--warmup", warmup,
                 "--window", window]
        if s == "hvd_dc":
            extra += ["--overlap", "on"]
        res = launch.launch(s, 4, extra, 900)
        rates[s] = launch.rate(s, res)
        print(f"straggler: {s}: {rates[s]:.2f} gradients/s", flush=True)
    ideal = (3 + 1 / 4) / T
    return {"params": params, "T_s": T, "ideal_per_s": ideal, "rates": rates,
            "vs_ideal": rates["hvd_dc"] / ideal, "vs_ddp": rates["hvd_dc"] / rates["ddp"],
            "vs_horovod": rates["hvd_dc"] / rates["horovod"] if "horovod" in rates else None,
            "horovod": "measured" if "horovod" in rates else common.HOROVOD_SKIPPED,
            "targets": {"vs_ideal": 0.9, "vs_sync": 3.0}}


def table(d: dict) -> str:
    lines = []
    if "exposed" in d:
        e = d["exposed"]
        lines.append(common.format_table(
            ["overlap", "params", "T (ms)", "compute (ms)", "step (ms)", "exposed / compute"],
            [[r["overlap"], f"{r['params']:,}", r["T_s"] * 1e3, r["compute_s"] * 1e3, r["step_s"] * 1e3, r["exposed"]]
             for r in e["rows"]]))
        lines.append(f"\ntarget: exposed <= {e['target']} with overlap\n")
    if "apply" in d:
        lines.append(common.format_table(["params", "chunks", "1 thread (ms)", "2 threads (ms)", "speedup"],
                                         [[f"{r['params']:,}", r["chunks"], r["one_thread_s"] * 1e3,
                                           r["two_threads_s"] * 1e3, r["speedup"]] for r in d["apply"]["rows"]]))
        lines.append(f"\ntarget: >= {d['apply']['target']}x with 2 threads\n")
    if "tier" in d:
        lines.append(common.format_table(["servers", "workers", "params", "updates/s"],
                                         [[r["servers"], r["workers"], f"{r['params']:,}", r["updates_per_s"]]
                                          for r in d["tier"]["rows"]]))
        lines.append(f"\nS = 2 / S = 1: {d['tier']['ratio']:.2f}x\n")
    if "straggler" in d:
        s = d["straggler"]
        rows = [[k, v] for k, v in s["rates"].items()]
        lines.append(common.format_table(["system", "gradients/s"], rows))
        lines.append(f"\nasync ideal {s['ideal_per_s']:.2f}/s; hvd_dc {s['vs_ideal']:.2f} of it (target 0.9); "
                     f"vs DDP {s['vs_ddp']:.2f}x" + (f", vs Horovod {s['vs_horovod']:.2f}x" if s["vs_horovod"] else
                                                       f"; Horovod: {s['horovod']}") + " (target 3x)\n")
    return "\n".join(lines)


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    args = p.parse_args()
    parts = args.only.split(",")
    out = {"quick": args.quick}
    for name, fn in (("exposed", exposed), ("apply", apply_threads), ("tier", tier), ("straggler", straggler)):
        if name in parts:
            out[name] = fn(args.quick)
    out["table"] = table(out)
    print(out["table"])
    common.write_json(args.out, "scale_out", out)


if __name__ == "__main__":
    main()

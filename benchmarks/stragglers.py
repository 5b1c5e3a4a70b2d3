"""Benchmark 4: 4 workers, one 4x slower; hvd_dc against synchronous data parallelism.

Throughput: gradients applied per second (hvd_dc: server updates/s; DDP/Horovod: a
synchronous step consumes one mini-batch per worker, so steps/s x 4). Every worker sleeps
T per step (the straggler 4T) and runs a real backward of the digits MLP. Ideal ratio
hvd_dc / sync = (3 + 1/4) / 1 = 3.25; target >= 2.8.

Time to accuracy: same straggler, digits MLP, seconds from start until test accuracy
reaches the threshold (hvd_dc: worker 0 evaluates after each of its steps; sync: rank 0
after each step). hvd_dc uses lr 0.05 (single-process lr, momentum 0.9 on the server);
DDP/Horovod use lr 0.05 x 4 (the synchronous convention). Medians over repeats.

Peers: torch DDP (gloo, loopback TCP) and Horovod's DistributedOptimizer when the
Horovod interpreter (``$HVD_DC_HOROVOD_PYTHON``, default /work/venv-hvd/bin/python) imports
``horovod.torch``; otherwise its column is skipped and says so.

Run: ``python benchmarks/stragglers.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent / "_workers")]

import common  # noqa: E402
import launch  # noqa: E402

IDEAL = 3.25


def main() -> None:
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    T = 0.02 if args.quick else 0.05
    warmup, window = (0.5, 1.5) if args.quick else (2.0, 10.0)
    threshold = 0.9 if args.quick else 0.95
    repeats = 1 if args.quick else 3
    systems = ["hvd_dc", "ddp"]
    if common.horovod_available():
        systems.append("horovod")
    else:
        print(common.HOROVOD_SKIPPED)
    rates = {}
    for s in systems:
        res = launch.launch(s, 4, ["--sleep", T, "--slow-factor", 4, "--warmup", warmup, "--window", window], 300)
        rates[s] = launch.rate(s, res)
        print(f"{s}: {rates[s]:.1f} gradients/s", flush=True)
    tta = {s: [] for s in systems}
    for rep in range(repeats):
        for s in systems:
            res = launch.launch(s, 4, ["--mode", "tta", "--sleep", T, "--slow-factor", 4, "--threshold", threshold,
                                       "--max-seconds", 120], 400)
            tta[s].append(res[0]["reached"])
            print(f"{s}: reached {threshold} in {res[0]['reached']} s", flush=True)
    rows = []
    for s in systems + ([] if "horovod" in systems else ["horovod"]):
        if s not in systems:
            rows.append({"system": s, "skipped": common.HOROVOD_SKIPPED})
            continue
        times = [t for t in tta[s] if t is not None]
        rows.append({
            "system": s,
            "grads_per_s": rates[s],
            "hvd_dc_speedup": rates["hvd_dc"] / rates[s],
            "tta_s": tta[s],
            "tta_median_s": statistics.median(times) if len(times) == len(tta[s]) else None,
        })
    headers = ["system", "gradients/s", "hvd_dc / this (ideal 3.25)", f"seconds to {threshold} test acc (median)",
               "runs (s)"]
    table = []
    for r in rows:
        if "skipped" in r:
            table.append([r["system"], r["skipped"], None, None, None])
        else:
            table.append([r["system"], r["grads_per_s"], r["hvd_dc_speedup"], r["tta_median_s"],
                          ", ".join("never" if t is None else f"{t:.2f}" for t in r["tta_s"])])
    text = common.format_table(headers, table)
    print(text)
    print(f"T = {T * 1e3:.0f} ms (straggler {4 * T * 1e3:.0f} ms); ideal hvd_dc/sync = {IDEAL}, target >= 2.8")
    common.write_json(args.out, "stragglers", {
        "quick": args.quick, "sleep_s": T, "slow_factor": 4, "workers": 4, "threshold": threshold,
        "repeats": repeats, "ideal_ratio": IDEAL, "target": {"ratio": 2.8}, "rows": rows, "table": text})


if __name__ == "__main__":
    main()

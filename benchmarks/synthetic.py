"""Benchmark 5: images/s of a real CNN on synthetic data (pytorch_synthetic_benchmark
style) for Horovod, DDP and hvd_dc side by side.

No sleeps here: the compute is on the CPU (a 3-conv + 2-linear CNN on 3x32x32 images,
batch 32, one thread per rank), so on a 2-core machine the workers compete for the cores
with each other and, for hvd_dc, with the parameter server process. images/s = gradients
per second x batch. Systems are run interleaved, ``repeats`` times; medians. This is the
benchmark most sensitive to a shared machine: a synchronous step waits for the slower
rank, so CPU stolen from either rank costs both.

Run: ``python benchmarks/synthetic.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent / "_workers")]

import common  # noqa: E402
import launch  # noqa: E402

BATCH = 32


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    warmup, window = (0.5, 1.5) if args.quick else (3.0, 10.0)
    wsteps, steps = (2, 8) if args.quick else (10, 100)
    systems = ["hvd_dc", "ddp"]
    if common.horovod_available():
        systems.append("horovod")
    else:
        print(common.HOROVOD_SKIPPED)
    repeats = 1 if args.quick else 3
    samples = {s: [] for s in systems}
    for rep in range(repeats):  # systems interleaved: a busy spell hits each of them alike
        for s in systems:
            extra = ["--model", "cnn", "--batch", BATCH, "--sleep", 0.0, "--warmup", warmup, "--window", window,
                     "--warmup-steps", wsteps, "--steps", steps]  # hvd_dc uses the time window, sync the step counts
            res = launch.launch(s, args.workers, extra, 300)
            samples[s].append(launch.rate(s, res) * BATCH)
            print(f"{s}: {samples[s][-1]:.0f} images/s", flush=True)
    rows = [{"system": s, "workers": args.workers, "images_per_s": statistics.median(samples[s]),
             "runs": samples[s]} for s in systems]
    if "horovod" not in systems:
        rows.append({"system": "horovod", "skipped": common.HOROVOD_SKIPPED})
    ddp = next(r for r in rows if r["system"] == "ddp")["images_per_s"]
    for r in rows:
        if "images_per_s" in r:
            r["vs_ddp"] = r["images_per_s"] / ddp
    text = common.format_table(["system", "workers", "images/s (median)", "vs DDP", "runs"],
                               [[r["system"], r.get("workers"), r.get("images_per_s", r.get("skipped")), r.get("vs_ddp"),
                                 ", ".join(f"{x:.0f}" for x in r.get("runs", []))] for r in rows])
    print(text)
    common.write_json(args.out, "synthetic", {"quick": args.quick, "batch": BATCH, "model": "3-conv CNN, 32x32x3",
                                              "repeats": repeats, "rows": rows, "table": text})


if __name__ == "__main__":
    main()

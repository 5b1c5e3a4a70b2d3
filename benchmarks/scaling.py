"""Benchmark 3: hvd_dc updates per second with 1, 2, 4, 8 workers whose compute does not
use the CPU (each step sleeps T, standing for a GPU's forward/backward, plus a real
backward of the digits MLP), against the ideal N / T.

Each run is real hvd_dc under ``mpiexec -n N+1``; the rate is server updates (pushes
applied) completing inside a fixed wall window after a warm-up. Target: >= 0.9 of ideal
up to 4 workers on a 2-core machine.

Run: ``python benchmarks/scaling.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent / "_workers")]

import common  # noqa: E402
import launch  # noqa: E402


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--sleep", type=float, default=None, help="T in seconds (default 0.05; quick 0.02)")
    args = p.parse_args()
    T = args.sleep or (0.02 if args.quick else 0.05)
    counts = [1, 2] if args.quick else [1, 2, 4, 8]
    warmup, window = (0.5, 1.0) if args.quick else (2.0, 8.0)
    rows = []
    for n in counts:
        res = launch.launch("hvd_dc", n, ["--sleep", T, "--warmup", warmup, "--window", window], timeout=240)
        r = launch.rate("hvd_dc", res)
        rows.append({"workers": n, "updates_per_s": r, "ideal_per_s": n / T, "vs_ideal": r * T / n,
                     "staleness_mean": sum(x["stats"]["staleness_mean"] for x in res.values()) / n})
        print(f"{n} workers: {r:.1f} updates/s", flush=True)
    headers = ["workers", "updates/s", "ideal N/T", "fraction of ideal", "mean staleness"]
    text = common.format_table(headers, [[r["workers"], r["updates_per_s"], r["ideal_per_s"], r["vs_ideal"],
                                          r["staleness_mean"]] for r in rows])
    print(text)
    print(f"T = {T * 1e3:.0f} ms sleep + digits-MLP backward per step; target >= 0.9 of ideal up to 4 workers")
    common.write_json(args.out, "scaling", {"quick": args.quick, "sleep_s": T, "warmup_s": warmup, "window_s": window,
                                            "target": {"vs_ideal_up_to_4": 0.9}, "rows": rows, "table": text})


if __name__ == "__main__":
    main()

"""A cost model of hvd_dc, calibrated from this machine's measurements, checked against them,
and projected to GPU clusters next to ring allreduce.

Calibration (from the JSON the other benchmarks wrote in ``--results``):

* ``a``: server seconds per byte of a push applied, on one core (``apply_rate.json``: the
  fused DC-ASGD-a + SGD step with the pull's copy, 10M and 50M parameters);
* ``b``: worker seconds per byte moved through the windows, chunk requests included
  (``transport.json``: one push + pull of every chunk of a 10M and a 50M model, default
  chunk size; the per-chunk part cannot be told apart from the per-byte part there, since
  the number of chunks grows with the bytes, so it is folded in: ``o = 0``);
* ``h2``: the apply speed-up with 2 threads (``scale_out.json``, part ``apply``).

Model, for N workers whose step computes for T seconds (CPU free), a model of P bytes in
chunks of c bytes, S servers, links of B bytes/s (``inf``: shared memory, where the worker
itself copies through the window) and a machine of K cores:

* a worker's exchange, blocking: ``2P/B_w + P*a/S_eff + n_chunks*o`` with ``B_w = 1/b`` on
  shared memory; overlapped: what does not fit under T, plus the last chunk's round trip
  ``2c*b + c*a + o``;
* a server applies ``P/S`` bytes per update: ``P*a/(S*h)`` seconds, or moves ``P/S`` bytes
  each way over its link (``P/(S*B)``): updates/s <= 1 / max of the two;
* on one machine all ranks share K cores: CPU seconds per update ``2P*b + P*a`` give
  updates/s <= K / that;
* updates/s = min(sum over workers of 1/(T_i + exposed), server bound, core bound).

Ring allreduce (synchronous): step = T_slowest + 2(N-1)/N * P/B; gradients/s = N / step.

Checked against every point this machine measured (``scaling.json``; ``scale_out.json``:
exposed step times, server tier, 25M straggler): the table says predicted, measured and the
error, and whether it is within 20 %. Then the projection for 8-256 GPU workers.

Run: ``python benchmarks/scale_model.py [--out DIR] [--results DIR]`` (results default: --out,
benchmarks/results). ``--quick`` changes nothing here: the model reads what was measured.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

CHUNK = 4_096_000
GBIT = 1e9 / 8  # bytes per second in one Gb/s


def load(results: Path, name: str) -> dict:
    path = results / f"{name}.json"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run benchmarks/run_all.py (or benchmarks/{name}.py) first")
    return json.loads(path.read_text())


def calibrate(results: Path) -> dict:
    apply_rows = [r for r in load(results, "apply_rate")["rows"] if r["n"] >= 10_000_000]
    a = statistics.median(r["hvd_dc"]["apply_pull_s"] / (4 * r["n"]) for r in apply_rows)
    rows = [r for r in load(results, "transport")["rows"] if r["n"] >= 10_000_000]
    b = statistics.median(r["exchange_s"] / (r["push_bytes"] + r["pull_bytes"]) for r in rows)
    o = 0.0
    so = load(results, "scale_out")
    h2 = statistics.median(r["speedup"] for r in so["apply"]["rows"]) if "apply" in so else 1.0
    machine = so.get("machine", {})
    return {"a": a, "b": b, "o": o, "h2": h2, "cores": machine.get("cores", 2)}


def exchange(c: dict, P: float, T: float, servers: int, threads: float, B: float, overlap: bool) -> float:
    """Seconds a worker's step is longer than its compute T (one worker, servers idle)."""
    b = c["b"] if math.isinf(B) else 1.0 / B
    chunks = max(1, math.ceil(P / CHUNK))
    apply_s = P * c["a"] / (servers * threads)
    full = 2 * P * b + apply_s + chunks * c["o"]
    if not overlap:
        return full
    piece = min(P, CHUNK)
    tail = 2 * piece * b + piece * c["a"] + c["o"]
    return max(tail, full - T)


def updates_per_s(c: dict, P: float, Ts, servers: int, threads: float, B: float, overlap: bool,
                  cores: float = math.inf) -> float:
    workers = sum(1.0 / (T + exchange(c, P, T, servers, threads, B, overlap)) for T in Ts)
    per_server = max(P * c["a"] / (servers * threads), 0.0 if math.isinf(B) else P / (servers * B))
    bound = 1.0 / per_server if per_server > 0 else math.inf
    cpu = 2 * P * c["b"] + P * c["a"]  # one machine: every byte copied by someone's core
    core_bound = cores / cpu if math.isfinite(cores) else math.inf
    return min(workers, bound, core_bound)


def ring(P: float, Ts, B: float) -> float:
    n = len(Ts)
    return n / (max(Ts) + 2 * (n - 1) / n * P / B)


def check(c: dict, results: Path) -> list:
    """(what, predicted, measured) for every point measured here."""
    points = []
    sc = load(results, "scaling")
    small = 4 * 5_000  # the digits MLP of benchmarks/_workers/bench_models.py, float32
    for r in sc["rows"]:
        pred = updates_per_s(c, small, [sc["sleep_s"]] * r["workers"], 1, 1, math.inf, False, c["cores"])
        points.append((f"scaling, {r['workers']} workers, T={sc['sleep_s'] * 1e3:.0f} ms: updates/s", pred,
                       r["updates_per_s"]))
    so = load(results, "scale_out")
    for r in so.get("exposed", {}).get("rows", []):
        P = 4 * r["params"]
        pred = r["compute_s"] + exchange(c, P, r["compute_s"], 1, 1, math.inf, r["overlap"] == "on")
        points.append((f"exposed, overlap {r['overlap']}, {r['params'] / 1e6:.0f}M: step s", pred, r["step_s"]))
    for r in so.get("tier", {}).get("rows", []):
        P = 4 * r["params"]
        pred = updates_per_s(c, P, [0.0] * r["workers"], r["servers"], 1, math.inf, True, c["cores"])
        points.append((f"server tier, S={r['servers']}, {r['workers']} workers, T=0: updates/s", pred,
                       r["updates_per_s"]))
    st = so.get("straggler")
    if st:
        P, T = 4 * st["params"], st["T_s"]
        pred = updates_per_s(c, P, [T, T, T, 4 * T], 1, 1, math.inf, True, c["cores"])
        points.append((f"straggler, 4 workers, {st['params'] / 1e6:.0f}M, T={T * 1e3:.0f} ms: gradients/s", pred,
                       st["rates"]["hvd_dc"]))
    return points


def projection(c: dict) -> list:
    """ResNet-50 (25.6M float32 parameters), T = 100 ms per GPU step, one server per 8 GPUs,
    16 apply threads per server (capped at 8x one core: memory bandwidth)."""
    P, T = 4 * 25.6e6, 0.1
    rows = []
    for gbits in (100, 200, 400):
        B = gbits * GBIT
        for n in (8, 16, 32, 64, 128, 256):
            Ts = [T] * n
            servers = max(1, n // 8)
            dc = updates_per_s(c, P, Ts, servers, 8.0, B, True)
            straggler = Ts[:-1] + [4 * T]
            rows.append({"gbits": gbits, "workers": n, "servers": servers, "hvd_dc": dc,
                         "ring": ring(P, Ts, B), "hvd_dc_straggler": updates_per_s(c, P, straggler, servers, 8.0,
                                                                                    B, True),
                         "ring_straggler": ring(P, straggler, B), "ideal": n / T})
    return rows


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--results", default=None, help="where the measured JSON is (default: --out)")
    args = p.parse_args()
    args.results = args.results or args.out
    c = calibrate(Path(args.results))
    print(f"calibrated: apply {1 / c['a'] / 1e9:.1f} GB/s per core, window copy {1 / c['b'] / 1e9:.1f} GB/s, "
          f"{c['o'] * 1e6:.0f} us per chunk request, 2-thread apply speed-up {c['h2']:.2f}, {c['cores']} cores")
    points = check(c, Path(args.results))
    rows = [[what, pred, meas, f"{(pred - meas) / meas * 100:+.0f}%", "yes" if abs(pred - meas) <= 0.2 * meas else "NO"]
            for what, pred, meas in points]
    check_table = common.format_table(["point", "predicted", "measured", "error", "within 20%"], rows)
    print(check_table)
    proj = projection(c)
    proj_table = common.format_table(
        ["Gb/s", "GPU workers", "servers", "hvd_dc grads/s", "ring allreduce", "hvd_dc, one 4x straggler",
         "ring, one 4x straggler", "ideal N/T"],
        [[r["gbits"], r["workers"], r["servers"], r["hvd_dc"], r["ring"], r["hvd_dc_straggler"], r["ring_straggler"],
          r["ideal"]] for r in proj])
    print(proj_table)
    within = sum(1 for _, pred, meas in points if abs(pred - meas) <= 0.2 * meas)
    common.write_json(args.out, "scale_model", {
        "calibration": c, "check": [{"point": w, "predicted": pr, "measured": m} for w, pr, m in points],
        "within_20_percent": f"{within} of {len(points)}", "projection": proj,
        "table": check_table + f"\n\n{within} of {len(points)} points within 20 %.\n\nProjection (ResNet-50 size, "
                 "T = 100 ms per GPU step, one server per 8 GPUs):\n\n" + proj_table})


if __name__ == "__main__":
    main()

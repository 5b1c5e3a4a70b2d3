"""Benchmark 2: a worker's push+pull time against memcpy of the same bytes.

Uses the real protocol (``hvd_dc.protocol``) under ``mpiexec -n 2``: rank 0 is a minimal
answering loop on ``ServerWindows`` that publishes each reply without applying anything,
rank 1 times ``WorkerChannel.exchange(KIND_PUSH)`` = Put of the push area (meta,
hyperparameters, n float32 gradient), flag atomics, wait for the reply flag, Get of the
reply area (meta, n float32 weights). The server's apply cost is benchmark 1's.

Baseline: one ``np.copyto`` of (push bytes + pull bytes) in the worker's process, same run.
Target: exchange / memcpy <= 2 at 10M parameters.

Run: ``python benchmarks/transport.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def main() -> None:
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    sizes = [100_000, 1_000_000] if args.quick else [1_000_000, 10_000_000, 50_000_000]
    repeats = 10 if args.quick else 30
    with tempfile.TemporaryDirectory() as tmp:
        cmd = common.mpiexec() + ["-n", "2", sys.executable, str(common.WORKERS / "transport_ranks.py"),
                                  "--out", tmp, "--sizes", ",".join(map(str, sizes)), "--repeats", str(repeats)]
        common.run(cmd, timeout=120 if args.quick else 600)
        rows = common.read_rank_results(Path(tmp))[1]["rows"]
    headers = ["params", "push MB", "pull MB", "push+pull ms (median)", "p90 ms", "memcpy ms", "exchange / memcpy",
               "exchange GB/s"]
    table = [[f"{r['n']:,}", r["push_bytes"] / 1e6, r["pull_bytes"] / 1e6, r["exchange_s"] * 1e3,
              r["exchange_p90_s"] * 1e3, r["memcpy_s"] * 1e3, r["exchange_vs_memcpy"], r["exchange_GBps"]]
             for r in rows]
    text = common.format_table(headers, table)
    print(text)
    print("target: exchange / memcpy <= 2 at 10M parameters "
          "(server = answering loop without apply; see benchmark 1 for the apply)")
    common.write_json(args.out, "transport", {
        "quick": args.quick,
        "method": "mpiexec -n 2; rank 0 answers with ServerWindows.publish_reply, no apply; "
                  "rank 1 times WorkerChannel.exchange(KIND_PUSH); memcpy of push+pull bytes in rank 1",
        "repeats": repeats,
        "target": {"exchange_vs_memcpy_at_10M": 2.0},
        "rows": rows,
        "table": text,
    })


if __name__ == "__main__":
    main()

"""Run every benchmark, write benchmarks/results/*.json and regenerate the results section
of benchmarks/README.md (between the RESULTS markers).

    python benchmarks/run_all.py            # full run (the numbers in README.md)
    python benchmarks/run_all.py --quick    # smoke test: small sizes, short windows

``--quick`` writes to benchmarks/results/quick/ and never touches README.md unless
``--readme`` is given; ``--no-readme`` prints the section instead of writing it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ORDER = ["apply_rate", "transport", "scaling", "stragglers", "synthetic", "scale_out", "scale_model"]
TITLES = {
    "apply_rate": "1. Server apply rate (DC-ASGD-a + SGD, one core) vs numpy memcpy",
    "transport": "2. Worker push+pull through the window protocol vs memcpy of the same bytes",
    "scaling": "3. Scaling with non-CPU compute (sleep T per step) vs ideal N/T",
    "stragglers": "4. Stragglers: 4 workers, one 4x slower, vs synchronous data parallelism",
    "synthetic": "5. Synthetic CNN images/s (pytorch_synthetic_benchmark style)",
    "scale_out": "6. Scale-out: exposed communication, server tier, 25M-parameter straggler",
    "scale_model": "7. Cost model: calibrated here, checked against every point above, projected to GPU clusters",
}
BEGIN, END = "<!-- RESULTS:BEGIN -->", "<!-- RESULTS:END -->"
SCALE_BEGIN, SCALE_END = "<!-- SCALE:BEGIN -->", "<!-- SCALE:END -->"  # in the top-level README


def scale_summary(out: Path) -> str:
    """The top-level README's scale-out table, from scale_out.json and scale_model.json."""
    f = out / "scale_out.json"
    if not f.exists():
        return "(run `python benchmarks/run_all.py` to fill this in)"
    d = json.loads(f.read_text())
    m = d["machine"]
    rows = []
    ex = {r["overlap"]: r for r in d.get("exposed", {}).get("rows", [])}
    if ex:
        rows.append(("exposed communication, 1 worker, 25M params, backward T = 100 ms (fraction of compute)",
                     f"{ex['off']['exposed']:.3f} blocking, {ex['on']['exposed']:.3f} overlapped", "<= 0.10"))
    for r in d.get("apply", {}).get("rows", []):
        rows.append((f"server apply of {r['params'] / 1e6:.0f}M params on 2 threads vs 1", f"{r['speedup']:.2f}x",
                     ">= 1.6x"))
    t = d.get("tier")
    if t:
        rates = " / ".join(f"{r['updates_per_s']:.1f}" for r in t["rows"])
        rows.append(("updates/s, 2 workers with T = 0 (server-bound), S = 1 / S = 2", f"{rates} ({t['ratio']:.2f}x)", "-"))
    st = d.get("straggler")
    if st:
        hv = f", {st['vs_horovod']:.2f}x Horovod" if st.get("vs_horovod") else f" (Horovod: {st['horovod']})"
        rows.append(("4 workers, 25M params, T = 100 ms, one 4x straggler: fraction of the async ideal",
                     f"{st['vs_ideal']:.2f}", ">= 0.9"))
        rows.append(("same run, gradients/s vs synchronous", f"{st['vs_ddp']:.2f}x DDP{hv}", ">= 3x"))
    model = out / "scale_model.json"
    if model.exists():
        sm = json.loads(model.read_text())
        rows.append(("cost model's predictions vs the points measured here (within 20 %)", sm["within_20_percent"],
                     "all"))
    table = "| measurement | result | target |\n|---|---|---|\n" + "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
    return (f"{table}\n\n({m['time']}, {m['cores']} cores, load average {m['loadavg'][0]:.1f}; "
            "definitions and the full tables: benchmarks/README.md, benchmarks 6 and 7)")


def section(out: Path) -> str:
    parts = []
    machine = None
    for name in ORDER:
        f = out / f"{name}.json"
        if not f.exists():
            continue
        d = json.loads(f.read_text())
        machine = machine or d["machine"]
        m = d["machine"]
        parts.append(f"### {TITLES[name]}\n\n{d['table']}\n\n(`{name}.json`, {m['time']}, load average "
                     f"{m['loadavg'][0]:.1f})\n")
    head = ""
    if machine:
        head = (f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['mem_gib']} GiB, torch "
                f"{machine['torch']}, Python {machine['python']}; a shared development machine, so timings "
                "are noisy (each table gives the load average; every ratio is against a baseline measured in "
                "the same run).\n\n")
    return head + "\n".join(parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--only", nargs="*", choices=ORDER, default=ORDER)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--readme", action="store_true", help="write README.md even in quick mode")
    g.add_argument("--no-readme", action="store_true", help="print the results section instead")
    args = p.parse_args()
    out = Path(args.out) if args.out else BENCH / "results" / ("quick" if args.quick else "")
    failed = []
    for name in args.only:
        cmd = [sys.executable, str(BENCH / f"{name}.py"), "--out", str(out)] + (["--quick"] if args.quick else [])
        print(f"== {' '.join(cmd)}", flush=True)
        t0 = time.monotonic()
        r = subprocess.run(cmd)
        print(f"== {name}: exit {r.returncode} in {time.monotonic() - t0:.0f} s", flush=True)
        if r.returncode != 0:
            failed.append(name)
    text = section(out)
    readme = BENCH / "README.md"
    if args.no_readme or (args.quick and not args.readme) or not readme.exists():
        print(text)
    else:
        doc = readme.read_text()
        if BEGIN in doc and END in doc:
            doc = doc[: doc.index(BEGIN) + len(BEGIN)] + "\n" + text + "\n" + doc[doc.index(END):]
            readme.write_text(doc)
            print(f"updated {readme}")
    top = BENCH.parent / "README.md"
    if not (args.no_readme or args.quick) and top.exists():
        doc = top.read_text()
        if SCALE_BEGIN in doc and SCALE_END in doc:
            doc = doc[: doc.index(SCALE_BEGIN) + len(SCALE_BEGIN)] + "\n" + scale_summary(out) + "\n" + \
                doc[doc.index(SCALE_END):]
            top.write_text(doc)
            print(f"updated {top}")
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()

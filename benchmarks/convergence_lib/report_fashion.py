"""Tables, paired comparisons, target verdicts, JSON and plots of the Fashion-MNIST study
(benchmarks/convergence_fashion.py), computed from its runs.jsonl."""

from __future__ import annotations

import json
import math
import os
from typing import Dict, List, Optional

from . import common
from .report import _fmt, mean_std

#: the order methods appear in tables and legends
ORDER = ("sgd", "ssgd", "asgd", "dc-c", "dc-a", "sa", "da", "ga", "dc-a+da", "dc-a+ga")
ASYNC = tuple(m for m in ORDER if m not in ("sgd", "ssgd"))
COLORS = {"sgd": "k", "ssgd": "tab:green", "asgd": "tab:red", "dc-c": "tab:orange", "dc-a": "tab:blue",
          "sa": "tab:purple", "da": "tab:brown", "ga": "tab:pink", "dc-a+da": "tab:olive", "dc-a+ga": "tab:cyan"}
BLOCK_TITLES = {
    "main": "round-robin order (staleness M-1), plain SGD (no momentum)",
    "random": "random worker order, plain SGD",
    "momentum": "round-robin order, SGD with momentum 0.9",
    "lambda": "DC-ASGD-a lambda0 sweep, M = 8, round-robin, plain SGD",
}
#: the real-system runs: time to this test accuracy (%), fixed from the simulator's validation errors
#: (about 22% at M = 4, 24-32% at M = 8) before any real-system run: reachable, not trivial
TTA_ACCURACY = 70.0
PAPER_TARGETS = (
    "DC-ASGD-a within 0.5 pp of sequential SGD at M = 4 and 8",
    "DC-ASGD-a better than ASGD by more than one standard deviation at M = 8 and 16",
    "DC-ASGD-a still training at M = 32: error < 2 x sequential SGD's",
)


def _cfg_key(r: Dict) -> tuple:
    return (r["block"], r["method"], r["workers"], r["pattern"], r["momentum"], r["dc_lambda"])


def sim_groups(runs: List[Dict], meta: Dict) -> Dict[tuple, List[Dict]]:
    """Test runs per configuration, at the configuration's tuned lr when it was tuned."""
    chosen = {(t["block"], t["method"], t["workers"], t["pattern"], t["momentum"], t["dc_lambda"]): t["lr"]
              for t in meta.get("tuning", [])}
    groups: Dict[tuple, List[Dict]] = {}
    for r in runs:
        if r["mode"] != "sim" or r["split"] != "test" or r["epochs"] != meta["epochs"]:
            continue
        k = _cfg_key(r)
        if k in chosen and r["lr"] != chosen[k]:
            continue
        groups.setdefault(k, []).append(r)
    for rs in groups.values():
        rs.sort(key=lambda r: r["seed"])
    return groups


def summarise(groups: Dict[tuple, List[Dict]]) -> List[Dict]:
    rows = []
    for (block, method, m, pattern, momentum, lam), rs in sorted(
            groups.items(), key=lambda kv: (kv[0][0], kv[0][2], ORDER.index(kv[0][1]), kv[0][5] or 0)):
        rows.append({
            "block": block, "method": method, "label": common.LABELS[method], "workers": m, "pattern": pattern,
            "momentum": momentum, "dc_lambda": lam, "lr": rs[0]["lr"], "seeds": [r["seed"] for r in rs],
            "test_error": mean_std([r["curve"]["err"][-1] for r in rs]),
            "test_loss": mean_std([r["curve"]["loss"][-1] for r in rs]),
            "train_loss": mean_std([r["curve"]["train_loss"][-1] for r in rs]),
            "staleness_mean": sum(r["staleness_mean"] for r in rs) / len(rs),
            "cpu_s": mean_std([r["cpu_s"] for r in rs]),
            "per_seed": [r["curve"]["err"][-1] for r in rs],
        })
    return rows


def _row(rows, block, method, m) -> Optional[Dict]:
    if method == "sgd":
        m = 1
    hits = [r for r in rows if r["block"] == block and r["method"] == method and r["workers"] == m]
    return hits[0] if hits else None


def paired(rows: List[Dict], block: str, a: str, b: str, m: int) -> Optional[Dict]:
    """Per seed, error(a) - error(b) (negative: a is better), on the seeds both ran."""
    ra, rb = _row(rows, block, a, m), _row(rows, block, b, m)
    if not ra or not rb:
        return None
    seeds = [s for s in ra["seeds"] if s in rb["seeds"]]
    if not seeds:
        return None
    diffs = [ra["per_seed"][ra["seeds"].index(s)] - rb["per_seed"][rb["seeds"].index(s)] for s in seeds]
    return {"a": a, "b": b, "workers": m, "block": block, "seeds": seeds, "diffs": diffs, "diff": mean_std(diffs),
            "a_better": sum(d < 0 for d in diffs), "b_better": sum(d > 0 for d in diffs), "n": len(diffs)}


def targets(rows: List[Dict]) -> List[Dict]:
    """The paper's targets (issue 13) against the main block, each met or missed."""
    out = []
    sgd = _row(rows, "main", "sgd", 1)
    if sgd is None:
        return out
    s = sgd["test_error"]["mean"]
    for m in (4, 8):
        dc = _row(rows, "main", "dc-a", m)
        if dc:
            gap = dc["test_error"]["mean"] - s
            out.append({"target": PAPER_TARGETS[0], "workers": m, "value": gap, "met": gap <= 0.5,
                        "detail": f"DC-ASGD-a {_fmt(dc['test_error'])} vs SGD {_fmt(sgd['test_error'])}: "
                                  f"{gap:+.2f} pp (target <= +0.50)"})
    for m in (8, 16):
        dc, asgd = _row(rows, "main", "dc-a", m), _row(rows, "main", "asgd", m)
        if dc and asgd:
            gain = asgd["test_error"]["mean"] - dc["test_error"]["mean"]
            sd = max(asgd["test_error"]["std"], dc["test_error"]["std"])
            out.append({"target": PAPER_TARGETS[1], "workers": m, "value": gain, "std": sd, "met": gain > sd,
                        "detail": f"ASGD {_fmt(asgd['test_error'])} - DC-ASGD-a {_fmt(dc['test_error'])} = {gain:+.2f} pp; "
                                  f"larger of the two std {sd:.2f}"})
    dc = _row(rows, "main", "dc-a", 32)
    if dc:
        ratio = dc["test_error"]["mean"] / s
        out.append({"target": PAPER_TARGETS[2], "workers": 32, "value": ratio, "met": ratio < 2.0,
                    "detail": f"DC-ASGD-a {_fmt(dc['test_error'])} = {ratio:.2f} x SGD's {s:.2f}"})
    return out


def recommendations(rows: List[Dict]) -> List[Dict]:
    """Per block and M: the asynchronous method with the lowest mean test error, and the
    methods whose mean is within the larger of the two standard deviations of it."""
    out = []
    for block in ("main", "random", "momentum"):
        for m in sorted({r["workers"] for r in rows if r["block"] == block and r["workers"] > 1}):
            cands = [r for r in rows if r["block"] == block and r["workers"] == m and r["method"] in ASYNC]
            if not cands:
                continue
            best = min(cands, key=lambda r: r["test_error"]["mean"])
            tied = [r["method"] for r in cands if r is not best and r["test_error"]["mean"] - best["test_error"]["mean"]
                    <= max(r["test_error"]["std"], best["test_error"]["std"])]
            out.append({"block": block, "workers": m, "best": best["method"], "best_error": best["test_error"],
                        "within_noise": tied})
    return out


def mpi_summary(runs: List[Dict], epochs: int) -> List[Dict]:
    rows = []
    for r in runs:
        if r["mode"] != "mpi" or r["epochs"] != epochs:
            continue
        c = r["curve"]
        reached = next((t for t, e in zip(c["seconds"], c["err"]) if 100.0 - e >= TTA_ACCURACY), None)
        info = r.get("workers_info", [])
        fast = [w for w in info if not w.get("straggler")]
        slow = [w for w in info if w.get("straggler")]
        row = {"system": r["system"], "method": r["method"], "label": _system_label(r), "workers": r["workers"],
               "lr": r["lr"], "final_error": c["err"][-1], "best_error": min(c["err"]),
               "train_seconds": r["train_seconds"], "tta_seconds": reached, "launch_wall_s": r["launch_wall_s"],
               "cpu_s": r.get("cpu_s")}
        if r["system"] == "hvd_dc" and info:
            row["pushes_fast_mean"] = sum(w["pushes"] for w in fast) / max(len(fast), 1)
            row["pushes_straggler"] = slow[0]["pushes"] if slow else None
            row["staleness_mean_fast"] = sum(w["staleness_mean"] for w in fast) / max(len(fast), 1)
            row["staleness_mean_straggler"] = slow[0]["staleness_mean"] if slow else None
        rows.append(row)
    rows.sort(key=lambda x: (x["workers"], ["hvd_dc", "ddp", "horovod"].index(x["system"]), ORDER.index(x["method"])))
    return rows


def _system_label(r: Dict) -> str:
    if r["system"] == "hvd_dc":
        return f"hvd_dc {common.LABELS[r['method']]}"
    return {"ddp": "torch DDP (sync)", "horovod": "Horovod (sync)"}[r["system"]]


# ---------------------------------------------------------------------------------------


def markdown(rows, pairs, verdicts, recs, lam, mpi_rows, meta) -> str:
    out = [f"# Fashion-MNIST convergence study ({'quick check' if meta['quick'] else 'full run'})", ""]
    out.append(f"Produced by `{meta['command']}` from `runs.jsonl` (every run, its curve and timings). "
               f"Model: {meta['model']}, {meta['parameters']} parameters. Data: {meta['train_images']} training / "
               f"{meta['val_images']} validation images (disjoint, from the official training set), the official "
               f"{meta['test_images']} test images. Batch {meta['batch']} per worker, {meta['epochs']} epochs, lr / 10 "
               f"at 50% and 75%. Seeds {meta['seeds']}"
               + (f"; lr tuned per configuration on {meta['lr_grid']} (x sqrt(M) for SSGD, x 0.1 with momentum) by the "
                  f"validation error of seed {meta['tune_seed']}." if meta.get("tune_seed") is not None else
                  "; no tuning (quick check: each grid's centre)."))
    out.append("Cells: final test error %, mean ± sample std over seeds.")
    out.append("")
    for block in ("main", "random", "momentum", "lambda"):
        sel = [r for r in rows if r["block"] == block]
        if not sel:
            continue
        out.append(f"## {block}: {BLOCK_TITLES[block]}")
        out.append("")
        if block == "lambda":
            out.append("| lambda0 | lr | validation error % (tuning seed) | test error % |")
            out.append("|---|---|---|---|")
            base = _row(rows, "main", "dc-a", meta.get("lambda_workers", 8))
            entries = [(r["dc_lambda"], r) for r in sel]
            if base:
                entries.append((2.0, base))
            for l, r in sorted(entries, key=lambda e: e[0]):
                v = (lam or {}).get("val_error", {}).get(str(l))
                out.append(f"| {l:g}{' (paper)' if l == 2.0 else ''} | {r['lr']:g} | "
                           f"{'' if v is None else f'{v:.2f}'} | {_fmt(r['test_error'])} |")
            if lam and lam.get("chosen") is not None:
                out.append("")
                out.append(f"lambda0 chosen by validation error: **{lam['chosen']:g}**.")
            out.append("")
            continue
        ms = sorted({r["workers"] for r in sel if r["workers"] > 1})
        present = [m for m in ORDER if any(r["method"] == m for r in sel) and m != "sgd"]
        sgd = _row(rows, block, "sgd", 1) or (_row(rows, "main", "sgd", 1) if block == "random" else None)
        if sgd:
            out.append(f"Sequential SGD (M = 1){' (from main)' if block == 'random' else ''}: "
                       f"**{_fmt(sgd['test_error'])}** (lr {sgd['lr']:g}).")
            out.append("")
        out.append("| M | " + " | ".join(common.LABELS[m] for m in present) + " |")
        out.append("|---|" + "---|" * len(present))
        for m in ms:
            cells = []
            best = min((r["test_error"]["mean"] for r in sel if r["workers"] == m and r["method"] in ASYNC), default=None)
            for meth in present:
                r = _row(rows, block, meth, m)
                if not r:
                    cells.append("")
                    continue
                cell = _fmt(r["test_error"])
                cells.append(f"**{cell}**" if best is not None and r["test_error"]["mean"] == best else cell)
            out.append(f"| {m} | " + " | ".join(cells) + " |")
        out.append("")
        out.append("Bold: the lowest mean among the asynchronous methods at that M.")
        out.append("")
        out.append("<details><summary>every column (lr, losses, staleness, cost)</summary>")
        out.append("")
        out.append("| method | M | lr | test error % | per seed | test loss | train loss (last epoch) | mean staleness | cpu s per run |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        for r in sel:
            out.append(f"| {r['label']} | {r['workers']} | {r['lr']:g} | {_fmt(r['test_error'])} | "
                       f"{' / '.join(f'{e:.2f}' for e in r['per_seed'])} | {_fmt(r['test_loss'], 3)} | "
                       f"{_fmt(r['train_loss'], 3)} | {r['staleness_mean']:.2f} | {_fmt(r['cpu_s'], 0)} |")
        out.append("")
        out.append("</details>")
        out.append("")
    if pairs:
        out.append("## Paired comparisons (same seed: same initialisation and minibatch order)")
        out.append("")
        out.append("Difference in final test error, percentage points, per seed; negative: the first method is better.")
        out.append("")
        out.append("| block | M | comparison | per seed | mean ± std | seeds where the first is better |")
        out.append("|---|---|---|---|---|---|")
        for p in pairs:
            out.append(f"| {p['block']} | {p['workers']} | {common.LABELS[p['a']]} - {common.LABELS[p['b']]} | "
                       f"{' / '.join(f'{d:+.2f}' for d in p['diffs'])} | {_fmt(p['diff'])} | {p['a_better']} of {p['n']} |")
        out.append("")
    if verdicts:
        out.append("## The paper's targets")
        out.append("")
        out.append("| target | M | measured | verdict |")
        out.append("|---|---|---|---|")
        for v in verdicts:
            out.append(f"| {v['target']} | {v['workers']} | {v['detail']} | {'met' if v['met'] else '**missed**'} |")
        out.append("")
    if recs:
        out.append("## Which method at which M (lowest mean test error; ties within one std)")
        out.append("")
        out.append("| block | M | lowest mean | within one std of it |")
        out.append("|---|---|---|---|")
        for r in recs:
            out.append(f"| {r['block']} | {r['workers']} | {common.LABELS[r['best']]} ({_fmt(r['best_error'])}) | "
                       f"{', '.join(common.LABELS[m] for m in r['within_noise']) or 'none'} |")
        out.append("")
    if mpi_rows:
        out.append(f"## Real system (mpiexec, this machine), one worker {meta.get('mpi_slow_factor', 4):g}x slower, seed 0")
        out.append("")
        out.append(f"Same gradient budget ({meta['epochs']} epochs of minibatches) for every system; test error "
                   f"of weight snapshots taken every half epoch of progress. Time to {TTA_ACCURACY:g}% test accuracy: "
                   "training seconds until the first snapshot that reaches it.")
        out.append("")
        out.append("| M | system | lr | final test error % | training s | s to "
                   f"{TTA_ACCURACY:g}% acc. | pushes per fast worker / straggler | mean staleness fast / straggler |")
        out.append("|---|---|---|---|---|---|---|---|")
        for r in mpi_rows:
            tta = "never" if r["tta_seconds"] is None else f"{r['tta_seconds']:.1f}"
            pushes = stale = ""
            if r["system"] == "hvd_dc" and r.get("pushes_straggler") is not None:
                pushes = f"{r['pushes_fast_mean']:.0f} / {r['pushes_straggler']}"
                stale = f"{r['staleness_mean_fast']:.1f} / {r['staleness_mean_straggler']:.1f}"
            out.append(f"| {r['workers']} | {r['label']} | {r['lr']:g} | {r['final_error']:.2f} | "
                       f"{r['train_seconds']:.1f} | {tta} | {pushes} | {stale} |")
        out.append("")
    if meta.get("tuning"):
        out.append("## Learning-rate tuning (validation error %, tuning seed)")
        out.append("")
        out.append("| block | method | M | pattern | momentum | grid: validation error % | chosen |")
        out.append("|---|---|---|---|---|---|---|")
        for t in sorted(meta["tuning"], key=lambda t: (t["block"], t["workers"], ORDER.index(t["method"]))):
            grid = ", ".join(f"{lr:g}: {e:.1f}" for lr, e in zip(t["grid"], t["val_error"]))
            edge = " (grid edge)" if t["lr"] in (t["grid"][0], t["grid"][-1]) else ""
            out.append(f"| {t['block']} | {common.LABELS[t['method']]} | {t['workers']} | {t['pattern']} | "
                       f"{t['momentum']:g} | {grid} | {t['lr']:g}{edge} |")
        out.append("")
    return "\n".join(out)


def plots(groups, runs, mpi_rows, lam, rows, meta, out_dir) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for block in ("main", "random", "momentum"):
        sel = {k: v for k, v in groups.items() if k[0] == block}
        if not sel:
            continue
        ms = sorted({k[2] for k in sel if k[2] > 1})
        if not ms:
            continue
        sgd = [v for k, v in groups.items() if k[1] == "sgd" and (k[0] == block or (block == "random" and k[0] == "main"))]
        fig, axes = plt.subplots(1, len(ms), figsize=(3.6 * len(ms), 3.2), sharey=True, squeeze=False)
        for ax, m in zip(axes[0], ms):
            curves = [(k[1], v) for k, v in sel.items() if k[2] == m] + ([("sgd", sgd[0])] if sgd else [])
            for meth, rs in sorted(curves, key=lambda kv: ORDER.index(kv[0])):
                n = min(len(r["curve"]["err"]) for r in rs)
                xs = rs[0]["curve"]["epoch"][:n]
                ys = [mean_std([r["curve"]["err"][i] for r in rs]) for i in range(n)]
                ax.plot(xs, [y["mean"] for y in ys], color=COLORS[meth], lw=1.2, label=common.LABELS[meth],
                        ls="--" if meth == "sgd" else "-")
                ax.fill_between(xs, [y["mean"] - y["std"] for y in ys], [y["mean"] + y["std"] for y in ys],
                                color=COLORS[meth], alpha=0.12, lw=0)
            ax.set_title(f"M = {m}", fontsize=9)
            ax.set_xlabel("epoch", fontsize=8)
            ax.set_yscale("log")
            ax.grid(alpha=0.3, which="both")
            ax.tick_params(labelsize=7)
        axes[0][0].set_ylabel("test error % (log), mean ± std", fontsize=8)
        axes[0][-1].legend(fontsize=6)
        fig.suptitle(f"Fashion-MNIST, simulator: {BLOCK_TITLES[block]}", fontsize=9)
        fig.tight_layout()
        name = f"fashion_{block}_epoch.png"
        fig.savefig(os.path.join(out_dir, name), dpi=80)
        plt.close(fig)
        written.append(name)
    mpi = [r for r in runs if r["mode"] == "mpi" and r["epochs"] == meta["epochs"]]
    if mpi:
        ms = sorted({r["workers"] for r in mpi})
        for xaxis in ("seconds", "epoch"):
            fig, axes = plt.subplots(1, len(ms), figsize=(4.2 * len(ms), 3.2), sharey=True, squeeze=False)
            for ax, m in zip(axes[0], ms):
                for r in sorted((r for r in mpi if r["workers"] == m), key=lambda r: (r["system"], r["method"])):
                    style = {"hvd_dc": "-", "ddp": "--", "horovod": ":"}[r["system"]]
                    color = COLORS[r["method"]] if r["system"] == "hvd_dc" else {"ddp": "tab:green", "horovod": "tab:gray"}[r["system"]]
                    ax.plot(r["curve"][xaxis], r["curve"]["err"], style, color=color, lw=1.3, marker=".", ms=3,
                            label=_system_label(r))
                ax.axhline(100 - TTA_ACCURACY, color="k", lw=0.6, alpha=0.5)
                ax.set_title(f"M = {m}, one worker {meta.get('mpi_slow_factor', 4):g}x slower", fontsize=9)
                ax.set_xlabel("training wall-clock s" if xaxis == "seconds" else "epochs of gradients applied", fontsize=8)
                ax.set_yscale("log")
                ax.grid(alpha=0.3, which="both")
                ax.tick_params(labelsize=7)
            axes[0][0].set_ylabel("test error % (log)", fontsize=8)
            for ax in axes[0]:  # each M has its own "best other policy"
                ax.legend(fontsize=6)
            fig.suptitle("Fashion-MNIST, real system under mpiexec (seed 0)", fontsize=9)
            fig.tight_layout()
            name = f"fashion_mpi_{xaxis}.png"
            fig.savefig(os.path.join(out_dir, name), dpi=80)
            plt.close(fig)
            written.append(name)
    lam_rows = [r for r in rows if r["block"] == "lambda"]
    base = _row(rows, "main", "dc-a", meta.get("lambda_workers", 8))
    if lam_rows and base:
        pts = sorted([(r["dc_lambda"], r) for r in lam_rows] + [(2.0, base)], key=lambda e: e[0])
        fig, ax = plt.subplots(figsize=(4.2, 3.0))
        xs = [p[0] for p in pts]
        ax.errorbar(xs, [p[1]["test_error"]["mean"] for p in pts], yerr=[p[1]["test_error"]["std"] for p in pts],
                    marker="o", capsize=3, label="test error (3 seeds)")
        if lam and lam.get("val_error"):
            ax.plot(xs, [lam["val_error"].get(str(x), float("nan")) for x in xs], "s--", label="validation error (tuning seed)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{x:g}" for x in xs])
        ax.set_xlabel("lambda0 (DC-ASGD-a)", fontsize=8)
        ax.set_ylabel("error %", fontsize=8)
        ax.set_title(f"DC-ASGD-a, M = {meta.get('lambda_workers', 8)}, lr {base['lr']:g}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "fashion_lambda.png"), dpi=80)
        plt.close(fig)
        written.append("fashion_lambda.png")
    return written


def lambda_info(runs: List[Dict], meta: Dict) -> Optional[Dict]:
    lam_runs = [r for r in runs if r["mode"] == "sim" and r.get("block") == "lambda" and r["split"] == "val"
                and r["epochs"] == meta["epochs"]]
    if not lam_runs:
        return None
    lr = lam_runs[0]["lr"]
    val = {r["dc_lambda"]: r for r in lam_runs if r["lr"] == lr}
    base = [r for r in runs if r["mode"] == "sim" and r["split"] == "val" and r["method"] == "dc-a"
            and r["workers"] == meta.get("lambda_workers", 8) and r["dc_lambda"] is None and r["lr"] == lr
            and r["pattern"] == "round_robin" and not r["momentum"] and r["epochs"] == meta["epochs"]]
    if base:
        val[2.0] = base[0]
    chosen = min(val, key=lambda k: (val[k]["curve"]["err"][-1], val[k]["curve"]["loss"][-1]))
    return {"lr": lr, "val_error": {str(k): v["curve"]["err"][-1] for k, v in sorted(val.items())},
            "val_loss": {str(k): v["curve"]["loss"][-1] for k, v in sorted(val.items())}, "chosen": chosen}


def write_all(out_dir: str, runs: List[Dict], meta: Dict) -> Dict:
    os.makedirs(out_dir, exist_ok=True)
    groups = sim_groups(runs, meta)
    rows = summarise(groups)
    pairs = []
    for block in ("main", "random", "momentum"):
        for m in sorted({r["workers"] for r in rows if r["block"] == block and r["workers"] > 1}):
            for a, b in (("dc-a", "asgd"), ("dc-c", "asgd"), ("sa", "asgd"), ("da", "asgd"), ("ga", "asgd"),
                         ("dc-a+ga", "dc-a"), ("dc-a+da", "dc-a"), ("ga", "dc-a")):
                p = paired(rows, block, a, b, m)
                if p:
                    pairs.append(p)
    verdicts = targets(rows)
    recs = recommendations(rows)
    lam = lambda_info(runs, meta)
    mpi_rows = mpi_summary(runs, meta["epochs"])
    with open(os.path.join(out_dir, "fashion.md"), "w") as f:
        f.write(markdown(rows, pairs, verdicts, recs, lam, mpi_rows, meta) + "\n")
    figs = plots(groups, runs, mpi_rows, lam, rows, meta, out_dir)
    used = [r for rs in groups.values() for r in rs] + [r for r in runs if r["mode"] == "mpi"]
    doc = {"meta": meta, "summary": rows, "paired": pairs, "targets": verdicts, "recommendations": recs,
           "lambda_sweep": lam, "mpi": mpi_rows, "figures": figs, "tta_accuracy": TTA_ACCURACY,
           "runs": [r for r in runs if r["epochs"] == meta["epochs"]], "runs_in_tables": len(used)}
    with open(os.path.join(out_dir, "fashion.json"), "w") as f:
        json.dump(doc, f, indent=1, default=lambda o: None if isinstance(o, float) and math.isnan(o) else str(o))
    return doc

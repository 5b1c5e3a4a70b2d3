"""Aggregate runs over seeds and write the Markdown table, the JSON and the plots."""

from __future__ import annotations

import json
import math
import os
from typing import Dict, List

from . import common

PAPER = {  # Table 1 of the paper, CIFAR-10 ResNet-20 test error %
    1: {"sgd": 8.65},
    4: {"asgd": 9.27, "ssgd": 9.17, "dc-c": 8.67, "dc-a": 8.19},
    8: {"asgd": 10.26, "ssgd": 10.10, "dc-c": 9.27, "dc-a": 8.57},
}


def mean_std(values: List[float]) -> Dict[str, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n}


def summarise(runs: List[Dict]) -> List[Dict]:
    """One row per (mode, task, method, M, pattern): final test error / losses over seeds."""
    groups: Dict[tuple, List[Dict]] = {}
    for r in runs:
        key = (r["mode"], r["task"], r["method"], r["workers"], r["pattern"])
        groups.setdefault(key, []).append(r)
    rows = []
    for (mode, task, method, m, pattern), rs in sorted(groups.items(), key=lambda kv: _order(kv[0])):
        rows.append({
            "mode": mode, "task": task, "method": method, "workers": m, "pattern": pattern,
            "lr": rs[0]["lr"], "seeds": sorted(r["seed"] for r in rs),
            "test_error": mean_std([r["curve"]["err"][-1] for r in rs]),
            "test_loss": mean_std([r["curve"]["loss"][-1] for r in rs]),
            "train_loss": mean_std([r["curve"]["train_loss"][-1] for r in rs]),
            "train_seconds": mean_std([r["curve"]["seconds"][-1] for r in rs]),
            "staleness_mean": (sum(r["staleness_mean"] for r in rs) / len(rs)) if rs[0].get("staleness_mean") is not None else None,
        })
    return rows


def _order(key):
    mode, task, method, m, pattern = key
    return (mode != "sim", task, pattern != "round_robin", m, common.METHODS.index(method))


def _fmt(ms: Dict[str, float], digits: int = 2) -> str:
    return f"{ms['mean']:.{digits}f} ± {ms['std']:.{digits}f}"


def markdown(rows: List[Dict], meta: Dict) -> str:
    out = [f"# DC-ASGD convergence benchmark ({'quick' if meta['quick'] else 'full'} run)", ""]
    out.append(f"Command: `{meta['command']}`  ")
    out.append(f"Seeds: {meta['seeds']}; total wall-clock: {meta['elapsed_seconds']:.0f} s. "
               "Cells: final test error % (mean ± std over seeds).")
    out.append("")
    blocks = sorted({(r["mode"], r["task"], r["pattern"]) for r in rows}, key=lambda b: (b[0] != "sim", b[1], b[2] != "round_robin"))
    for mode, task, pattern in blocks:
        sel = [r for r in rows if (r["mode"], r["task"], r["pattern"]) == (mode, task, pattern)]
        title = {"sim": "simulator", "mpi": "real system, mpiexec"}[mode]
        pat = "round-robin staleness (tau = M-1)" if pattern == "round_robin" else "random worker order"
        if mode == "mpi":
            pat = "real staleness"
        out.append(f"## {task}: {title}, {pat}")
        out.append("")
        ms = sorted({r["workers"] for r in sel})
        present = [m for m in common.METHODS if any(r["method"] == m for r in sel)]
        out.append("| M | " + " | ".join(common.LABELS[m] for m in present) + " |")
        out.append("|---|" + "---|" * len(present))
        for m in ms:
            cells = []
            for meth in present:
                hit = [r for r in sel if r["method"] == meth and r["workers"] == m]
                cells.append(_fmt(hit[0]["test_error"]) if hit else "")
            out.append(f"| {m} | " + " | ".join(cells) + " |")
        out.append("")
        out.append("<details><summary>all columns</summary>")
        out.append("")
        out.append("| method | M | lr | test error % | test loss | train loss (last epoch) | train s | mean staleness |")
        out.append("|---|---|---|---|---|---|---|---|")
        for r in sel:
            st = "" if r["staleness_mean"] is None else f"{r['staleness_mean']:.2f}"
            out.append(f"| {common.LABELS[r['method']]} | {r['workers']} | {r['lr']:g} | {_fmt(r['test_error'])} | "
                       f"{_fmt(r['test_loss'], 3)} | {_fmt(r['train_loss'], 3)} | {_fmt(r['train_seconds'], 1)} | {st} |")
        out.append("")
        out.append("</details>")
        out.append("")
    if meta.get("tuning"):
        out.append("## Learning-rate tuning (validation error %, one tuning seed)")
        out.append("")
        out.append("| task | pattern | method | M | " + "grid: val error % at each lr | chosen lr |")
        out.append("|---|---|---|---|---|---|")
        for t in meta["tuning"]:
            grid = ", ".join(f"{lr:g}: {e:.1f}" for lr, e in zip(t["grid"], t["val_error"]))
            out.append(f"| {t['task']} | {t['pattern']} | {common.LABELS[t['method']]} | {t['workers']} | {grid} | {t['lr']:g} |")
        out.append("")
    return "\n".join(out)


def plots(runs: List[Dict], out_dir: str) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    colors = {"sgd": "k", "ssgd": "tab:green", "asgd": "tab:red", "dc-c": "tab:orange", "dc-a": "tab:blue"}
    blocks = sorted({(r["mode"], r["task"], r["pattern"]) for r in runs})
    for mode, task, pattern in blocks:
        sel = [r for r in runs if (r["mode"], r["task"], r["pattern"]) == (mode, task, pattern)]
        ms = sorted({r["workers"] for r in sel if r["workers"] > 1}) or [1]
        xaxes = ["epoch"] + (["seconds"] if mode == "mpi" else [])
        for xaxis in xaxes:
            fig, axes = plt.subplots(1, len(ms), figsize=(3.2 * len(ms), 2.8), sharey=True, squeeze=False)
            for ax, m in zip(axes[0], ms):
                for meth in common.METHODS:
                    rs = [r for r in sel if r["method"] == meth and (r["workers"] == m or meth == "sgd")]
                    if not rs:
                        continue
                    n = min(len(r["curve"]["err"]) for r in rs)
                    xs = [sum(r["curve"][xaxis][i] for r in rs) / len(rs) for i in range(n)]
                    ys = [mean_std([r["curve"]["err"][i] for r in rs]) for i in range(n)]
                    mean = [y["mean"] for y in ys]
                    ax.plot(xs, mean, color=colors[meth], label=common.LABELS[meth], lw=1.3,
                            ls="--" if meth == "sgd" else "-")
                    ax.fill_between(xs, [y["mean"] - y["std"] for y in ys], [y["mean"] + y["std"] for y in ys],
                                    color=colors[meth], alpha=0.15, lw=0)
                ax.set_title(f"M = {m}", fontsize=9)
                ax.set_xlabel("epoch" if xaxis == "epoch" else "training wall-clock s (mean)", fontsize=8)
                ax.set_yscale("log")
                ax.grid(alpha=0.3, which="both")
                ax.tick_params(labelsize=7)
            axes[0][0].set_ylabel("test error % (log)", fontsize=8)
            axes[0][-1].legend(fontsize=6)
            tag = "sim" if mode == "sim" else "mpi"
            fig.suptitle(f"{task}, {'simulator, ' + pattern.replace('_', '-') if mode == 'sim' else 'mpiexec'}", fontsize=9)
            fig.tight_layout()
            name = f"{task}_{tag}_{pattern}_{xaxis}.png"
            fig.savefig(os.path.join(out_dir, name), dpi=80)
            plt.close(fig)
            written.append(name)
    return written


def write_all(out_dir: str, runs: List[Dict], meta: Dict) -> Dict:
    os.makedirs(out_dir, exist_ok=True)
    rows = summarise(runs)
    with open(os.path.join(out_dir, "convergence.md"), "w") as f:
        f.write(markdown(rows, meta) + "\n")
    figs = plots(runs, out_dir)
    if any(r["task"] == "shapes" for r in runs):
        shapes_preview(os.path.join(out_dir, "shapes_preview.png"))
        figs.append("shapes_preview.png")
    doc = {"meta": meta, "paper_table1": PAPER, "summary": rows, "figures": figs, "runs": runs}
    with open(os.path.join(out_dir, "convergence.json"), "w") as f:
        json.dump(doc, f, indent=1)
    return doc


def shapes_preview(path: str, per_class: int = 4) -> None:
    """A grid of Shapes-10 training images, ``per_class`` per class (one column per class)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y = common.load_task("shapes")[:2]
    fig, axes = plt.subplots(per_class, 10, figsize=(10 * 0.7, per_class * 0.7))
    for k in range(10):
        idx = (y == k).nonzero().flatten()[:per_class]
        for row, i in enumerate(idx):
            img = x[i].permute(1, 2, 0).numpy()
            img = (img - img.min()) / (img.max() - img.min() + 1e-8)
            axes[row][k].imshow(img, interpolation="nearest")
            axes[row][k].axis("off")
        axes[0][k].set_title(str(k), fontsize=7)
    fig.tight_layout(pad=0.1)
    fig.savefig(path, dpi=60)
    plt.close(fig)

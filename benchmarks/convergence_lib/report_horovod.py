"""The Horovod-hyperparameters study's report (benchmarks/convergence_horovod.py): tables in
``horovod.md``, every summary in ``horovod.json``, PNG plots. Everything is computed from
the run file; nothing here runs training."""

from __future__ import annotations

import json
import os
import statistics
from typing import Dict, List, Optional

from .report import _fmt, mean_std


def _sim(runs: List[Dict], **where) -> List[Dict]:
    return [r for r in runs if r.get("mode", "sim") == "sim" and all(r.get(k) == v for k, v in where.items())]


def _err(r: Dict) -> float:
    e = r["curve"]["err"][-1]
    return e if e == e else 100.0


def tuning_table(study, s) -> List[Dict]:
    out = []
    for mu, method in ((s.MOMENTUM, "seq"), (0.0, "seq"), (s.MOMENTUM, "seq-adam")):
        t = s.tuned_lr(study, mu, run=False, method=method)
        if t is not None:
            out.append(t)
    return out


def plateau_table(runs: List[Dict], s, lr: Optional[float]) -> List[Dict]:
    rows = []
    for e in s.PLATEAU_EPOCHS:
        rs = _sim(runs, method="seq", momentum=s.MOMENTUM, split="val", epochs=e, lr=lr)
        rs = [r for r in rs if r["seed"] in s.TUNE_SEEDS]
        if rs:
            rows.append({"epochs": e, "val_error": mean_std([_err(r) for r in rs]),
                         "per_seed": {r["seed"]: _err(r) for r in rs}})
    return rows


def pilot_table(runs: List[Dict], s) -> List[Dict]:
    rows = []
    for rule in s.PILOT_RULES:
        row = {"rule": rule}
        for m in s.WORKERS:
            rs = _sim(runs, method="pilot:" + rule, workers=m, split="val")
            if rs:
                row[m] = _err(rs[0])
        rows.append(row)
    for meth in ("asgd", "dana"):  # the same configuration's reference points, from part select
        row = {"rule": meth}
        for m in s.WORKERS:
            rs = _sim(runs, method=meth, workers=m, split="val", seed=s.TUNE_SEEDS[0], momentum=s.MOMENTUM)
            if rs:
                row[m] = _err(rs[0])
        rows.append(row)
    return rows


def method_rows(runs: List[Dict], s, mu: float, methods, split: str = "test", semantics: str = "per_step",
                seeds=None) -> List[Dict]:
    """One row per (method, M): final error over the seeds, and the staleness."""
    rows = []
    for meth in ("seq",) + tuple(methods):
        for m in ((1,) if meth.startswith("seq") else s.WORKERS):
            rs = [r for r in _sim(runs, method=meth, workers=m, momentum=mu, split=split, epochs=s.EPOCHS,
                                  semantics=semantics) if seeds is None or r["seed"] in seeds]
            if not rs:
                continue
            rows.append({"method": meth, "workers": m, "lr": rs[0]["lr"], "seeds": sorted(r["seed"] for r in rs),
                         "error": mean_std([_err(r) for r in rs]), "per_seed": {r["seed"]: _err(r) for r in rs},
                         "staleness_mean": rs[0]["server"]["staleness_mean"],
                         "rejected": sum(r["server"]["rejected"] for r in rs),
                         "cpu_s": mean_std([r["cpu_s"] for r in rs])})
    return rows


def _row(rows, method, m) -> Optional[Dict]:
    for r in rows:
        if r["method"] == method and r["workers"] == m:
            return r
    return None


def paired_vs(rows: List[Dict], s, methods, reference: str = "ssgd") -> List[Dict]:
    """Per method and M: the seed-paired differences of final test error to ``reference``."""
    out = []
    for meth in methods:
        if meth == reference:
            continue
        for m in s.WORKERS:
            a, b = _row(rows, meth, m), _row(rows, reference, m)
            if not a or not b:
                continue
            seeds = sorted(set(a["per_seed"]) & set(b["per_seed"]))
            if not seeds:
                continue
            d = [a["per_seed"][k] - b["per_seed"][k] for k in seeds]
            out.append({"method": meth, "workers": m, "diff": mean_std(d), "better_seeds": sum(x < 0 for x in d),
                        "seeds": len(d)})
    return out


def choose_default(runs: List[Dict], s, mu: float, methods) -> Optional[Dict]:
    """The default for momentum ``mu``, from part ``select`` (validation, never test): the
    candidate with the lowest mean validation error over M = 4..32; every M must be there."""
    cands = {}
    for meth in methods:
        if meth == "ssgd":
            continue
        errs = {}
        for m in s.WORKERS:
            rs = _sim(runs, method=meth, workers=m, split="val", seed=s.TUNE_SEEDS[0], momentum=mu,
                      epochs=s.EPOCHS)
            if rs:
                errs[m] = _err(rs[0])
        if len(errs) == len(s.WORKERS):
            cands[meth] = errs
    if not cands:
        return None
    best = min(cands, key=lambda k: statistics.mean(cands[k].values()))
    return {"chosen": best, "validation_error": cands,
            "mean_validation_error": {k: statistics.mean(v.values()) for k, v in cands.items()}}


def targets(rows: List[Dict], method: str) -> List[Dict]:
    """The issue's targets for ``method`` against SSGD (3-seed means)."""
    goals = {4: ("within 0.5 points of SSGD", lambda d, r: d <= 0.5), 8: ("within 0.5 points of SSGD", lambda d, r: d <= 0.5),
             16: ("within 1 point of SSGD", lambda d, r: d <= 1.0), 32: ("below 1.5x SSGD's", lambda d, r: r < 1.5)}
    out = []
    for m, (text, ok) in goals.items():
        a, b = _row(rows, method, m), _row(rows, "ssgd", m)
        if not a or not b:
            continue
        d = a["error"]["mean"] - b["error"]["mean"]
        ratio = a["error"]["mean"] / b["error"]["mean"]
        out.append({"workers": m, "target": text, "method_error": a["error"]["mean"], "ssgd_error": b["error"]["mean"],
                    "difference": d, "ratio": ratio, "met": bool(ok(d, ratio)), "seeds": a["error"]["n"]})
    return out


def mpi_rows(runs: List[Dict], part: str, s) -> List[Dict]:
    rows = []
    want_slow = s.MPI_SLOW_FACTOR if part == "mpi" else 1.0
    for r in runs:
        if r.get("mode") != "mpi" or r.get("slow_factor") != want_slow:
            continue
        rows.append(r)
    return rows


def script_table(runs: List[Dict], s) -> List[Dict]:
    out = []
    for m in s.SCRIPT_WORKERS:
        for system in s.SYSTEMS:
            rs = [r for r in mpi_rows(runs, "script", s) if r["system"] == system and r["workers"] == m
                  and r["epochs"] == s.SCRIPT_EPOCHS and r["train_images"] == s.SCRIPT_IMAGES]
            if rs:
                out.append({"system": system, "workers": m, "error": mean_std([r["final_error"] for r in rs]),
                            "per_seed": {r["seed"]: r["final_error"] for r in rs},
                            "seconds": mean_std([r["seconds"] for r in rs]),
                            "divergence_warnings": sum(r.get("divergence_warnings", 0) for r in rs)})
    return out


def time_to_target(r: Dict, target: float) -> Optional[float]:
    for t, e in zip(r["curve"]["seconds"], r["curve"]["err"]):
        if e <= target:
            return t
    return None


def straggler_table(runs: List[Dict], s) -> List[Dict]:
    out = []
    for m in s.SCRIPT_WORKERS:
        rs = {r["system"]: r for r in mpi_rows(runs, "mpi", s) if r["workers"] == m}
        reference = "ddp" if "ddp" in rs else "horovod"  # both compute SSGD (part script: equal errors)
        if reference not in rs:
            continue
        target = rs[reference]["final_error"]
        horovod = time_to_target(rs["horovod"], target) if "horovod" in rs else None
        for system, r in sorted(rs.items()):
            t = time_to_target(r, target)
            out.append({"system": system, "workers": m, "final_error": r["final_error"], "seconds": r["seconds"],
                        "target_error": target, "target_from": reference, "time_to_target": t,
                        "vs_horovod": None if (t is None or not horovod) else t / horovod})
    return out


def cpu_hours(runs: List[Dict]) -> Dict:
    sims = [r["cpu_s"] for r in runs if r.get("mode", "sim") == "sim"]
    mpis = [r["cpu_s"] for r in runs if r.get("mode") == "mpi"]
    return {"simulator_runs": len(sims), "simulator_cpu_hours": sum(sims) / 3600,
            "simulator_cpu_s_per_run_median": statistics.median(sims) if sims else None,
            "mpi_runs": len(mpis), "mpi_cpu_hours": sum(mpis) / 3600,
            "total_cpu_hours": (sum(sims) + sum(mpis)) / 3600}


# ---------------------------------------------------------------------------------------


def _table(rows: List[Dict], s, methods, labels) -> List[str]:
    lines = ["| method | " + " | ".join(f"M = {m}" for m in s.WORKERS) + " |",
             "|---|" + "---|" * len(s.WORKERS)]
    seq = _row(rows, "seq", 1)
    if seq:
        lines.append(f"| {labels['seq']} (M = 1) | " + " | ".join(_fmt(seq["error"]) for _ in s.WORKERS) + " |")
    for meth in methods:
        cells = []
        for m in s.WORKERS:
            r = _row(rows, meth, m)
            cells.append(_fmt(r["error"]) + (f" ({r['rejected']} NaN)" if r and r["rejected"] else "") if r else "")
        lines.append(f"| {labels[meth]} | " + " | ".join(cells) + " |")
    return lines


def _targets_table(targets: List[Dict]) -> List[str]:
    lines = ["| M | target | default | SSGD | met |", "|---|---|---|---|---|"]
    for t in targets:
        lines.append(f"| {t['workers']} | {t['target']} | {t['method_error']:.2f} | {t['ssgd_error']:.2f} | "
                     f"{'yes' if t['met'] else '**no**'} ({t['difference']:+.2f} points, {t['ratio']:.2f}x) |")
    return lines


def markdown(doc: Dict, s) -> str:
    L = s.LABELS
    out = ["# Horovod scripts on hvd_dc: momentum, lr x size() and the defaults, measured", "",
           f"Generated by `{doc['meta']['command']}` from `runs.jsonl` ({doc['cpu']['simulator_runs']} simulator runs, "
           f"{doc['cpu']['mpi_runs']} real-system runs). Protocol: benchmarks/convergence_horovod.py's docstring; "
           "reading: benchmarks/CONVERGENCE_HOROVOD.md.", "",
           f"Fashion-MNIST, `common.FashionCNN` ({doc['meta']['parameters']:,} parameters), batch "
           f"{doc['meta']['batch']} per worker, {s.EPOCHS} epochs, step schedule (/10 at 50 %, /100 at 75 %), "
           "round-robin order (staleness M - 1). Test error % (mean ± std over seeds 0, 1, 2) after training on all "
           "60,000 images; tuning and the default's choice on 55,000 / 5,000 (validation).", ""]
    out += ["## Tuning (sequential SGD, validation error %, mean of the tuning seeds)", ""]
    for t in doc["tuning"]:
        what = f"Adam, beta1 {t['momentum']:g}" if t["method"] == "seq-adam" else f"momentum {t['momentum']:g}"
        out.append(f"* {what}: " + ", ".join(f"lr {lr:g}: {e:.2f}" for lr, e in
                                                                 zip(t["grid"], t["val_error"])) + f" -> **lr {t['lr']:g}**")
    if doc["plateau"]:
        out += ["", "## Is the schedule long enough? (sequential momentum SGD at the tuned lr, validation error %)", "",
                "| epochs | " + " | ".join(f"seed {k}" for k in s.TUNE_SEEDS) + " | mean |", "|---|" + "---|" * (len(s.TUNE_SEEDS) + 1)]
        for r in doc["plateau"]:
            out.append(f"| {r['epochs']} | " + " | ".join(f"{r['per_seed'].get(k, float('nan')):.2f}" for k in s.TUNE_SEEDS)
                       + f" | {r['val_error']['mean']:.2f} |")
    if doc["pilot"]:
        out += ["", "## Lowered-momentum rules (validation error %, tuning seed)", "",
                "| rule | " + " | ".join(f"M = {m}" for m in s.WORKERS) + " |", "|---|" + "---|" * len(s.WORKERS)]
        for r in doc["pilot"]:
            out.append(f"| {r['rule']} | " + " | ".join(f"{r[m]:.2f}" if m in r else "" for m in s.WORKERS) + " |")
    for key, what in (("select", "momentum 0.9"), ("select_plain", "plain SGD")):
        sel = doc[key]
        if not sel:
            continue
        out += ["", f"## Choosing the default for {what} (validation error %, tuning seed)", "",
                "| method | " + " | ".join(f"M = {m}" for m in s.WORKERS) + " | mean |", "|---|" + "---|" * (len(s.WORKERS) + 1)]
        for meth, errs in sorted(sel["validation_error"].items(), key=lambda kv: sel["mean_validation_error"][kv[0]]):
            out.append(f"| {L[meth]} | " + " | ".join(f"{errs[m]:.2f}" for m in s.WORKERS)
                       + f" | {sel['mean_validation_error'][meth]:.2f} |")
        out.append(f"\nChosen: **{L[sel['chosen']]}** (lowest mean validation error over M).")
    if doc["semantics"]:
        out += ["", "## op=hvd.Average: a push as a whole step or as 1/size() of one (test error %, seed 0)", "",
                "| method | lr_scaling | " + " | ".join(f"M = {m}" for m in s.WORKERS) + " |",
                "|---|---|" + "---|" * len(s.WORKERS)]
        for r in doc["semantics"]:
            out.append(f"| {L[r['method']]} | {r['semantics']} | " + " | ".join(
                (f"{r[m]:.2f}" + (f" ({r['rejected'][m]} NaN)" if r["rejected"].get(m) else "")) if m in r else ""
                for m in s.WORKERS) + " |")
    if doc["main"]:
        out += ["", "## Momentum 0.9, Horovod's lr x M (test error %)", ""] + _table(doc["main"], s, s.MAIN_METHODS, L)
        if doc["paired"]:
            out += ["", "Paired by seed, method - SSGD (points; negative: better than Horovod's SSGD):", "",
                    "| method | " + " | ".join(f"M = {m}" for m in s.WORKERS) + " |", "|---|" + "---|" * len(s.WORKERS)]
            for meth in s.MAIN_METHODS:
                if meth == "ssgd":
                    continue
                cells = []
                for m in s.WORKERS:
                    p = [x for x in doc["paired"] if x["method"] == meth and x["workers"] == m]
                    cells.append(f"{_fmt(p[0]['diff'])} ({p[0]['better_seeds']}/{p[0]['seeds']})" if p else "")
                out.append(f"| {L[meth]} | " + " | ".join(cells) + " |")
    if doc["targets"]:
        out += ["", f"## Targets for the default ({L[doc['default']]})", ""] + _targets_table(doc["targets"])
    if doc["plain"]:
        out += ["", "## Plain SGD (no momentum), Horovod's lr x M (test error %)", ""] + _table(doc["plain"], s, s.PLAIN_METHODS, L)
    if doc["targets_plain"]:
        out += ["", f"Targets for the plain-SGD default ({L[doc['default_plain']]}):", ""] + _targets_table(doc["targets_plain"])
    if doc["variants"]:
        seq_adam = _row(doc["variants"], "seq-adam", 1)
        out += ["", "## Nesterov and Adam (momentum / beta1 0.9, Horovod's lr x M, test error %)", "",
                "Adam's lr is tuned for sequential Adam like SGD's" + (f" ({seq_adam['lr']:g}); sequential Adam: "
                f"{_fmt(seq_adam['error'])}" if seq_adam else "") + ". Nesterov runs at SGD's lr.", ""]
        out += _table(doc["variants"], s, [m for m in s.VARIANT_METHODS if m != "seq-adam"
                                           and any(r["method"] == m for r in doc["variants"])], L)
    if doc["script"]:
        out += ["", "## The real system: a Horovod-style script (12,000 images, 8 epochs, lr 0.01 x size(), momentum 0.9)",
                "", "| system | M | final test error % | seconds | DivergenceWarnings |", "|---|---|---|---|---|"]
        for r in doc["script"]:
            out.append(f"| {r['system']} | {r['workers']} | {_fmt(r['error'])} | {_fmt(r['seconds'], 1)} | "
                       f"{r['divergence_warnings']} |")
    if doc["straggler"]:
        out += ["", "## The real system with a 4x straggler: time to synchronous data parallelism's final error", "",
                "| system | M | final error % | training s | target % (from) | s to target | vs Horovod |",
                "|---|---|---|---|---|---|---|"]
        for r in doc["straggler"]:
            t, v = r["time_to_target"], r["vs_horovod"]
            out.append(f"| {r['system']} | {r['workers']} | {r['final_error']:.2f} | {r['seconds']:.1f} | "
                       f"{r['target_error']:.2f} ({r['target_from']}) | {'not reached' if t is None else f'{t:.1f}'} | "
                       f"{'-' if v is None else f'{v:.2f}x'} |")
    c = doc["cpu"]
    out += ["", "## Cost", "", f"{c['simulator_runs']} simulator runs, {c['simulator_cpu_hours']:.2f} CPU-hours "
            f"(median {c['simulator_cpu_s_per_run_median'] or 0:.0f} CPU-s per run); {c['mpi_runs']} real-system runs, "
            f"{c['mpi_cpu_hours']:.2f} CPU-hours; {c['total_cpu_hours']:.2f} CPU-hours in all."]
    if doc.get("speed"):
        out += ["", "Simulator gradients (one epoch, M = 8, CPU-s, median of 3): " + ", ".join(
            f"{r['method']} {r['gradients']}: {r['cpu_s_per_epoch']:.2f}" for r in doc["speed"]["rows"])]
    return "\n".join(out) + "\n"


def plots(doc: Dict, runs: List[Dict], s, out_dir: str) -> List[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    for name, mu, methods in (("main", s.MOMENTUM, s.MAIN_METHODS), ("plain", 0.0, s.PLAIN_METHODS)):
        rs = _sim(runs, momentum=mu, split="test", epochs=s.EPOCHS, semantics="per_step")
        if not any(r["method"] != "seq" for r in rs):
            continue
        fig, axes = plt.subplots(1, len(s.WORKERS), figsize=(4 * len(s.WORKERS), 3.6), sharey=True)
        for ax, m in zip(axes, s.WORKERS):
            for meth in ("seq",) + tuple(methods):
                group = [r for r in rs if r["method"] == meth and r["workers"] == (1 if meth == "seq" else m)]
                if not group:
                    continue
                n = min(len(r["curve"]["err"]) for r in group)
                ys = [statistics.mean(r["curve"]["err"][i] for r in group) for i in range(n)]
                ax.plot(group[0]["curve"]["epoch"][:n], ys, label=s.LABELS[meth],
                        linestyle="--" if meth in ("seq", "ssgd") else "-")
            ax.set_title(f"M = {m}")
            ax.set_xlabel("epoch")
            ax.set_ylim(5, 40)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("test error % (mean of seeds)")
        axes[-1].legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(out_dir, f"horovod_{name}_epoch.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    straggler = mpi_rows(runs, "mpi", s)
    if straggler:
        fig, axes = plt.subplots(1, len(s.SCRIPT_WORKERS), figsize=(5 * len(s.SCRIPT_WORKERS), 3.6))
        for ax, m in zip(axes, s.SCRIPT_WORKERS):
            for r in sorted((r for r in straggler if r["workers"] == m), key=lambda r: r["system"]):
                ax.plot(r["curve"]["seconds"], r["curve"]["err"], marker=".", label=r["system"])
            ax.set_title(f"M = {m}, one worker 4x slower")
            ax.set_xlabel("seconds")
            ax.set_ylim(5, 40)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        axes[0].set_ylabel("test error %")
        fig.tight_layout()
        path = os.path.join(out_dir, "horovod_mpi_seconds.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    return made


def write_all(out_dir: str, study, s) -> Dict:
    runs = list(study.cache.runs.values())
    from . import common

    tuning = tuning_table(study, s)
    lr_mom = next((t["lr"] for t in tuning if t["momentum"] == s.MOMENTUM and t["method"] == "seq"), None)
    main = method_rows(runs, s, s.MOMENTUM, s.MAIN_METHODS)
    select = choose_default(runs, s, s.MOMENTUM, s.MAIN_METHODS)
    default = select["chosen"] if select else None
    plain = method_rows(runs, s, 0.0, s.PLAIN_METHODS)
    select_plain = choose_default(runs, s, 0.0, s.PLAIN_METHODS)
    default_plain = select_plain["chosen"] if select_plain else None
    semantics = []
    for meth in s.SEMANTICS_METHODS:
        for sem in ("per_push", "per_step"):
            row = {"method": meth, "semantics": sem, "rejected": {}}
            for r in _sim(runs, method=meth, momentum=s.MOMENTUM, split="test", semantics=sem, seed=s.SEEDS[0],
                          epochs=s.EPOCHS):
                row[r["workers"]] = _err(r)
                row["rejected"][r["workers"]] = r["server"]["rejected"]
            if len(row) > 3:
                semantics.append(row)
    variants = [r for r in method_rows(runs, s, s.MOMENTUM, s.VARIANT_METHODS) if r["method"] != "seq"]
    speed = None
    if os.path.exists(os.path.join(out_dir, "speed.json")):
        with open(os.path.join(out_dir, "speed.json")) as f:
            speed = json.load(f)
    doc = {
        "meta": {"command": "python benchmarks/convergence_horovod.py", "epochs": s.EPOCHS, "momentum": s.MOMENTUM,
                 "batch": common.TASKS[s.TASK].batch, "seeds": list(s.SEEDS), "tune_seeds": list(s.TUNE_SEEDS),
                 "parameters": sum(q.numel() for q in common.make_model(s.TASK, 0).parameters())},
        "tuning": tuning, "plateau": plateau_table(runs, s, lr_mom), "pilot": pilot_table(runs, s),
        "select": select, "default": default, "semantics": semantics, "main": main,
        "paired": paired_vs(main, s, s.MAIN_METHODS),
        "targets": targets(main, default) if default else [],
        "plain": plain, "select_plain": select_plain, "default_plain": default_plain,
        "paired_plain": paired_vs(plain, s, s.PLAIN_METHODS),
        "targets_plain": targets(plain, default_plain) if default_plain else [],
        "script": script_table(runs, s), "straggler": straggler_table(runs, s),
        "variants": variants, "cpu": cpu_hours(runs), "speed": speed,
    }
    doc["pilot"] = [r for r in doc["pilot"] if len(r) > 1]
    with open(os.path.join(out_dir, "horovod.json"), "w") as f:
        json.dump({k: v for k, v in doc.items()}, f, indent=1, default=str)
    with open(os.path.join(out_dir, "horovod.md"), "w") as f:
        f.write(markdown(doc, s))
    doc["plots"] = plots(doc, runs, s, out_dir)
    return doc

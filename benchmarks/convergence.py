"""Reproduce the paper's comparison (SGD, SSGD, ASGD, DC-ASGD-c, DC-ASGD-a), measured.

    python benchmarks/convergence.py                 # default experiment (< 20 min, 2 cores)
    python benchmarks/convergence.py --quick         # CI smoke run (< 3 min)
    python benchmarks/convergence.py --mode sim --tasks digits --workers 4,8,16,32

Two ways to run, sharing one model/data module (convergence_lib/common.py):

* ``sim``: the deterministic delay simulator (convergence_lib/simulate.py): M workers in
  one process with round-robin (tau = M-1) or random staleness, updates applied by
  hvd_dc's own ServerState (the server's DC math and optimizer). Repeatable.
* ``mpi``: the real system: ``mpiexec -n M+1`` per run (convergence_lib/rank.py), the
  honest wall-clock numbers.

Protocol (same for every method): for each (task, method, M, pattern) the learning rate
is picked from the same grid (``TaskConfig.lr_grid`` x ``base_lr``: 4 points on digits, 3 on
shapes; SSGD's grid is scaled by sqrt(M): it takes M times fewer, M times larger steps)
by the final *validation* error of one tuning seed (seed 100) in the simulator; the
chosen lr is then run with seeds 0, 1, 2, ... and the final *test* error reported. The
mpi mode reuses the simulator's chosen lr for the same (task, method, M). lambda0 is
not tuned: 0.04 (DC-ASGD-c) and 2 (DC-ASGD-a, MeanSquare momentum 0.95), the paper's.

Writes ``convergence.md``, ``convergence.json`` and PNG plots to ``--out``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import shlex
import subprocess
import sys
import tempfile
import time
import json

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
os.environ.setdefault("OMP_NUM_THREADS", "1")

from benchmarks.convergence_lib import common, report  # noqa: E402
from hvd_dc.launch import local_mpiexec as mpiexec  # noqa: E402

TUNE_SEED = 100

#: the default experiment: (mode, task) -> worker counts (M = 1 sequential SGD is always added)
DEFAULT_PLAN = {
    ("sim", "digits"): [4, 8, 16, 32],
    ("sim", "shapes"): [8],
    ("mpi", "digits"): [4],
}
#: extra simulator runs with a random worker order (task -> worker counts)
DEFAULT_RANDOM = {"digits": [16]}


def _sim_job(args):
    from benchmarks.convergence_lib import simulate

    task, method, m, seed, lr, epochs, pattern, split = args
    res = simulate.simulate(task, method, m, seed, lr, epochs, pattern=pattern, split=split)
    return args, res


def run_mpi(task, method, m, seed, lr, epochs, timeout=600):
    from benchmarks.convergence_lib.rank import horovod_available

    if method == "sgd":
        n = 1
    elif method == "ssgd" and horovod_available():
        n = m
    else:
        n = m + 1
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "run.json")
        cmd = mpiexec() + ["-n", str(n), sys.executable, os.path.join(HERE, "convergence_lib", "rank.py"),
                           "--task", task, "--method", method, "--workers", str(m), "--seed", str(seed),
                           "--lr", repr(lr), "--epochs", str(epochs), "--out", out]
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        with open(out) as f:
            return json.load(f)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CI smoke run: digits, few epochs, M=4 sim + M=2 mpi")
    p.add_argument("--out", default=os.path.join(ROOT, "results", "convergence"))
    p.add_argument("--mode", default="sim,mpi", help="comma list of sim, mpi")
    p.add_argument("--tasks", default="digits,shapes")
    p.add_argument("--workers", default=None, help="comma list of M overriding the default plan")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=None, help="override the task's epochs")
    p.add_argument("--jobs", type=int, default=2, help="simulator runs in parallel")
    p.add_argument("--no-tune", action="store_true", help="skip tuning, use each grid's centre")
    args = p.parse_args(argv)
    start = time.time()
    modes = args.mode.split(",")
    tasks = args.tasks.split(",")

    if args.quick:
        plan = {("sim", "digits"): [4], ("mpi", "digits"): [2]}
        random_plan = {}  # the random order is covered by tests/test_convergence_sim.py
        seeds = list(range(min(args.seeds, 2)))
        mpi_methods, mpi_seeds = ["dc-a"], [0]  # one real run: proves the mpiexec path works
        tune = False
    else:
        plan = dict(DEFAULT_PLAN)
        random_plan = dict(DEFAULT_RANDOM)
        seeds = list(range(args.seeds))
        mpi_methods, mpi_seeds = list(common.METHODS), seeds
        tune = not args.no_tune
    plan = {k: v for k, v in plan.items() if k[0] in modes and k[1] in tasks}
    if args.workers:
        ms = [int(x) for x in args.workers.split(",")]
        plan = {(mo, t): ms for mo in modes for t in tasks}
    random_plan = {t: v for t, v in random_plan.items() if t in tasks and "sim" in modes and not args.workers}

    def epochs_of(task):
        if args.epochs:
            return args.epochs
        cfg = common.TASKS[task]
        return cfg.quick_epochs if args.quick else cfg.epochs

    # configurations: (task, method, M, pattern); lr chosen per configuration in the simulator
    configs = set()
    for (mode, task), ms in plan.items():
        configs.add((task, "sgd", 1, "round_robin"))
        for m in ms:
            for meth in ("ssgd", "asgd", "dc-c", "dc-a"):
                configs.add((task, meth, m, "round_robin"))
    for task, ms in random_plan.items():
        for m in ms:
            for meth in ("asgd", "dc-c", "dc-a"):
                configs.add((task, meth, m, "random"))
    configs = sorted(configs, key=lambda c: (c[0], c[3], c[2], common.METHODS.index(c[1])))

    pool = cf.ProcessPoolExecutor(max_workers=max(1, args.jobs))
    # 1. tuning: same grid size, same epochs, one seed, validation split, for every configuration
    chosen, tuning = {}, []
    if tune:
        jobs = [(t, meth, m, TUNE_SEED, lr, epochs_of(t), pat, "val")
                for (t, meth, m, pat) in configs for lr in common.lr_grid(t, meth, m)]
        print(f"tuning: {len(jobs)} simulator runs", flush=True)
        val = {}
        for (t, meth, m, _, lr, _, pat, _), res in pool.map(_sim_job, jobs):
            c = res["curve"]
            val.setdefault((t, meth, m, pat), []).append((lr, c["err"][-1], c["loss"][-1]))
        for key in configs:
            grid = val[key]
            best = min(grid, key=lambda g: (g[1], g[2] if g[2] == g[2] else float("inf")))
            chosen[key] = best[0]
            tuning.append({"task": key[0], "method": key[1], "workers": key[2], "pattern": key[3],
                           "grid": [g[0] for g in grid], "val_error": [g[1] for g in grid], "lr": best[0]})
            print(f"  {key}: " + ", ".join(f"{g[0]:g}->{g[1]:.1f}%" for g in grid) + f"  chosen {best[0]:g}", flush=True)
    else:
        for (t, meth, m, pat) in configs:
            chosen[(t, meth, m, pat)] = common.centre_lr(t, meth, m)

    # 2. evaluation runs
    runs = []
    sim_jobs = []
    for (mode, task), ms in plan.items():
        if mode != "sim":
            continue
        keys = [(task, "sgd", 1, "round_robin")] + [(task, meth, m, "round_robin") for m in ms
                                                    for meth in ("ssgd", "asgd", "dc-c", "dc-a")]
        keys += [(task, meth, m, "random") for m in random_plan.get(task, []) for meth in ("asgd", "dc-c", "dc-a")]
        for key in keys:
            for s in seeds:
                sim_jobs.append((key[0], key[1], key[2], s, chosen[key], epochs_of(key[0]), key[3], "test"))
    print(f"simulator: {len(sim_jobs)} runs", flush=True)
    for (t, meth, m, s, lr, ep, pat, _), res in pool.map(_sim_job, sim_jobs):
        runs.append({"mode": "sim", "task": t, "method": meth, "workers": m, "pattern": pat, "seed": s, "lr": lr,
                     "epochs": ep, "curve": res["curve"], "staleness_mean": res["server"]["staleness_mean"]})
    pool.shutdown()
    print(f"  done at {time.time() - start:.0f} s", flush=True)

    for (mode, task), ms in plan.items():
        if mode != "mpi":
            continue
        keys = [(task, "sgd", 1)] + [(task, meth, m) for m in ms for meth in ("ssgd", "asgd", "dc-c", "dc-a")]
        for key in [k for k in keys if k[1] in mpi_methods]:
            lr = chosen.get(key + ("round_robin",)) or common.centre_lr(*key)
            for s in mpi_seeds:
                t0 = time.time()
                res = run_mpi(key[0], key[1], key[2], s, lr, epochs_of(task))
                st = res.get("worker0_stats", {}).get("staleness_mean")
                runs.append({"mode": "mpi", "task": key[0], "method": key[1], "workers": key[2], "pattern": "real",
                             "seed": s, "lr": lr, "epochs": epochs_of(task), "curve": res["curve"],
                             "staleness_mean": st, "backend": res["backend"]})
                print(f"  mpi {key} seed {s}: test error {res['curve']['err'][-1]:.2f}% "
                      f"({time.time() - t0:.0f} s with start-up)", flush=True)

    meta = {
        "command": "python benchmarks/convergence.py" + ("" if argv is None and len(sys.argv) == 1 else " " + " ".join(sys.argv[1:] if argv is None else argv)),
        "quick": args.quick, "seeds": seeds, "tune_seed": TUNE_SEED if tune else None, "tuning": tuning,
        "plan": {f"{k[0]}:{k[1]}": v for k, v in plan.items()}, "random_plan": random_plan,
        "epochs": {t: epochs_of(t) for t in tasks}, "lr_grid": {t: list(common.TASKS[t].lr_grid) for t in tasks},
        "tasks": {t: vars(common.TASKS[t]) for t in tasks}, "dc_lambda": common.DC_LAMBDA,
        "dc_momentum": common.DC_MOMENTUM, "elapsed_seconds": time.time() - start,
    }
    doc = report.write_all(args.out, runs, meta)
    print(f"wrote {args.out}/convergence.md, convergence.json, {len(doc['figures'])} plots in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

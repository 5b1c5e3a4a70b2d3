"""DC-ASGD and the staleness policies on Fashion-MNIST, with the paper's protocol, measured.

    python benchmarks/convergence_fashion.py                      # the whole study (~3 h on one core)
    python benchmarks/convergence_fashion.py --parts main         # one part (see PARTS)
    python benchmarks/convergence_fashion.py --quick --out /tmp/q # CI check (~1 min)
    python benchmarks/convergence_fashion.py --report-only        # redraw from runs.jsonl

Data: the Fashion-MNIST IDX files of the Debian package ``dataset-fashion-mnist``
(``--data DIR`` elsewhere), read by benchmarks/convergence_lib/common.py: a fixed subset of
12,000 training images, a disjoint validation split of 5,000 (both from the official
training set) and the official 10,000 test images. Model: ResNet-14 with GroupNorm at
width 8 (``common.FashionResNet``, 44k parameters). Recipe (the paper's CIFAR-10 one,
scaled): batch 64 per worker, 8 epochs, no augmentation, lr divided by 10 at 50% and 75%
of the epochs, plain SGD (the paper's reported numbers) and, separately, momentum 0.9;
DC-ASGD-c lambda0 = 0.04, DC-ASGD-a lambda0 = 2 and MeanSquare momentum 0.95.

Protocol, the same for every method: for each configuration (method, M, delay pattern,
momentum) the learning rate is picked from the grid ``LR_GRID`` (x sqrt(M) for SSGD, whose
batch is M times larger; x 0.1 with momentum 0.9, whose effective step is 10x) by the
final *validation* error of one tuning seed (100), the grid being extended by up to two
factor-2 steps past an edge that wins (:func:`tune`); the chosen lr is then run with seeds
0, 1, 2 and the final *test* error reported. The test set is never used to choose.

Parts (``--parts``, comma list; the default runs the simulator parts, then ``mpi``):

* ``main``: the simulator (hvd_dc's own ServerState), round-robin order (staleness M-1),
  no momentum, M = 4, 8, 16, 32: SGD (M = 1), SSGD, ASGD, DC-ASGD-c, DC-ASGD-a, and the
  staleness policies ASGD+lr/tau, ASGD+Gap-Aware, DC-ASGD-a+Gap-Aware. (The delay-adaptive
  policy cannot act under round-robin order: every push has tau = M-1 <= tau_C = M.)
* ``random``: a random worker order (the next pusher drawn uniformly), M = 4, 8, 16, 32:
  ASGD, DC-ASGD-a, ASGD+delay-adaptive, ASGD+Gap-Aware, DC-ASGD-a+delay-adaptive.
* ``momentum``: round-robin, server SGD with momentum 0.9, M = 8: SGD, ASGD,
  DC-ASGD-a, DC-ASGD-a+Gap-Aware.
* ``lambda``: DC-ASGD-a at M = 8 (round-robin, no momentum) with lambda0 in {0.5, 1, 4}
  at the lr tuned for lambda0 = 2 (``main``), lambda0 chosen by validation error.
* ``mpi``: the real system under mpiexec, M = 4 and 8, one seed, one worker 4x slower
  (it sleeps three times its own compute time after each step): hvd_dc ASGD, DC-ASGD-a
  and the other method with the best validation error in ``main`` at that M, against
  torch DDP (gloo) and Horovod (when ``$HVD_DC_HOROVOD_PYTHON`` imports horovod.torch).
  Each system trains for the same number of gradients (8 epochs' worth); worker 0
  snapshots the weights every half epoch with a timestamp and evaluates them at the end,
  so evaluation never slows training.

Every finished run is appended to ``<out>/runs.jsonl``; a rerun skips what is there, so
the study resumes after an interruption. Writes ``fashion.md``, ``fashion.json`` and PNG
plots to ``--out`` (default benchmarks/results/convergence_fashion).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
os.environ.setdefault("OMP_NUM_THREADS", "1")

from benchmarks import common as bench  # noqa: E402  (the benchmarks' launch helpers)
from benchmarks.convergence_lib import common  # noqa: E402
from benchmarks.convergence_lib.runs import Cache, children_cpu, search_grid  # noqa: E402

TASK = "fashion"
TUNE_SEED = 100
SEEDS = (0, 1, 2)
LR_GRID = (0.025, 0.05, 0.1, 0.2)
MAX_EXTEND = 2  # grid points added beyond an edge that wins (see tune())
MOMENTUM = 0.9
PARTS = ("main", "random", "momentum", "lambda", "mpi")
#: measured on request only (``--parts cost``): the cost of one epoch for each depth
EXTRA_PARTS = ("cost",)
QUICK_TRAIN = 4000

MAIN_M = (4, 8, 16, 32)
MAIN_METHODS = ("ssgd", "asgd", "dc-c", "dc-a", "sa", "ga", "dc-a+ga")
RANDOM_M = (4, 8, 16, 32)
RANDOM_METHODS = ("asgd", "dc-a", "da", "ga", "dc-a+da")
MOMENTUM_M = (8,)
MOMENTUM_METHODS = ("asgd", "dc-a", "dc-a+ga")
LAMBDA_M = 8
LAMBDAS = (0.5, 1.0, 4.0)  # and 2.0, the paper's, from ``main``
MPI_M = (4, 8)
MPI_SLOW_FACTOR = 4.0
MPI_SNAPSHOTS_PER_EPOCH = 2
#: the candidates for "the best other policy" in the real-system runs
MPI_POLICY_CANDIDATES = ("dc-c", "sa", "ga", "dc-a+ga")


def lr_grid(method: str, m: int, momentum: float) -> List[float]:
    scale = (math.sqrt(m) if method == "ssgd" else 1.0) * (1.0 - momentum if momentum else 1.0)
    return [round(lr * scale, 8) for lr in LR_GRID]


# ---------------------------------------------------------------------------------------
# configurations and the run cache


def config(block: str, method: str, m: int, pattern: str = "round_robin", momentum: float = 0.0,
           dc_lambda: Optional[float] = None) -> Dict:
    return {"block": block, "method": method, "workers": m, "pattern": pattern, "momentum": momentum,
            "dc_lambda": dc_lambda}


def plan(parts, quick: bool) -> Dict[str, List[Dict]]:
    """The configurations of each simulator part."""
    out: Dict[str, List[Dict]] = {}
    if quick:
        out["main"] = [config("main", "sgd", 1)] + [config("main", meth, 4) for meth in ("ssgd", "asgd", "dc-a", "dc-a+ga")]
        return {k: v for k, v in out.items() if k in parts}
    if "main" in parts:
        out["main"] = [config("main", "sgd", 1)] + [config("main", meth, m) for m in MAIN_M for meth in MAIN_METHODS]
    if "random" in parts:
        out["random"] = [config("random", meth, m, pattern="random") for m in RANDOM_M for meth in RANDOM_METHODS]
    if "momentum" in parts:
        out["momentum"] = [config("momentum", "sgd", 1, momentum=MOMENTUM)] + [
            config("momentum", meth, m, momentum=MOMENTUM) for m in MOMENTUM_M for meth in MOMENTUM_METHODS]
    return out


def run_key(cfg: Dict, seed: int, lr: float, split: str, epochs: int) -> str:
    return json.dumps([cfg["method"], cfg["workers"], cfg["pattern"], cfg["momentum"], cfg["dc_lambda"], seed,
                       lr, split, epochs])


def sim_run(cache: Cache, cfg: Dict, seed: int, lr: float, split: str, epochs: int, log) -> Dict:
    from benchmarks.convergence_lib import simulate

    key = run_key(cfg, seed, lr, split, epochs)
    if key in cache.runs:
        return cache.runs[key]
    t0, c0 = time.perf_counter(), time.process_time()
    eval_epochs = None if split == "test" else []  # tuning: only the final validation error
    res = simulate.simulate(TASK, cfg["method"], cfg["workers"], seed, lr, epochs, pattern=cfg["pattern"],
                            split=split, momentum=cfg["momentum"], dc_lambda=cfg["dc_lambda"], eval_epochs=eval_epochs)
    run = {"key": key, "mode": "sim", **cfg, "seed": seed, "lr": lr, "split": split, "epochs": epochs,
           "curve": res["curve"], "staleness_mean": res["server"]["staleness_mean"],
           "staleness_max": res["server"]["staleness_max"], "rejected": res["server"]["rejected"],
           "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
    cache.add(run)
    log(f"  {cfg['block']:8s} {common.LABELS[cfg['method']]:26s} M={cfg['workers']:<2d} {cfg['pattern']:11s} "
        f"mom={cfg['momentum']:g} lam={cfg['dc_lambda']} seed={seed} lr={lr:g} {split}: "
        f"err {res['curve']['err'][-1]:.2f}% ({run['cpu_s']:.0f} s cpu)")
    return run


def choose(grid_runs: List[Dict]) -> Dict:
    """The tuning run with the lowest final validation error (ties: lower validation loss)."""
    def score(r):
        loss = r["curve"]["loss"][-1]
        return (r["curve"]["err"][-1], loss if loss == loss else float("inf"))
    return min(grid_runs, key=score)


def tune(cache: Cache, cfg: Dict, epochs: int, log, run: bool = True) -> Optional[Dict]:
    """Pick the configuration's lr by validation error: the grid (:func:`lr_grid`) first;
    while the best point is the grid's lowest (highest), the next point below (above), a
    factor 2 away, is tried too, up to ``MAX_EXTEND`` on each side, so that the choice is
    not stuck at an edge. The same rule for every method. ``run=False`` only reads the
    cache (None when the grid is incomplete there)."""
    def get(lr):
        if run:
            return sim_run(cache, cfg, TUNE_SEED, lr, "val", epochs, log)
        return cache.runs.get(run_key(cfg, TUNE_SEED, lr, "val", epochs))

    found = search_grid(lr_grid(cfg["method"], cfg["workers"], cfg["momentum"]), get,
                        lambda runs: choose(list(runs.values()))["lr"], MAX_EXTEND)
    if found is None:
        return None
    runs, low, high = found
    lrs = sorted(runs)
    return {**cfg, "grid": lrs, "val_error": [runs[lr]["curve"]["err"][-1] for lr in lrs],
            "val_loss": [runs[lr]["curve"]["loss"][-1] for lr in lrs], "lr": choose([runs[lr] for lr in lrs])["lr"],
            "extended_below": low, "extended_above": high}


def tune_and_run(cache: Cache, cfgs: List[Dict], epochs: int, seeds, quick: bool, log) -> Tuple[List[Dict], List[Dict]]:
    """Tune each configuration (validation), then run its seeds at the chosen lr (test)."""
    tuning, chosen = [], {}
    for cfg in cfgs:
        if quick:
            chosen[id(cfg)] = common.centre_lr(TASK, cfg["method"], cfg["workers"])
            continue
        t = tune(cache, cfg, epochs, log)
        chosen[id(cfg)] = t["lr"]
        tuning.append(t)
    results = []
    for cfg in cfgs:
        for s in seeds:
            results.append(sim_run(cache, cfg, s, chosen[id(cfg)], "test", epochs, log))
    return tuning, results


# ---------------------------------------------------------------------------------------
# the real system


def mpi_run(cache: Cache, system: str, method: str, m: int, lr: float, epochs: int, seed: int, log,
            timeout: float = 900) -> Dict:
    """One real-system run: ``system`` is hvd_dc, ddp or horovod."""
    from hvd_dc.launch import local_mpiexec

    key = json.dumps(["mpi", system, method, m, lr, epochs, seed, MPI_SLOW_FACTOR])
    if key in cache.runs:
        return cache.runs[key]
    script = os.path.join(HERE, "convergence_lib", "rank_stream.py")
    args = ["--backend", system, "--method", method, "--workers", str(m), "--seed", str(seed), "--lr", repr(lr),
            "--epochs", str(epochs), "--slow-factor", str(MPI_SLOW_FACTOR),
            "--snapshots-per-epoch", str(MPI_SNAPSHOTS_PER_EPOCH)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", HVD_DC_TIMEOUT="300",
               HVD_DC_START_TIMEOUT="300")
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "run.json")
        if system == "hvd_dc":
            cmd = local_mpiexec() + ["-n", str(m + 1), sys.executable, script]
        elif system == "ddp":
            cmd = local_mpiexec() + ["-n", str(m), sys.executable, script, "--port", str(bench.free_port())]
        else:
            cmd = bench.horovod_launcher() + ["-n", str(m), bench.HOROVOD_PYTHON, script]
        cmd += args + ["--out", out]
        t0, c0 = time.perf_counter(), children_cpu()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if proc.returncode != 0 and not os.path.exists(out):
            raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        with open(out) as f:
            res = json.load(f)
    run = {"key": key, "mode": "mpi", "system": system, "method": method, "workers": m, "lr": lr, "epochs": epochs,
           "seed": seed, "slow_factor": MPI_SLOW_FACTOR, **res, "launch_wall_s": time.perf_counter() - t0,
           "cpu_s": children_cpu() - c0}
    cache.add(run)
    c = res["curve"]
    log(f"  mpi {system:8s} {method:8s} M={m}: final err {c['err'][-1]:.2f}% after {c['seconds'][-1]:.1f} s "
        f"training ({run['launch_wall_s']:.0f} s with start-up, {run['cpu_s']:.0f} s cpu)")
    return run


def cost_part(out_dir: str, log, repeats: int = 2) -> None:
    """CPU seconds of one simulator epoch (DC-ASGD-a, M = 8, the training subset) for
    ResNet-8, -14 and -20 at width 8, and of one evaluation of the test set: the numbers
    behind the choice of depth (benchmarks/CONVERGENCE.md). Median of ``repeats``."""
    from benchmarks.convergence_lib import simulate

    rows = []
    saved = common.FASHION_BLOCKS
    try:
        for blocks in (1, 2, 3):
            common.FASHION_BLOCKS = blocks
            cpu = []
            for _ in range(repeats):
                c0 = time.process_time()
                simulate.simulate(TASK, "dc-a", 8, 0, 0.05, 1, split="val", eval_epochs=[])
                cpu.append(time.process_time() - c0)
            params = sum(q.numel() for q in common.make_model(TASK, 0).parameters())
            rows.append({"depth": 6 * blocks + 2, "blocks_per_stage": blocks, "parameters": params,
                         "cpu_s_per_epoch": sorted(cpu)[len(cpu) // 2], "cpu_s_all": cpu})
            log(f"  ResNet-{6 * blocks + 2} (width 8, {params} parameters): {rows[-1]['cpu_s_per_epoch']:.1f} s cpu "
                f"per epoch of {common.fashion_train_size()} images (+ one 5,000-image validation pass)")
        x = common.load_task(TASK)
        model = common.make_model(TASK, 0)
        c0 = time.process_time()
        common.evaluate(model, x[4], x[5])
        test_s = time.process_time() - c0
    finally:
        common.FASHION_BLOCKS = saved
    log(f"  one evaluation of the 10,000 test images (ResNet-{6 * saved + 2}): {test_s:.1f} s cpu")
    with open(os.path.join(out_dir, "cost.json"), "w") as f:
        json.dump({"command": "python benchmarks/convergence_fashion.py --parts cost", "models": rows,
                   "test_eval_cpu_s": test_s, "train_images": common.fashion_train_size(),
                   "batch": common.TASKS[TASK].batch}, f, indent=1)


def tuning_from_cache(cache: Cache, epochs: int) -> List[Dict]:
    """Every configuration whose lr search (:func:`tune`) is complete in runs.jsonl, with its
    choice: the study's tuning table, rebuilt from the cache."""
    cfgs = {}
    for r in cache.runs.values():
        if r["mode"] == "sim" and r["split"] == "val" and r["epochs"] == epochs and r["seed"] == TUNE_SEED \
                and r["block"] != "lambda":
            c = config(r["block"], r["method"], r["workers"], r["pattern"], r["momentum"], r["dc_lambda"])
            cfgs[json.dumps(c, sort_keys=True)] = c
    out = []
    for _, c in sorted(cfgs.items()):
        t = tune(cache, c, epochs, None, run=False)
        if t is not None:
            out.append(t)
    return out


def find_tuned(tuning: List[Dict], method: str, m: int, block: str = "main") -> Optional[Dict]:
    hits = [t for t in tuning if t["block"] == block and t["method"] == method and t["workers"] == m]
    return hits[0] if hits else None


def lambda_part(cache: Cache, epochs: int, seeds, log) -> None:
    base = find_tuned(tuning_from_cache(cache, epochs), "dc-a", LAMBDA_M)
    if base is None:  # the part needs DC-ASGD-a's lr at M = 8 from ``main``
        tune_and_run(cache, [config("main", "dc-a", LAMBDA_M)], epochs, seeds, False, log)
        base = find_tuned(tuning_from_cache(cache, epochs), "dc-a", LAMBDA_M)
    log(f"-- lambda: DC-ASGD-a at M = {LAMBDA_M}, lr {base['lr']:g} (tuned for lambda0 = 2)")
    for lam in LAMBDAS:
        cfg = config("lambda", "dc-a", LAMBDA_M, dc_lambda=lam)
        sim_run(cache, cfg, TUNE_SEED, base["lr"], "val", epochs, log)
        for s in seeds:
            sim_run(cache, cfg, s, base["lr"], "test", epochs, log)


def mpi_part(cache: Cache, epochs: int, quick: bool, log) -> None:
    horovod = bench.horovod_available()
    if not horovod:
        log("  horovod: not importable from $HVD_DC_HOROVOD_PYTHON: its runs are skipped")
    tuning = tuning_from_cache(cache, epochs)
    for m in ((2,) if quick else MPI_M):
        if quick:
            systems = [("hvd_dc", "dc-a", 0.1), ("ddp", "ssgd", round(0.1 * math.sqrt(m), 8))]
        else:
            tuned = {meth: find_tuned(tuning, meth, m) for meth in ("asgd", "dc-a", "ssgd") + MPI_POLICY_CANDIDATES}
            missing = [k for k in ("asgd", "dc-a", "ssgd") if tuned[k] is None]
            if missing:
                raise RuntimeError(f"the mpi part needs the main part's tuning at M = {m} for {missing}: run --parts main")
            others = [tuned[k] for k in MPI_POLICY_CANDIDATES if tuned[k]]
            best = min(others, key=lambda t: (min(t["val_error"]), MPI_POLICY_CANDIDATES.index(t["method"])))
            systems = [("hvd_dc", "asgd", tuned["asgd"]["lr"]), ("hvd_dc", "dc-a", tuned["dc-a"]["lr"]),
                       ("hvd_dc", best["method"], best["lr"]), ("ddp", "ssgd", tuned["ssgd"]["lr"])]
            if horovod:
                systems.append(("horovod", "ssgd", tuned["ssgd"]["lr"]))
        for system, method, lr in systems:
            mpi_run(cache, system, method, m, lr, epochs, 0, log)


# ---------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(HERE, "results", "convergence_fashion"))
    p.add_argument("--data", default=None, help=f"directory of the Fashion-MNIST IDX files (default "
                   f"${common.FASHION_ENV} or {common.FASHION_DEFAULT_DIR})")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    p.add_argument("--quick", action="store_true", help="CI check: 2 epochs of 4,000 images, M = 4 simulator + "
                   "M = 2 mpiexec, no tuning")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--report-only", action="store_true", help="only redraw the report from runs.jsonl")
    args = p.parse_args(argv)
    if args.data:
        os.environ[common.FASHION_ENV] = os.path.abspath(args.data)  # inherited by the mpiexec ranks
    try:
        common.fashion_paths()
    except common.DataMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    parts = [x for x in args.parts.split(",") if x]
    bad = [x for x in parts if x not in PARTS + EXTRA_PARTS]
    if bad:
        p.error(f"unknown part(s) {bad}; choose from {PARTS}")
    os.makedirs(args.out, exist_ok=True)
    if args.quick:  # 2 epochs (1 at the full lr: the schedule's decays fall at epoch 1) of 4,000 images
        os.environ.setdefault(common.FASHION_TRAIN_ENV, str(QUICK_TRAIN))
    epochs = args.epochs or (common.TASKS[TASK].quick_epochs if args.quick else common.TASKS[TASK].epochs)
    seeds = SEEDS[:1] if args.quick else SEEDS
    cache = Cache(os.path.join(args.out, "runs.jsonl"))
    logf = open(os.path.join(args.out, "log.txt"), "a")

    def log(msg):
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    start, cpu0 = time.time(), time.process_time()
    command = "python benchmarks/convergence_fashion.py" + "".join(
        " " + a for a in (argv if argv is not None else sys.argv[1:]))
    if not args.report_only:
        log(f"== {time.strftime('%Y-%m-%d %H:%M:%S')} {command}")
        for block, cfgs in plan(parts, args.quick).items():
            log(f"-- {block}: {len(cfgs)} configurations")
            tune_and_run(cache, cfgs, epochs, seeds, args.quick, log)
        if "lambda" in parts and not args.quick:
            lambda_part(cache, epochs, seeds, log)
        if "mpi" in parts:
            log("-- mpi: the real system, one 4x straggler")
            mpi_part(cache, epochs, args.quick, log)
        if "cost" in parts:
            cost_part(args.out, log)
        log(f"   this invocation: {time.time() - start:.0f} s wall, "
            f"{time.process_time() - cpu0 + children_cpu():.0f} s cpu")

    from benchmarks.convergence_lib import report_fashion

    meta = {
        "command": command, "quick": args.quick, "epochs": epochs, "seeds": list(seeds),
        "tune_seed": None if args.quick else TUNE_SEED, "lr_grid": list(LR_GRID), "momentum": MOMENTUM,
        "batch": common.TASKS[TASK].batch, "train_images": common.fashion_train_size(), "val_images": common.FASHION_VAL,
        "test_images": 10000, "model": "FashionResNet: ResNet-14 (2 basic blocks per stage), GroupNorm, width 8",
        "parameters": sum(q.numel() for q in common.make_model(TASK, 0).parameters()),
        "dc_lambda": common.DC_LAMBDA, "dc_momentum": common.DC_MOMENTUM, "lambda_workers": LAMBDA_M,
        "mpi_slow_factor": MPI_SLOW_FACTOR, "tuning": [] if args.quick else tuning_from_cache(cache, epochs),
    }
    doc = report_fashion.write_all(args.out, list(cache.runs.values()), meta)
    log(f"wrote {args.out}/fashion.md, fashion.json and {len(doc['figures'])} plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())

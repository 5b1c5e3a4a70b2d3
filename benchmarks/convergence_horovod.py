"""Do Horovod scripts train asynchronously? Momentum, lr x size() and hvd_dc's defaults on
all of Fashion-MNIST, measured.

    python benchmarks/convergence_horovod.py                        # every part, in order
    python benchmarks/convergence_horovod.py --parts tune,plateau   # some parts (see PARTS)
    python benchmarks/convergence_horovod.py --jobs 2               # two runs at a time
    python benchmarks/convergence_horovod.py --report-only          # redraw from runs.jsonl

A Horovod script carries SGD with momentum 0.9 and ``lr * hvd.size()``, the lr being one
tuned for sequential training. This study gives every method exactly that: one lr, tuned
for sequential momentum SGD on validation data (part ``tune``), times M; no method gets
an lr of its own (users do not tune per method). The asynchronous methods run in the
delay simulator (benchmarks/convergence_lib/simulate.py), which drives hvd_dc's own
ServerState with the options ``DistributedDCOptimizer`` sends; SSGD is synchronous data
parallelism at equal epochs (what Horovod computes: M minibatch gradients averaged, one
step at lr x M).

Data: the 60,000 official training images (Debian's ``dataset-fashion-mnist``): tuning
trains on 55,000 and scores the other 5,000 (validation); every reported run trains on
all 60,000 and scores the official 10,000 test images. Model: ``common.FashionCNN``, a
2-conv GroupNorm CNN (207k parameters). Recipe: batch 64 per worker, the step schedule
(lr / 10 at 50 % of the epochs, / 100 at 75 %), round-robin order (staleness M - 1).

Parts (``--parts``; every finished run is appended to ``<out>/runs.jsonl`` and never
redone, so the study resumes after an interruption and can grow over several sessions):

* ``tune``: sequential SGD (M = 1) with momentum 0.9 over ``LR_GRID_MOMENTUM`` and without
  momentum over ``LR_GRID_PLAIN``, each lr with the tuning seeds, scored by mean final
  validation error; a winning edge extends the grid by a factor 2 (up to twice).
* ``plateau``: sequential momentum SGD at the tuned lr for ``PLATEAU_EPOCHS`` epochs
  (validation, tuning seeds): is ``EPOCHS`` long enough (no schedule length gains more
  than the seed-to-seed spread)?
* ``pilot``: which rule the lowered-momentum baseline (``async_momentum="reduced"``)
  follows, on validation data, M = 4..32: the additive rule of "asynchrony begets
  momentum" and a mean-delay match, each with and without keeping ``lr / (1 - mu)``.
* ``select``: every candidate for the momentum default (ASGD, DC-ASGD-a, Gap-Aware, DANA,
  DANA + DC-ASGD-a, DANA + Gap-Aware, DANA + both, the lowered-momentum baseline) and for plain SGD's
  (ASGD, DC-ASGD-a, Gap-Aware, DC-ASGD-a + Gap-Aware), M = 4..32, on validation data
  (tuning seed): the defaults are chosen here, never on the test set.
* ``semantics``: ``op=hvd.Average`` applying each push as it is (``lr_scaling="per_push"``:
  every push steps ``lr * size()``) or as ``1/size()`` of a Horovod step
  (``"per_step"``: every push steps ``lr``), ASGD and DANA, M = 4..32.
* ``main``: momentum 0.9, M = 4, 8, 16, 32, seeds 0, 1, 2, test: SSGD, ASGD, DC-ASGD-a,
  Gap-Aware, DANA, DANA + DC-ASGD-a, DANA + Gap-Aware, DANA + DC-ASGD-a + Gap-Aware, the
  lowered-momentum baseline; sequential momentum SGD for reference.
* ``plain``: the same without momentum (a script with plain SGD): SSGD, ASGD, DC-ASGD-a,
  Gap-Aware, DC-ASGD-a + Gap-Aware.
* ``variants``: what happens with a Horovod script's other momenta, M = 4..32: SGD with
  ``nesterov=True`` under the shared momentum (DANA ignores the flag: its look-ahead is
  Nesterov's already), and Adam (beta1 = 0.9, its lr tuned for sequential Adam like SGD's,
  times M), whose first moment hvd_dc keeps shared (DANA is SGD's).
* ``speed``: CPU seconds of one simulator epoch, gradients one push at a time against
  batched (vmap), for the study's choice of ``GRADIENTS``.
* ``script``: the real system, a Horovod-style script (benchmarks/horovod_fashion.py:
  12,000 images, 8 epochs, ``SGD(lr=0.01 * hvd.size(), momentum=0.9)``, ``op=hvd.Average``,
  no other option) under ``mpiexec`` with 4 and 8 workers, seeds 0, 1, 2: hvd_dc's
  defaults, hvd_dc with the defaults it had before this study (``lr_scaling="per_push"``,
  ``async_momentum="shared"``, ``dc_variant="adaptive"``, no staleness policy), synchronous data parallelism (torch.distributed, what
  Horovod computes) and Horovod 0.28.1 itself (when ``$HVD_DC_HOROVOD_PYTHON`` imports it).
* ``mpi``: the same script on all 60,000 images for ``EPOCHS`` epochs at the tuned lr, one
  worker 4x slower (it sleeps 3x its own forward/backward after each step), M = 4 and 8:
  the time each system takes to reach synchronous data parallelism's final test error
  (torch DDP's at M = 4, Horovod's at M = 8: see ``MPI_SYSTEMS``).

Writes ``horovod.md``, ``horovod.json`` and PNG plots to ``--out`` (default
benchmarks/results/convergence_horovod).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
from typing import Dict, Iterable, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
os.environ.setdefault("OMP_NUM_THREADS", "1")

from benchmarks.convergence_lib import common  # noqa: E402
from benchmarks.convergence_lib.runs import Cache, search_grid  # noqa: E402

TASK = "fashion60k"
STUDY = "horovod/1"  # part of every run's key: a change of protocol starts a new set of runs
EPOCHS = 20
MOMENTUM = 0.9
TUNE_SEEDS = (100, 101)
SEEDS = (0, 1, 2)
LR_GRID_MOMENTUM = (0.00625, 0.0125, 0.025, 0.05, 0.1)
LR_GRID_PLAIN = (0.025, 0.05, 0.1, 0.2, 0.4)
MAX_EXTEND = 2
PLATEAU_EPOCHS = (10, 20, 40)
WORKERS = (4, 8, 16, 32)
#: the order the main parts run M in: Horovod's common case first
RUN_ORDER = (8, 4, 16, 32)
#: how the simulator computes gradients in this study (part ``speed`` measured both)
GRADIENTS = "loop"
PARTS = ("tune", "plateau", "pilot", "select", "semantics", "main", "plain", "variants", "speed", "script", "mpi")
LR_GRID_ADAM = (0.00025, 0.0005, 0.001, 0.002, 0.004)
SCRIPT = os.path.join(HERE, "horovod_fashion.py")
SCRIPT_WORKERS = (4, 8)
SCRIPT_LR = 0.01  # the Horovod-style script: SGD(lr=0.01 * hvd.size(), momentum=0.9)
SCRIPT_EPOCHS = 8
SCRIPT_IMAGES = 12000
MPI_SLOW_FACTOR = 4.0
#: the straggler runs' systems: torch DDP (gloo) at 8 ranks on 2 cores takes 0.4 s a step
#: (part script: 76 s for 8 epochs of 12,000 images), about 16 minutes for
#: these 20 epochs; Horovod computes the same steps (part script: final errors equal to 0.02
#: points) and is the synchronous reference at M = 8
MPI_SYSTEMS = {4: ("hvd_dc", "ddp", "horovod"), 8: ("hvd_dc", "horovod")}
#: what hvd_dc defaulted to before this study (the 'before' runs of part script)
OLD_DEFAULTS = {"lr_scaling": "per_push", "async_momentum": "shared", "dc_variant": "adaptive", "staleness_policy": "none"}
SYSTEMS = ("hvd_dc", "hvd_dc_before", "ddp", "horovod")

#: every method: (synchronous, DistributedDCOptimizer options beyond the server's SGD)
METHODS: Dict[str, Tuple[bool, Dict]] = {
    "seq": (False, {}),
    "ssgd": (True, {}),
    "asgd": (False, {}),
    "dc-a": (False, {"variant": "adaptive"}),
    "ga": (False, {"staleness_policy": "gap_aware"}),
    "dc-a+ga": (False, {"variant": "adaptive", "staleness_policy": "gap_aware"}),
    "dana": (False, {"async_momentum": "dana"}),
    "dana+dc": (False, {"async_momentum": "dana", "variant": "adaptive"}),
    "dana+ga": (False, {"async_momentum": "dana", "staleness_policy": "gap_aware"}),
    "dana+dc+ga": (False, {"async_momentum": "dana", "variant": "adaptive", "staleness_policy": "gap_aware"}),
    "reduced": (False, {"async_momentum": "reduced"}),
    "asgd-nesterov": (False, {"nesterov": True}),
    "seq-adam": (False, {"optimizer": "adam"}),
    "ssgd-adam": (True, {"optimizer": "adam"}),
    "asgd-adam": (False, {"optimizer": "adam"}),
}
LABELS = {"seq": "sequential SGD", "ssgd": "SSGD (Horovod)", "asgd": "ASGD", "dc-a": "DC-ASGD-a",
          "ga": "Gap-Aware", "dc-a+ga": "DC-ASGD-a + Gap-Aware", "dana": "DANA", "dana+dc": "DANA + DC-ASGD-a",
          "dana+ga": "DANA + Gap-Aware", "dana+dc+ga": "DANA + DC-ASGD-a + Gap-Aware", "reduced": "lowered momentum", "asgd-nesterov": "ASGD, Nesterov (shared)",
          "seq-adam": "sequential Adam", "ssgd-adam": "SSGD, Adam", "asgd-adam": "ASGD, Adam (shared beta1)"}
MAIN_METHODS = ("ssgd", "asgd", "dc-a", "ga", "dana", "dana+dc", "dana+ga", "dana+dc+ga", "reduced")
VARIANT_METHODS = ("seq-adam", "ssgd-adam", "asgd-adam", "asgd-nesterov")
PLAIN_METHODS = ("ssgd", "asgd", "dc-a", "ga", "dc-a+ga")
SEMANTICS_METHODS = ("asgd", "dana")
#: the lowered-momentum rules the pilot compares (see pilot_options)
PILOT_RULES = ("additive", "delay", "additive+gain", "delay+gain")


def additive_momentum(mu: float, m: int) -> float:
    """Mitliagkas et al. 2016: M asynchronous workers add an implicit momentum of about
    1 - 1/M; take it off the explicit one."""
    return max(0.0, mu - (1.0 - 1.0 / m))


def delay_matched_momentum(mu: float, m: int) -> float:
    """The explicit momentum whose mean delay, added to the staleness M - 1, gives the mean
    delay mu / (1 - mu) of sequential momentum: mu_e / (1 - mu_e) = mu / (1 - mu) - (M - 1)."""
    d = mu / (1.0 - mu) - (m - 1)
    return d / (1.0 + d) if d > 0 else 0.0


def pilot_options(rule: str, mu: float, m: int):
    """Server options of one lowered-momentum rule: the momentum, and with ``+gain`` the lr
    raised so that lr / (1 - mu) (a gradient's total step under momentum) stays the same."""
    from benchmarks.convergence_lib.simulate import ServerOptions

    base = rule.split("+")[0]
    mu_e = additive_momentum(mu, m) if base == "additive" else delay_matched_momentum(mu, m)
    gain = (1.0 - mu_e) / (1.0 - mu) if rule.endswith("+gain") else 1.0
    return ServerOptions(momentum=mu_e, lr_scale=gain / m)


def server_options(method: str, m: int, mu: float, semantics: str = "per_step"):
    """The simulated server for ``method`` at M = ``m`` behind a Horovod script with momentum
    ``mu`` (its lr is lr_seq x M; ``per_step`` applies 1/M of it per push)."""
    from benchmarks.convergence_lib.simulate import ServerOptions

    if method.startswith("pilot:"):
        return pilot_options(method.split(":", 1)[1], mu, m)
    synchronous, extra = METHODS[method]
    scale = 1.0 if synchronous or method.startswith("seq") or semantics == "per_push" else 1.0 / m
    return ServerOptions(momentum=mu, lr_scale=scale, **extra)


def spec(method: str, m: int, mu: float, lr_seq: float, seed: int, split: str, epochs: int,
         semantics: str = "per_step") -> Dict:
    """One run, as the plain data its key is made of. ``lr`` is what the script sets:
    lr_seq x M (Horovod's scaling), lr_seq for sequential SGD."""
    from hvd_dc.async_momentum import REDUCED_RULE

    extra = {"reduced_rule": REDUCED_RULE} if method == "reduced" else {}
    seq = method.startswith("seq")
    return {**extra, "study": STUDY, "method": method, "workers": 1 if seq else m, "momentum": mu,
            "lr_seq": lr_seq, "lr": round(lr_seq * (1 if seq else m), 10), "seed": seed,
            "split": split, "epochs": epochs, "semantics": semantics, "pattern": "round_robin",
            "train_on_val": split == "test", "gradients": GRADIENTS, "batch": common.TASKS[TASK].batch}


def key_of(s: Dict) -> str:
    return json.dumps(s, sort_keys=True)


def execute(s: Dict) -> Dict:
    """Run one spec (in a pool process); returns the run record."""
    from benchmarks.convergence_lib import simulate

    t0, c0 = time.perf_counter(), time.process_time()
    options = server_options(s["method"], s["workers"], s["momentum"], s["semantics"])
    synchronous = METHODS.get(s["method"], (False, {}))[0]
    res = simulate.run(TASK, s["workers"], s["seed"], s["lr"], s["epochs"], options, synchronous=synchronous,
                       pattern=s["pattern"], split=s["split"], gradients=s["gradients"],
                       train_on_val=s["train_on_val"], batch=s["batch"],
                       eval_epochs=None if s["split"] == "test" else [])
    return {"key": key_of(s), **s, "curve": res["curve"], "server": res["server"],
            "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


class Study:
    """The run file plus a pool: :meth:`ensure` runs whatever of a list is not done yet."""

    def __init__(self, out: str, jobs: int, log, methods: Optional[List[str]] = None):
        self.cache = Cache(os.path.join(out, "runs.jsonl"))
        self.jobs = jobs
        self.log = log
        self.methods = methods  # run only these (another process runs the rest)

    def get(self, s: Dict) -> Optional[Dict]:
        return self.cache.runs.get(key_of(s))

    def ensure(self, specs: Iterable[Dict]) -> List[Dict]:
        specs = [s for s in specs if self.methods is None or s["method"] in self.methods]
        todo, seen = [], set()
        for s in specs:
            k = key_of(s)
            if k not in self.cache.runs and k not in seen:
                todo.append(s)
                seen.add(k)
        if todo:
            self.log(f"   {len(todo)} runs to do ({len(specs) - len(todo)} already done)")
            if self.jobs > 1 and len(todo) > 1:
                ctx = multiprocessing.get_context("spawn")  # a fresh torch per process
                with ctx.Pool(min(self.jobs, len(todo))) as pool:
                    for run in pool.imap_unordered(execute, todo):
                        self._done(run)
            else:
                for s in todo:
                    self.cache.refresh()
                    if key_of(s) not in self.cache.runs:  # another process may have done it since
                        self._done(execute(s))
        return [self.cache.runs[key_of(s)] for s in specs]

    def _done(self, run: Dict) -> None:
        self.cache.add(run)
        c = run["curve"]
        self.log(f"   {run['method']:14s} M={run['workers']:<2d} mu={run['momentum']:g} lr={run['lr']:g} "
                 f"{run['semantics']:8s} seed={run['seed']} {run['split']} E={run['epochs']}: "
                 f"err {c['err'][-1]:.2f}% ({run['cpu_s']:.0f} s cpu, {run['wall_s']:.0f} s wall)")


def final_error(run: Dict) -> float:
    err = run["curve"]["err"][-1]
    return err if err == err else 100.0


def tuned_lr(study: Study, mu: float, run: bool = True, method: str = "seq") -> Optional[Dict]:
    """Sequential SGD's (``method="seq-adam"``: Adam's) lr for momentum (beta1) ``mu``: the
    grid point with the lowest mean final validation error over the tuning seeds (the grid
    extended past a winning edge)."""
    grid = list(LR_GRID_ADAM if method == "seq-adam" else LR_GRID_MOMENTUM if mu else LR_GRID_PLAIN)

    def score(lr) -> Optional[float]:
        specs = [spec(method, 1, mu, lr, s, "val", EPOCHS) for s in TUNE_SEEDS]
        runs = study.ensure(specs) if run else [study.get(s) for s in specs]
        if any(r is None for r in runs):
            return None
        return statistics.mean(final_error(r) for r in runs)

    found = search_grid(grid, score, lambda scores: min(sorted(scores), key=lambda lr: scores[lr]), MAX_EXTEND)
    if found is None:
        return None
    scores = found[0]
    lrs = sorted(scores)
    return {"method": method, "momentum": mu, "grid": lrs, "val_error": [scores[lr] for lr in lrs],
            "lr": min(lrs, key=lambda lr: scores[lr])}


def need_lr(study: Study, mu: float, method: str = "seq") -> float:
    t = tuned_lr(study, mu, run=False, method=method)
    if t is None:
        raise SystemExit(f"no tuned lr for momentum {mu} in the run file yet: run --parts tune first")
    return t["lr"]


# ---------------------------------------------------------------------------------------
# parts


def part_tune(study: Study) -> None:
    for mu in (MOMENTUM, 0.0):
        t = tuned_lr(study, mu)
        study.log(f"   momentum {mu}: lr {t['lr']:g} (validation error "
                  + ", ".join(f"{lr:g}: {e:.2f}%" for lr, e in zip(t["grid"], t["val_error"])) + ")")


def part_plateau(study: Study) -> None:
    lr = need_lr(study, MOMENTUM)
    study.ensure(spec("seq", 1, MOMENTUM, lr, s, "val", e) for e in PLATEAU_EPOCHS for s in TUNE_SEEDS)


def part_pilot(study: Study) -> None:
    lr = need_lr(study, MOMENTUM)
    study.ensure(spec("pilot:" + rule, m, MOMENTUM, lr, TUNE_SEEDS[0], "val", EPOCHS)
                 for m in WORKERS for rule in PILOT_RULES)


def part_select(study: Study) -> None:
    lr = need_lr(study, MOMENTUM)
    study.ensure(spec(meth, m, MOMENTUM, lr, TUNE_SEEDS[0], "val", EPOCHS)
                 for m in RUN_ORDER for meth in MAIN_METHODS if meth != "ssgd")
    lr = need_lr(study, 0.0)
    study.ensure(spec(meth, m, 0.0, lr, TUNE_SEEDS[0], "val", EPOCHS)
                 for m in RUN_ORDER for meth in PLAIN_METHODS if meth != "ssgd")


def part_semantics(study: Study) -> None:
    lr = need_lr(study, MOMENTUM)
    study.ensure(spec(meth, m, MOMENTUM, lr, SEEDS[0], "test", EPOCHS, semantics=sem)
                 for m in WORKERS for meth in SEMANTICS_METHODS for sem in ("per_push", "per_step"))


def part_main(study: Study) -> None:
    lr = need_lr(study, MOMENTUM)
    specs = [spec("seq", 1, MOMENTUM, lr, s, "test", EPOCHS) for s in SEEDS]
    specs += [spec(meth, m, MOMENTUM, lr, s, "test", EPOCHS) for m in RUN_ORDER for s in SEEDS for meth in MAIN_METHODS]
    study.ensure(specs)


def part_plain(study: Study) -> None:
    lr = need_lr(study, 0.0)
    specs = [spec("seq", 1, 0.0, lr, s, "test", EPOCHS) for s in SEEDS]
    specs += [spec(meth, m, 0.0, lr, s, "test", EPOCHS) for m in RUN_ORDER for s in SEEDS for meth in PLAIN_METHODS]
    study.ensure(specs)


def part_variants(study: Study) -> None:
    lr = need_lr(study, MOMENTUM)
    study.ensure(spec("asgd-nesterov", m, MOMENTUM, lr, s, "test", EPOCHS) for m in RUN_ORDER for s in SEEDS)
    tuned = tuned_lr(study, MOMENTUM, method="seq-adam")
    study.log(f"   Adam (beta1 {MOMENTUM}): lr {tuned['lr']:g} (validation error "
              + ", ".join(f"{lr:g}: {e:.2f}%" for lr, e in zip(tuned["grid"], tuned["val_error"])) + ")")
    lr = tuned["lr"]
    specs = [spec("seq-adam", 1, MOMENTUM, lr, s, "test", EPOCHS) for s in SEEDS]
    specs += [spec(meth, m, MOMENTUM, lr, s, "test", EPOCHS) for m in RUN_ORDER for s in SEEDS
              for meth in ("ssgd-adam", "asgd-adam")]
    study.ensure(specs)


def part_speed(study: Study, out: str, repeats: int = 3) -> None:
    """CPU seconds of one simulator epoch of DANA at M = 8 and of SSGD at M = 8, gradients
    one at a time against batched: median of ``repeats``."""
    from benchmarks.convergence_lib import simulate

    rows = []
    for method in ("dana", "ssgd"):
        for gradients in ("loop", "batched"):
            cpu = []
            for _ in range(repeats):
                c0 = time.process_time()
                simulate.run(TASK, 8, 0, 0.05 * 8, 1, server_options(method, 8, MOMENTUM),
                             synchronous=METHODS[method][0], split="val", eval_epochs=[], gradients=gradients)
                cpu.append(time.process_time() - c0)
            rows.append({"method": method, "workers": 8, "gradients": gradients, "cpu_s_per_epoch": statistics.median(cpu),
                         "cpu_s_all": cpu})
            study.log(f"   {method} M=8 gradients={gradients}: {rows[-1]['cpu_s_per_epoch']:.2f} s cpu per epoch "
                      f"(median of {repeats})")
    with open(os.path.join(out, "speed.json"), "w") as f:
        json.dump({"command": "python benchmarks/convergence_horovod.py --parts speed", "rows": rows,
                   "torch_threads": 1}, f, indent=1)


def mpi_run(study: Study, system: str, m: int, seed: int, lr: float, epochs: int, images: int,
            slow_factor: float, timeout: float = 1800) -> Optional[Dict]:
    """One run of benchmarks/horovod_fashion.py under mpiexec (cached like the simulator's)."""
    import subprocess
    import tempfile

    from benchmarks import common as bench
    from benchmarks.convergence_lib.runs import children_cpu
    from hvd_dc.launch import local_mpiexec

    s = {"study": STUDY, "mode": "mpi", "system": system, "workers": m, "seed": seed, "lr": lr, "epochs": epochs,
         "train_images": images, "slow_factor": slow_factor, "momentum": MOMENTUM}
    if slow_factor > 1.0:
        s["straggler"] = "compute"  # sleeps (F - 1) x its own forward/backward (horovod_fashion.py)
    if system == "hvd_dc_before":
        s["hvd_dc_options"] = OLD_DEFAULTS
    got = study.get(s)
    if got is not None:
        return got
    if system == "horovod" and not bench.horovod_available():
        study.log(f"   horovod: not importable from {bench.HOROVOD_PYTHON} ($HVD_DC_HOROVOD_PYTHON): skipped")
        return None
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", HVD_DC_TIMEOUT="600",
               HVD_DC_START_TIMEOUT="600")
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    args = ["--lr", repr(lr), "--momentum", str(MOMENTUM), "--epochs", str(epochs), "--train-images", str(images),
            "--seed", str(seed), "--slow-factor", str(slow_factor)]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "run.json")
        if system.startswith("hvd_dc"):
            cmd = local_mpiexec() + ["-n", str(m + 1), sys.executable, SCRIPT, "--backend", "hvd_dc"]
            if system == "hvd_dc_before":
                cmd += ["--hvd-dc-options", json.dumps(OLD_DEFAULTS)]
        elif system == "ddp":
            env["HVD_DC_DDP_PORT"] = str(bench.free_port())
            cmd = local_mpiexec() + ["-n", str(m), sys.executable, SCRIPT, "--backend", "ddp"]
        else:
            cmd = bench.horovod_launcher() + ["-n", str(m), bench.HOROVOD_PYTHON, SCRIPT, "--backend", "horovod"]
        cmd += args + ["--out", out]
        t0, c0 = time.perf_counter(), children_cpu()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if not os.path.exists(out):
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                               f"{proc.stderr[-3000:]}")
        with open(out) as f:
            res = json.load(f)
    run = {"key": key_of(s), **s, **res, "launch_wall_s": time.perf_counter() - t0, "cpu_s": children_cpu() - c0,
           "divergence_warnings": proc.stderr.count("DivergenceWarning")}
    study.cache.add(run)
    study.log(f"   mpi {system:14s} M={m} seed={seed} lr={lr:g} E={epochs} slow={slow_factor:g}: final err "
              f"{res['final_error']:.2f}% after {res['seconds']:.1f} s ({run['cpu_s']:.0f} s cpu)")
    return run


def part_script(study: Study) -> None:
    for m in SCRIPT_WORKERS:
        for seed in SEEDS:
            for system in SYSTEMS:
                mpi_run(study, system, m, seed, SCRIPT_LR, SCRIPT_EPOCHS, SCRIPT_IMAGES, 1.0)


def part_mpi(study: Study) -> None:
    lr = need_lr(study, MOMENTUM)
    for m in SCRIPT_WORKERS:
        for system in MPI_SYSTEMS[m]:
            mpi_run(study, system, m, SEEDS[0], lr, EPOCHS, 60000, MPI_SLOW_FACTOR)


# ---------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(HERE, "results", "convergence_horovod"))
    p.add_argument("--data", default=None, help=f"directory of the Fashion-MNIST IDX files (default "
                   f"${common.FASHION_ENV} or {common.FASHION_DEFAULT_DIR})")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (processes)")
    p.add_argument("--methods", default=None, help="comma list: run only these methods' runs of the chosen parts "
                   "(to share a part between processes)")
    p.add_argument("--report-only", action="store_true", help="only redraw the report from runs.jsonl")
    args = p.parse_args(argv)
    if args.data:
        os.environ[common.FASHION_ENV] = os.path.abspath(args.data)
    try:
        common.fashion_paths()
    except common.DataMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    parts = [x for x in args.parts.split(",") if x]
    bad = [x for x in parts if x not in PARTS]
    if bad:
        p.error(f"unknown part(s) {bad}; choose from {PARTS}")
    os.makedirs(args.out, exist_ok=True)
    logf = open(os.path.join(args.out, "log.txt"), "a")

    def log(msg):
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    study = Study(args.out, args.jobs, log, args.methods.split(",") if args.methods else None)
    command = "python benchmarks/convergence_horovod.py" + "".join(
        " " + a for a in (argv if argv is not None else sys.argv[1:]))
    if not args.report_only:
        start = time.time()
        log(f"== {time.strftime('%Y-%m-%d %H:%M:%S')} {command}")
        for part in parts:
            log(f"-- {part}")
            if part == "speed":
                part_speed(study, args.out)
            elif part in ("script", "mpi") and args.jobs > 1:
                raise SystemExit(f"part {part} times the real system: run it with --jobs 1 on an otherwise idle machine")
            else:
                globals()["part_" + part](study)
        log(f"   this invocation: {time.time() - start:.0f} s wall")
    from benchmarks.convergence_lib import report_horovod

    report_horovod.write_all(args.out, study, sys.modules[__name__])
    return 0


if __name__ == "__main__":
    sys.exit(main())

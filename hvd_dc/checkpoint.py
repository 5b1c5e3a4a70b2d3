"""Server-state checkpoints: what is saved, how it is written, how it is read back.

A checkpoint holds everything :class:`~hvd_dc.server_state.ServerState` needs to continue
the same trajectory: the master weights, every worker's backup ``w_bak(m)``, the
MeanSquare buffers, the wrapped optimizer's ``state_dict()`` (momentum buffers, Adam
moments, the current lr), the update/push counters, the staleness record (one histogram per
worker), and a description of the model that is checked on load.

* Format: a ``torch.save`` file of tensors, numbers, strings, lists and dicts only, so it
  loads with ``torch.load(weights_only=True)``; no pickled classes.
* Write: into ``<path>.tmp-<pid>``, flushed and fsync'ed, then ``os.replace`` onto
  ``<path>`` and the directory fsync'ed. A crash at any moment leaves either the previous
  checkpoint or the new one, whole; stale temporary files are removed on the next write.
"""

from __future__ import annotations

import glob
import os
import time
from typing import Any, Dict, Optional

import numpy as np
import torch

from .fault_injection import fault_point

__all__ = ["FORMAT", "save_atomic", "load", "snapshot", "restore", "CheckpointMismatch"]

FORMAT = "hvd_dc.checkpoint/2"
#: Formats :func:`load` reads. Version 1 had no per-worker staleness record: a resume from
#: it starts the staleness statistics afresh.
READABLE_FORMATS = ("hvd_dc.checkpoint/1", FORMAT)


class CheckpointMismatch(RuntimeError):
    """The checkpoint on disk describes a different model."""


def save_atomic(obj: Dict[str, Any], path: str) -> None:
    """Write ``obj`` to ``path`` so that a crash leaves the old or the new file, whole."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(directory, exist_ok=True)
    for stale in glob.glob(glob.escape(path) + ".tmp-*"):
        try:
            os.remove(stale)
        except OSError:
            pass
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        fault_point("kill_server_mid_checkpoint", f)
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load(path: str) -> Dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)`` and check its format."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") not in READABLE_FORMATS:
        raise CheckpointMismatch(f"{path} is not an hvd_dc checkpoint (format {FORMAT})")
    return obj


def _describe(state) -> Dict[str, Any]:
    spec = state.spec
    return {
        "params": [[p.name, list(p.shape), p.dtype, p.group] for p in spec.params],
        "optimizer_class": ".".join(spec.optimizer_class),
        "dc_variant": spec.dc.variant.label,
        "dc_mean_square": spec.dc.mean_square,
    }


def _host_copy(t: torch.Tensor) -> torch.Tensor:
    """A CPU copy, so that a checkpoint from a CUDA server loads anywhere."""
    return t.detach().to("cpu", copy=True)


def snapshot(state, elapsed_s: float) -> Dict[str, Any]:
    """Everything needed to continue ``state`` (a ServerState), as plain data and tensors."""
    comp = state.compensator
    return {
        "format": FORMAT,
        "written_at": time.time(),
        "elapsed_s": float(elapsed_s),
        "model": _describe(state),
        "num_workers": state.num_workers,
        "weights": _host_copy(state.weights),
        "backups": [_host_copy(b) for b in state.backups],
        "mean_square": {str(k): [_host_copy(t) for t in v] for k, v in comp.mean_square.items()},
        "optimizer": state.optimizer.state_dict(),
        "updates": int(state.updates),
        "accepted": state.accepted.tolist(),
        "rejected": state.rejected.tolist(),
        "pulls": state.pulls.tolist(),
        "updates_at_pull": state.updates_at_pull.tolist(),
        "staleness": state.staleness.to_lists(),
    }


def restore(state, ckpt: Dict[str, Any], path: str) -> Optional[str]:
    """Load ``ckpt`` into ``state``. Returns a warning when only part could be restored
    (a different number of workers: per-worker state starts afresh). Raises
    :class:`CheckpointMismatch` naming the difference when the model differs."""
    mine = _describe(state)
    theirs = ckpt["model"]
    for key in ("optimizer_class", "dc_variant", "dc_mean_square"):
        if mine[key] != theirs[key]:
            raise CheckpointMismatch(f"checkpoint {path} has {key}={theirs[key]!r} but this job uses {mine[key]!r}")
    if mine["params"] != theirs["params"]:
        if len(mine["params"]) != len(theirs["params"]):
            raise CheckpointMismatch(
                f"checkpoint {path} holds {len(theirs['params'])} parameters but this model has {len(mine['params'])}"
            )
        for a, b in zip(mine["params"], theirs["params"]):
            if a != b:
                raise CheckpointMismatch(f"checkpoint {path} has parameter {b} where this model has {a}")
    state.weights.copy_(ckpt["weights"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.updates = int(ckpt["updates"])
    same_workers = int(ckpt["num_workers"]) == state.num_workers
    comp = state.compensator
    if same_workers:
        for b, saved in zip(state.backups, ckpt["backups"]):
            b.copy_(saved)
        for key, bufs in ckpt["mean_square"].items():
            for t, saved in zip(comp.mean_square[int(key)], bufs):
                t.copy_(saved)
        for name in ("accepted", "rejected", "pulls", "updates_at_pull"):
            getattr(state, name)[:] = np.asarray(ckpt[name], dtype=np.int64)
        if "staleness" in ckpt:
            state.staleness.load_lists(ckpt["staleness"])
        state.refresh_replies()
        return None
    for b in state.backups:
        b.copy_(state.weights)
    state.refresh_replies()
    state.updates_at_pull[:] = state.updates
    if comp.mean_square_mode == "global" and "0" in ckpt["mean_square"]:
        for t, saved in zip(comp.mean_square[0], ckpt["mean_square"]["0"]):
            t.copy_(saved)
    return (
        f"checkpoint {path} was written with {ckpt['num_workers']} workers and this job has {state.num_workers}: "
        "restored the weights, the optimizer state and the update count; every worker starts from the restored "
        "weights with fresh per-worker state"
    )

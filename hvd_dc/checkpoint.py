"""Server-state checkpoints: what is saved, how it is written, how it is read back.

Each server rank writes its own file (:func:`server_path`) with everything its chunks'
states (:class:`~hvd_dc.server_state.ShardState`) need to continue the same trajectory,
per chunk: the master weights, every worker's backup ``w_bak(m)``, the MeanSquare
buffers, the wrapped optimizer's ``state_dict()`` (momentum buffers, Adam moments, the
current lr), DANA's per-worker momentum (``async_momentum="dana"``), the update/push
counters and the staleness record; and, for the file, the
server's counts, a description of the model and of its chunking, checked on load. A
server writes only when every worker's pushes have reached all of its chunks alike, so a
file never holds half a push.

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
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from .fault_injection import fault_point

__all__ = ["FORMAT", "save_atomic", "load", "snapshot", "restore", "server_path", "CheckpointMismatch"]

FORMAT = "hvd_dc.checkpoint/2"
#: Formats :func:`load` reads. Version 1 held one state for the whole model (no chunks) and
#: no staleness record: it resumes a job whose server has one chunk, with the staleness
#: statistics started afresh.
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


def _describe(spec) -> Dict[str, Any]:
    return {
        "params": [[p.name, list(p.shape), p.dtype, p.group] for p in spec.params],
        "optimizer_class": ".".join(spec.optimizer_class),
        "dc_variant": spec.dc.variant.label,
        "dc_mean_square": spec.dc.mean_square,
        "staleness_policy": spec.dc.staleness_policy,
        "async_momentum": spec.dc.async_momentum,
    }


def _host_copy(t: torch.Tensor) -> torch.Tensor:
    """A CPU copy, so that a checkpoint from a CUDA server loads anywhere."""
    return t.detach().to("cpu", copy=True)


def _states(shard) -> List[Any]:
    """The per-chunk states of a ShardState, or a lone ServerState as one chunk."""
    return list(shard.states) if hasattr(shard, "states") else [shard]


def _record(state) -> Dict[str, Any]:
    """Everything needed to continue one chunk's ServerState."""
    comp = state.compensator
    return {
        "weights": _host_copy(state.weights),
        "backups": [_host_copy(b) for b in state.backups],
        "mean_square": {str(k): [_host_copy(t) for t in v] for k, v in comp.mean_square.items()},
        "staleness_policy": state.policy.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "dana": None if state.dana is None else state.dana.state_dict(),
        "updates": int(state.updates),
        "accepted": state.accepted.tolist(),
        "rejected": state.rejected.tolist(),
        "pulls": state.pulls.tolist(),
        "updates_at_pull": state.updates_at_pull.tolist(),
        "staleness": state.staleness.to_lists(),
    }


def snapshot(shard, elapsed_s: float, plan: Optional[List[List[int]]] = None) -> Dict[str, Any]:
    """Everything needed to continue ``shard`` (a server's ShardState, or one ServerState),
    as plain data and tensors. ``plan``: the chunk plan's description
    (:meth:`~hvd_dc.chunks.ChunkPlan.describe`), checked on restore. The top-level
    ``updates``/``accepted``/``rejected`` are the server's counts (its first chunk's)."""
    states = _states(shard)
    first = states[0]
    return {
        "format": FORMAT,
        "written_at": time.time(),
        "elapsed_s": float(elapsed_s),
        "model": _describe(shard.spec),
        "plan": plan,
        "num_workers": shard.num_workers,
        "updates": int(first.updates),
        "accepted": first.accepted.tolist(),
        "rejected": first.rejected.tolist(),
        "chunks": [_record(st) for st in states],
    }


def restore(shard, ckpt: Dict[str, Any], path: str, plan: Optional[List[List[int]]] = None) -> Optional[str]:
    """Load ``ckpt`` into ``shard`` (a ShardState or one ServerState). Returns a warning
    when only part could be restored (a different number of workers: per-worker state
    starts afresh). Raises :class:`CheckpointMismatch` naming the difference when the
    model or its chunking differ."""
    mine = _describe(shard.spec)
    theirs = ckpt["model"]
    for key in ("optimizer_class", "dc_variant", "dc_mean_square", "staleness_policy", "async_momentum"):
        # written before staleness policies / async momentum existed: it ran "none" / "shared"
        saved = theirs.get(key, "shared" if key == "async_momentum" else "none")
        if mine[key] != saved:
            raise CheckpointMismatch(f"checkpoint {path} has {key}={saved!r} but this job uses {mine[key]!r}")
    if mine["params"] != theirs["params"]:
        if len(mine["params"]) != len(theirs["params"]):
            raise CheckpointMismatch(
                f"checkpoint {path} holds {len(theirs['params'])} parameters but this model has {len(mine['params'])}"
            )
        for a, b in zip(mine["params"], theirs["params"]):
            if a != b:
                raise CheckpointMismatch(f"checkpoint {path} has parameter {b} where this model has {a}")
    states = _states(shard)
    records = ckpt["chunks"] if "chunks" in ckpt else [ckpt]  # format 1: one state, no chunks
    if "chunks" not in ckpt and len(states) != 1:
        raise CheckpointMismatch(
            f"checkpoint {path} was written before hvd_dc cut models into chunks; this job cuts the model into "
            f"{len(states)} chunks on this server: resume it with HVD_DC_SERVERS=1 and a chunk size larger than "
            "the model (HVD_DC_CHUNK_BYTES)"
        )
    if ckpt.get("plan") is not None and plan is not None and ckpt["plan"] != plan:
        raise CheckpointMismatch(
            f"checkpoint {path} was written with another chunking ({len(ckpt['plan'])} chunks, over "
            f"{1 + max(c[3] for c in ckpt['plan'])} server(s)) than this job's ({len(plan)} chunks, over "
            f"{1 + max(c[3] for c in plan)} server(s)): resume with the same HVD_DC_SERVERS and HVD_DC_CHUNK_BYTES"
        )
    if len(records) != len(states):
        raise CheckpointMismatch(f"checkpoint {path} holds {len(records)} chunks but this server has {len(states)}")
    warning = None
    for state, record in zip(states, records):
        warning = _restore_state(state, record, int(ckpt["num_workers"]), path)
    return warning


def _restore_state(state, ckpt: Dict[str, Any], num_workers: int, path: str) -> Optional[str]:
    state.weights.copy_(ckpt["weights"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.updates = int(ckpt["updates"])
    if "staleness_policy" in ckpt:  # model-wide state: restored whatever the number of workers
        state.policy.load_state_dict(ckpt["staleness_policy"])
    if state.dana is not None:
        state.dana.load_state_dict(ckpt["dana"], same_workers=num_workers == state.num_workers)
    comp = state.compensator
    if num_workers == state.num_workers:
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
    for m in range(state.num_workers):
        state.update.write_pull(m)
    state.refresh_replies()
    state.updates_at_pull[:] = state.updates
    if comp.mean_square_mode == "global" and "0" in ckpt["mean_square"]:
        for t, saved in zip(comp.mean_square[0], ckpt["mean_square"]["0"]):
            t.copy_(saved)
    return (
        f"checkpoint {path} was written with {num_workers} workers and this job has {state.num_workers}: "
        "restored the weights, the optimizer state and the update count; every worker starts from the restored "
        "weights with fresh per-worker state"
    )


def server_path(path: str, server: int, servers: int) -> str:
    """Where server ``server`` of ``servers`` keeps its checkpoint: ``path`` itself with one
    server, else ``<path>.server<s>``."""
    return path if servers == 1 else f"{path}.server{server}"

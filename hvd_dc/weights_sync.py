"""Weights broadcast among the workers after the model is served become the server's.

A served parameter's ``.data`` is a view of hvd_dc's reply buffer (or of the staged
device buffer), and the server computes the next update against its own master weights
and each worker's ``w_bak(m)``. So when ``broadcast_parameters`` overwrites served
parameters (Horovod's examples load a checkpoint into the model on rank 0 after wrapping
the optimizer, then broadcast), the new values must reach the server, or the next
``step()`` silently brings back the old weights.

:func:`sync_served_weights`, called by ``broadcast_parameters`` on every worker after
its broadcast (a collective, so no worker has a push in flight):

1. finds which served models the broadcast tensors belong to (by storage), and has the
   workers agree on it (a mismatch is an error on every worker);
2. worker 0 sends every server :class:`~hvd_dc.protocol.SetWeights` and the model's
   weights (model layout, on ``WEIGHTS``, as at registration);
3. each server replaces its chunks' master weights and every ``w_bak(m)`` (every reply
   area) and answers every worker with :class:`~hvd_dc.protocol.WeightsSet`;
4. each worker pulls, so its whole model (also served parameters the broadcast did not
   cover) is exactly the server's weights, which are its ``w_bak(m)``.

The server's optimizer state (momentum, Adam moments), its MeanSquare buffers and its
counters are kept.
"""

from __future__ import annotations

from typing import Any, Callable, List, Sequence, Tuple

import torch
from mpi4py import MPI

from .protocol import SetWeights, Tag, WeightsSet
from .waiting import HorovodInternalError, recv, wait_request

__all__ = ["sync_served_weights", "touched_models"]


def touched_models(served: Sequence[Any], tensors: Sequence[torch.Tensor]) -> Tuple[int, ...]:
    """Indices of the served models (``ctx.served`` order) one of whose trained
    parameters shares its memory with one of ``tensors`` (``state_dict()`` entries and
    ``named_parameters()`` both do)."""
    ptrs = {t.data_ptr() for t in tensors if t.numel()}
    touched = []
    for index, worker in enumerate(served):
        params = getattr(getattr(worker, "buffers", None), "params", None) or []
        if any(p.numel() and p.data_ptr() in ptrs for p in params):
            touched.append(index)
    return tuple(touched)


def _model_bytes(worker: Any) -> torch.Tensor:
    """The worker's current weights in the model layout (what registration sends)."""
    layout = worker.spec.layout()
    flat = torch.zeros(layout.nbytes, dtype=torch.uint8)
    with torch.no_grad():
        for view, p in zip(layout.param_views(flat), worker.buffers.params):
            view.copy_(p.detach())
    return flat


def sync_served_weights(ctx: Any, tensors: Sequence[torch.Tensor],
                        agree: Callable[[Tuple[int, ...]], None]) -> List[int]:
    """Make the server's weights those the workers now hold for every served model that
    ``tensors`` touched (see the module docstring); returns those models' indices.
    ``agree(touched)`` is a collective among the workers that fails unless every worker
    passes the same indices."""
    if not ctx.served:
        return []  # nothing served yet: the usual broadcast before wrapping
    touched = touched_models(ctx.served, tensors)
    agree(touched)
    timeout = ctx.settings.timeout
    for index in touched:
        worker = ctx.served[index]
        servers = ctx.topology.server_ranks
        if ctx.worker_rank == 0:
            flat = _model_bytes(worker)
            for s in servers:
                ctx.world.send(SetWeights(index, int(flat.numel())), dest=s, tag=Tag.CONTROL)
                req = ctx.world.Isend([flat.numpy(), MPI.BYTE], dest=s, tag=Tag.WEIGHTS)
                wait_request(req, timeout, lambda: f"worker 0: the parameter server (world rank {s}) did not take "
                                                   f"the broadcast weights within {timeout:g} s")
        for s in servers:
            answer: WeightsSet = recv(
                ctx.world, s, Tag.REGISTERED, timeout,
                lambda: f"worker {ctx.worker_rank}: the parameter server (world rank {s}) did not confirm the "
                        f"broadcast weights within {timeout:g} s (set HVD_DC_TIMEOUT to wait longer)")
            if answer.error:
                raise HorovodInternalError(f"hvd_dc: the parameter server (world rank {s}) could not take the "
                                           f"broadcast weights: {answer.error}")
        worker.pull()  # the whole model is now the servers' weights, which are this worker's w_bak(m)
    return list(touched)

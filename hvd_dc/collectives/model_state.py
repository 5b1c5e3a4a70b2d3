"""The model's and the optimizer's state among the workers: ``broadcast_parameters`` and
``broadcast_optimizer_state`` (Horovod's, over all the workers).

After ``DistributedOptimizer`` wrapped the model, the parameters are served by the
parameter server: ``broadcast_parameters`` then also makes the broadcast weights the
server's (:mod:`hvd_dc.weights_sync`). What ``broadcast_optimizer_state`` reaches is said
in its docstring.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import torch

from ..context import current as context
from ..negotiation import engine
from ..weights_sync import sync_served_weights
from .broadcast import broadcast_, broadcast_object, check_root
from .handles import submit, synchronize

__all__ = ["broadcast_parameters", "broadcast_optimizer_state"]


def broadcast_parameters(params: Union[Dict[str, torch.Tensor], Iterable[Tuple[str, torch.Tensor]]],
                         root_rank: int, prefix: Optional[str] = None) -> None:
    """Overwrite, in place, every tensor in ``params`` (a ``state_dict()`` or
    ``named_parameters()``) with ``root_rank``'s values: one grouped broadcast per dtype.

    After ``DistributedOptimizer`` wrapped the model (e.g. a checkpoint loaded into the
    model on rank 0, then broadcast, as Horovod's examples do), the parameters it
    overwrites are served: the parameter server's master weights and every worker's
    ``w_bak(m)`` become the broadcast values too, so the next ``step()`` starts from them
    (:func:`hvd_dc.weights_sync.sync_served_weights`)."""
    ctx = context()
    root_rank = check_root(root_rank, engine(ctx))
    items = sorted(params.items()) if isinstance(params, dict) else list(params)
    tensors: List[torch.Tensor] = []
    for name, t in items:
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"broadcast_parameters: {name!r} is a {type(t).__name__}, not a tensor")
        tensors.append(t)
    if ctx.workers.Get_size() > 1 and tensors:
        by_dtype: Dict[torch.dtype, List[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for dtype, group in sorted(by_dtype.items(), key=lambda kv: str(kv[0])):
            flat = torch.cat([t.detach().reshape(-1).to("cpu") for t in group])
            broadcast_(flat, root_rank, name=f"broadcast_parameters.{str(dtype).replace('torch.', '')}")
            offset = 0
            with torch.no_grad():
                for t in group:
                    k = t.numel()
                    t.copy_(flat[offset: offset + k].view(t.shape))
                    offset += k
    if ctx.role == "worker":
        sync_served_weights(ctx, tensors, _negotiate_served)


def _negotiate_served(touched: Tuple[int, ...]) -> None:
    """Every worker must agree on which served models ``broadcast_parameters`` touched."""
    synchronize(submit(engine(context()), "set_weights", None, [], lambda v: [], lambda v: None, extra=touched))


def broadcast_optimizer_state(optimizer: torch.optim.Optimizer, root_rank: int, prefix: str = "Parameter.",
                              model: Any = None) -> None:
    """Give every worker's optimizer ``root_rank``'s ``state_dict()`` (hyperparameters and
    any state it holds).

    With the optimizer wrapped by ``DistributedOptimizer`` its running state (momentum
    buffers, Adam moments; with ``async_momentum="dana"`` one momentum per worker, which no
    torch ``state_dict`` holds) lives on the parameter server, and the workers' optimizer
    objects hold none; the hyperparameters are synchronised as in Horovod. A running state
    loaded into the wrapped optimizer (``optimizer.load_state_dict`` from a checkpoint, as
    Horovod's examples resume) cannot be restored through this call exactly, so it is
    refused on every worker with a ``ValueError`` saying so, instead of the server quietly
    continuing with another state. Exact resumes use ``checkpoint_path=``."""
    root_rank = check_root(root_rank, engine(context()))
    me = context().workers.Get_rank()
    state = broadcast_object(optimizer.state_dict() if me == root_rank else None, root_rank,
                             name="broadcast_optimizer_state")
    if me != root_rank:
        optimizer.load_state_dict(state)
    wrapped = getattr(optimizer, "_hvd_dc_worker", None) not in (None, "solo")
    if wrapped and state.get("state"):
        raise ValueError(
            f"hvd_dc.broadcast_optimizer_state: worker {root_rank}'s optimizer holds a running state (momentum "
            "buffers, Adam moments: a checkpoint loaded into it), but this optimizer is wrapped, and its running "
            "state lives on the parameter server, which this call cannot set exactly (with async_momentum='dana' "
            "the server keeps one momentum per worker, which no torch state_dict holds). Resume with "
            "DistributedOptimizer(checkpoint_path=...): the server's own checkpoint restores its state exactly. "
            "Broadcasting the weights (broadcast_parameters after wrapping) does reach the server.")

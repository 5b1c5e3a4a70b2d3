"""Build a ServerState without MPI, the way the server loop does, for the math tests."""

from __future__ import annotations

from typing import Sequence

import torch

from hvd_dc.dc_math import DCOptions
from hvd_dc.layout import ModelSpec, read_hyperparameters
from hvd_dc.server_state import ServerState


def make_spec(optimizer: torch.optim.Optimizer, num_workers: int, variant: str = "adaptive", dc_lambda=None,
              dc_momentum: float = 0.95, dc_eps: float = 1e-7, mean_square: str = "per_worker",
              compression: str = "none", staleness_policy: str = "none", async_momentum: str = "shared",
              lr_scale: float = 1.0) -> ModelSpec:
    names = [f"g{gi}.p{i}" for gi, group in enumerate(optimizer.param_groups) for i in range(len(group["params"]))]
    dc = DCOptions.create(variant, dc_lambda, dc_momentum, dc_eps, mean_square, staleness_policy, async_momentum,
                          lr_scale)
    return ModelSpec.from_optimizer(optimizer, num_workers, names=names, dc=dc, compression=compression)


def make_state(optimizer: torch.optim.Optimizer, num_workers: int, device=None, kernels: str = "fused",
               **dc) -> ServerState:
    """A ServerState whose initial weights are the optimizer's parameters' values
    (staged on ``device`` when given, as ``server_device`` makes the server do;
    ``kernels`` as HVD_DC_KERNELS)."""
    spec = make_spec(optimizer, num_workers, **dc)
    layout = spec.layout()
    initial = torch.zeros(layout.nbytes, dtype=torch.uint8)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for view, p in zip(layout.param_views(initial), params):
        view.copy_(p.detach())
    backups = [torch.zeros(layout.nbytes, dtype=torch.uint8) for _ in range(num_workers)]
    return ServerState(spec, initial, backups, device=device, kernels=kernels)


def flat_weights(state: ServerState) -> torch.Tensor:
    """The master weights as one float64 vector in the user's parameter order."""
    return torch.cat([v.reshape(-1).double() for v in state.layout.param_views(state.weights)])


def push(state: ServerState, worker: int, grads: Sequence[torch.Tensor], hyper=None, pull: bool = False) -> bool:
    """Lay ``grads`` (user parameter order) out in the wire layout and apply them."""
    layout = state.layout
    wire = torch.zeros(layout.wire_nbytes, dtype=torch.uint8)
    segs = layout.segment_views(wire, wire=True)
    for seg, flat in zip(layout.wire_segments, segs):
        for i, off in zip(seg.param_indices, seg.param_offsets):
            g = grads[i].reshape(-1)
            flat[off : off + g.numel()].copy_(g)
    if hyper is None:
        hyper = [0.0] * len(state.spec.hyper_slots)
        read_hyperparameters(state.spec.groups, state.spec.hyper_slots, hyper)
    ok, _ = state.apply_push(worker, segs, hyper, pull=pull)
    return ok

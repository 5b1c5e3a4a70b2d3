"""The rest of ``horovod.torch``'s surface that scripts call, with hvd_dc's answers.

* ``cross_rank()`` / ``cross_size()``: this worker's index among the workers with its
  local rank (one per node), and how many there are (the number of nodes, when every
  node runs the same number of workers), as in Horovod; computed at ``init``.
* The build and controller queries scripts branch on: ``mpi_built()``/``mpi_enabled()``
  are True (hvd_dc runs on MPI); ``gloo_built()``/``gloo_enabled()``, ``nccl_built()``
  (Horovod returns the NCCL version or 0), ``ddl_built()``, ``ccl_built()`` are false:
  hvd_dc has no Gloo, NCCL, DDL or oneCCL path (CUDA tensors are staged through host
  memory), so scripts take their CPU/MPI branches; ``cuda_built()``/``rocm_built()`` say
  whether torch itself was built for CUDA/ROCm (hvd_dc stages such tensors);
  ``mpi_threads_supported()`` is MPI's answer.
* ``is_homogeneous()``: every node runs the same number of workers.
* :class:`SyncBatchNorm`: batch statistics reduced over the workers on every forward
  pass in training mode (CPU and CUDA tensors); each forward and backward pass is a
  collective, so the workers run them in step.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from mpi4py import MPI
from torch.nn.modules.batchnorm import _BatchNorm

from .collectives import Sum, allgather_object, allreduce
from .context import current as context
from .negotiation import engine

__all__ = [
    "cross_rank", "cross_size", "is_homogeneous",
    "mpi_built", "mpi_enabled", "mpi_threads_supported", "gloo_built", "gloo_enabled",
    "nccl_built", "ddl_built", "ccl_built", "cuda_built", "rocm_built",
    "SyncBatchNorm",
]


def cross_rank() -> int:
    """This worker's rank among the workers that have its local rank (its node's index
    when every node runs the same number of workers)."""
    return engine(context()).cross_rank


def cross_size() -> int:
    """How many workers have this worker's local rank (the number of nodes when every
    node runs the same number of workers)."""
    return engine(context()).cross_size


def is_homogeneous() -> bool:
    """True when every node runs the same number of workers (a collective)."""
    sizes = allgather_object(context().local.Get_size(), name="is_homogeneous")
    return len(set(sizes)) == 1


def mpi_built() -> bool:
    """True: hvd_dc runs on MPI (mpi4py)."""
    return True


def mpi_enabled() -> bool:
    """True: MPI is hvd_dc's controller."""
    return True


def mpi_threads_supported() -> bool:
    """Whether the MPI library was initialised with ``MPI_THREAD_MULTIPLE``."""
    return MPI.Query_thread() == MPI.THREAD_MULTIPLE


def gloo_built() -> bool:
    """False: hvd_dc has no Gloo controller."""
    return False


def gloo_enabled() -> bool:
    """False: hvd_dc has no Gloo controller."""
    return False


def nccl_built() -> int:
    """0 (Horovod returns the NCCL version it was built with): hvd_dc has no NCCL path."""
    return 0


def ddl_built() -> bool:
    """False: no IBM DDL path."""
    return False


def ccl_built() -> bool:
    """False: no oneCCL path."""
    return False


def cuda_built() -> bool:
    """Whether torch was built with CUDA (hvd_dc stages CUDA tensors through host memory)."""
    return torch.version.cuda is not None


def rocm_built() -> bool:
    """Whether torch was built with ROCm."""
    return getattr(torch.version, "hip", None) is not None


class SyncBatchNorm(_BatchNorm):
    """Horovod's ``SyncBatchNorm``: in training mode the batch mean and variance are those
    of the union of every worker's batch (sums reduced over the workers on each forward
    pass; the backward pass reduces the gradients of those sums), on CPU or CUDA tensors.
    In eval mode, or with one worker, it is ``BatchNorm``. Arguments are BatchNorm's, so
    it works as ``norm_layer=hvd.SyncBatchNorm`` in torchvision models."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked)
        if not self.training and self.track_running_stats:
            return F.batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias, False,
                                momentum, self.eps)
        if context().workers.Get_size() == 1:
            return F.batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias, True,
                                momentum, self.eps)
        dims = [0] + list(range(2, input.dim()))
        x = input if input.dtype in (torch.float32, torch.float64) else input.float()
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        stats = torch.cat([x.sum(dims), (x * x).sum(dims), count])
        stats = allreduce(stats, op=Sum, name=None)
        c = x.shape[1]
        total = stats[2 * c]
        mean = stats[:c] / total
        var = (stats[c: 2 * c] / total - mean * mean).clamp_min(0)
        if self.training and self.track_running_stats:
            with torch.no_grad():
                unbiased = var * (total / (total - 1)) if float(total) > 1 else var
                self.running_mean.mul_(1 - momentum).add_(mean.detach().to(self.running_mean.dtype), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.detach().to(self.running_var.dtype), alpha=momentum)
        shape = [1, c] + [1] * (input.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(input.dtype)

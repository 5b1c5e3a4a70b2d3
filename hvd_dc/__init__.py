"""hvd_dc: Delay-Compensated Asynchronous SGD (DC-ASGD) behind a Horovod-shaped API.

Public API, flat as in ``horovod.torch``::

    import hvd_dc as hvd             # was: import horovod.torch as hvd
    hvd.init()                       # world rank 0 becomes the parameter server
    opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters())  # = DistributedDCOptimizer

Module map (each module's docstring says what it owns):

* :mod:`hvd_dc.dc_math`      pure delay-compensation math, no MPI
* :mod:`hvd_dc.staleness`    staleness policies (damping stale gradients), no MPI
* :mod:`hvd_dc.async_momentum` momentum under asynchrony: DANA, the lowered-momentum baseline, no MPI
* :mod:`hvd_dc.divergence`   noticing a diverging run and naming its likely cause, no MPI
* :mod:`hvd_dc.kernels`      the fused C kernels of the server's update
* :mod:`hvd_dc.layout`       flat-buffer layout, model description and comparison
* :mod:`hvd_dc.protocol`     the worker/server contract: tags, messages, windows
* :mod:`hvd_dc.handshake`    start-up: agreeing on a model and registering it
* :mod:`hvd_dc.server_state` Algorithm 2 on the server's buffers, no MPI
* :mod:`hvd_dc.server`       the server loop on world rank 0
* :mod:`hvd_dc.worker`       the worker's optimizer and its step path
* :mod:`hvd_dc.worker_buffers` the model's parameters and gradients in flat buffers
* :mod:`hvd_dc.devices`, :mod:`hvd_dc.staging` devices; CUDA models staged through host memory
* :mod:`hvd_dc.runtime`      init/shutdown, roles, ranks; :mod:`hvd_dc.context` what init set up
* :mod:`hvd_dc.settings`     every ``HVD_DC_*`` variable, read once at init
* :mod:`hvd_dc.waiting`      every wait on another rank: bounded, naming the rank
* :mod:`hvd_dc.collectives`  Horovod's collectives among the workers, one family per module, and
  process sets; :mod:`hvd_dc.negotiation` the members' agreement before each (matched by name,
  mismatch errors on every member, bounded waits)
* :mod:`hvd_dc.weights_sync` broadcast_parameters after wrapping: the server takes the weights
* :mod:`hvd_dc.optimizer_options` Horovod's DistributedOptimizer keywords (op, ...) for async pushes
* :mod:`hvd_dc.horovod_compat` SyncBatchNorm, cross ranks, *_built() queries; :mod:`hvd_dc.elastic` (refused)
* :mod:`hvd_dc.harness`      ``hvd_dc.run(fn, np=...)``, Horovod's ``horovod.run`` (:mod:`hvd_dc.run_child`)
* :mod:`hvd_dc.checkpoint`   the server's atomic checkpoints
* :mod:`hvd_dc.stats`        staleness record and histogram statistics
* :mod:`hvd_dc.interop`      the workers' communicator for Horovod; :mod:`hvd_dc.horovod` ports a Horovod script
* :mod:`hvd_dc.metrics`      server/worker staleness statistics, JSONL and TensorBoard output
* :mod:`hvd_dc.report`       ``python -m hvd_dc.report METRICS.jsonl``: PNG plots
* :mod:`hvd_dc.launch`       ``hvd-dc-run``: launcher flags, environment; :mod:`hvd_dc.host_checks` /dev/shm, world size
* :mod:`hvd_dc.install_horovod` ``hvd-dc-install-horovod``: Horovod 0.28.1 built with C++17
"""

from __future__ import annotations

from . import elastic
from .collectives import (
    Adasum,
    Average,
    Max,
    Min,
    ProcessSet,
    ProcessSetError,
    Product,
    ReduceOp,
    Sum,
    add_process_set,
    allgather,
    allgather_async,
    allgather_object,
    allreduce,
    allreduce_,
    allreduce_async,
    allreduce_async_,
    alltoall,
    alltoall_async,
    barrier,
    broadcast,
    broadcast_,
    broadcast_async,
    broadcast_async_,
    broadcast_object,
    broadcast_optimizer_state,
    broadcast_parameters,
    global_process_set,
    grouped_allgather,
    grouped_allgather_async,
    grouped_allreduce,
    grouped_allreduce_,
    grouped_allreduce_async,
    grouped_allreduce_async_,
    grouped_reducescatter,
    grouped_reducescatter_async,
    join,
    poll,
    reducescatter,
    reducescatter_async,
    remove_process_set,
    sparse_allreduce_async,
    synchronize,
)
from .compression import Compression
from .divergence import DivergenceWarning
from .harness import run
from .horovod_compat import (
    SyncBatchNorm,
    ccl_built,
    cross_rank,
    cross_size,
    cuda_built,
    ddl_built,
    gloo_built,
    gloo_enabled,
    is_homogeneous,
    mpi_built,
    mpi_enabled,
    mpi_threads_supported,
    nccl_built,
    rocm_built,
)
from .interop import worker_comm
from .negotiation import CollectiveMismatch
from .runtime import init, is_initialized, local_rank, local_size, rank, shutdown, size
from .waiting import HorovodInternalError, HvdDcTimeout
from .worker import DistributedDCOptimizer, DistributedOptimizer

__version__ = "0.1.0"

__all__ = [
    "init", "shutdown", "is_initialized", "size", "rank", "local_rank", "local_size", "cross_rank", "cross_size",
    "is_homogeneous", "worker_comm", "run",
    "mpi_built", "mpi_enabled", "mpi_threads_supported", "gloo_built", "gloo_enabled", "nccl_built", "ddl_built",
    "ccl_built", "cuda_built", "rocm_built",
    "barrier", "join", "poll", "synchronize",
    "allreduce", "allreduce_", "allreduce_async", "allreduce_async_",
    "grouped_allreduce", "grouped_allreduce_", "grouped_allreduce_async", "grouped_allreduce_async_",
    "allgather", "allgather_async", "grouped_allgather", "grouped_allgather_async", "allgather_object",
    "broadcast", "broadcast_", "broadcast_async", "broadcast_async_", "broadcast_object",
    "alltoall", "alltoall_async",
    "reducescatter", "reducescatter_async", "grouped_reducescatter", "grouped_reducescatter_async",
    "sparse_allreduce_async",
    "broadcast_parameters", "broadcast_optimizer_state",
    "ProcessSet", "global_process_set", "add_process_set", "remove_process_set", "ProcessSetError",
    "Compression", "DistributedOptimizer", "DistributedDCOptimizer", "SyncBatchNorm", "elastic",
    "ReduceOp", "Average", "Sum", "Min", "Max", "Product", "Adasum",
    "HorovodInternalError", "HvdDcTimeout", "CollectiveMismatch", "DivergenceWarning",
    "__version__",
]

"""Horovod's collectives among the workers (the server takes no part), with Horovod's
signatures, dtype handling, asynchronous handles, autograd and process sets.

One family of collectives per module; what they share is written once:

* :mod:`.ops`            reduction ops (``Average``, ``Sum``, ...), dtype rules, host copies
* :mod:`.handles`        submitting a collective, ``poll``, ``synchronize``; every wait keeps
  every process set moving
* :mod:`.process_sets`   ``ProcessSet``, ``add_process_set``, ``remove_process_set``,
  ``global_process_set``, and the one check of every ``process_set=`` argument
* :mod:`.allreduce`      ``allreduce(_)(_async)``, ``grouped_allreduce(_)(_async)``
* :mod:`.allgather`      ``allgather(_async)``, ``grouped_allgather(_async)``, ``allgather_object``
* :mod:`.broadcast`      ``broadcast(_)(_async)``, ``broadcast_object``
* :mod:`.alltoall`       ``alltoall(_async)``
* :mod:`.reducescatter`  ``reducescatter(_async)``, ``grouped_reducescatter(_async)``
* :mod:`.sparse`         ``sparse_allreduce_async``
* :mod:`.join`           ``barrier``, ``join``
* :mod:`.model_state`    ``broadcast_parameters``, ``broadcast_optimizer_state``

Each call is first agreed on by the members of its process set
(:mod:`hvd_dc.negotiation`): a member that passes another shape, dtype, device, op, root
rank or name than the others, or calls another collective, gets
:class:`~hvd_dc.negotiation.CollectiveMismatch` (a ``HorovodInternalError``, so a
``RuntimeError``) on every member at once, naming the tensor and the two workers; a
member that does not arrive within ``HVD_DC_TIMEOUT`` is named in an
:class:`~hvd_dc.waiting.HvdDcTimeout` raised on every member that did. Local argument
errors (a bad ``root_rank``, ``splits``, an unsupported dtype, a name already in flight)
are ``ValueError`` before anything is sent, as in Horovod; a process set this worker is
not in, or one never added, is a :class:`~.process_sets.ProcessSetError`.

Dtypes: ``uint8``, ``int8``, ``int16``, ``int32``, ``int64``, ``float16``, ``bfloat16``,
``float32``, ``float64`` (and ``bool`` for the data-moving collectives). As in Horovod,
integers are scaled (``prescale_factor``, ``postscale_factor``, ``Average``) in float64 and
cast back (truncating); 16-bit floats are reduced and scaled in float32 and rounded back.

Training never calls these: gradients go through the parameter server. The exception is
``broadcast_parameters`` after the optimizer is wrapped: when it overwrites served
parameters, the server's master weights become the broadcast ones too
(:mod:`hvd_dc.weights_sync`).
"""

from __future__ import annotations

from .allgather import allgather, allgather_async, allgather_object, grouped_allgather, grouped_allgather_async
from .allreduce import (
    allreduce,
    allreduce_,
    allreduce_async,
    allreduce_async_,
    grouped_allreduce,
    grouped_allreduce_,
    grouped_allreduce_async,
    grouped_allreduce_async_,
)
from .alltoall import alltoall, alltoall_async
from .broadcast import broadcast, broadcast_, broadcast_async, broadcast_async_, broadcast_object
from .handles import poll, synchronize
from .join import barrier, join
from .model_state import broadcast_optimizer_state, broadcast_parameters
from .ops import Adasum, Average, Max, Min, Product, ReduceOp, Sum
from .process_sets import (
    ProcessSet,
    ProcessSetError,
    add_process_set,
    global_process_set,
    is_global,
    remove_process_set,
)
from .reducescatter import grouped_reducescatter, grouped_reducescatter_async, reducescatter, reducescatter_async
from .sparse import sparse_allreduce_async

__all__ = [
    "ReduceOp", "Average", "Sum", "Min", "Max", "Product", "Adasum",
    "ProcessSet", "ProcessSetError", "global_process_set", "add_process_set", "remove_process_set", "is_global",
    "allreduce", "allreduce_", "allreduce_async", "allreduce_async_",
    "grouped_allreduce", "grouped_allreduce_", "grouped_allreduce_async", "grouped_allreduce_async_",
    "allgather", "allgather_async", "grouped_allgather", "grouped_allgather_async",
    "broadcast", "broadcast_", "broadcast_async", "broadcast_async_",
    "alltoall", "alltoall_async",
    "reducescatter", "reducescatter_async", "grouped_reducescatter", "grouped_reducescatter_async",
    "sparse_allreduce_async",
    "poll", "synchronize", "join", "barrier",
    "allgather_object", "broadcast_object", "broadcast_parameters", "broadcast_optimizer_state",
]

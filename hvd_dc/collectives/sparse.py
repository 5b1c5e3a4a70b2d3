"""Sparse allreduce among the workers of a process set: ``sparse_allreduce_async``.

As in Horovod, a sparse (COO) tensor is reduced by gathering: every member's indices and
values are allgathered (two collectives, named ``<name>.indices`` and ``<name>.values``)
and the result is the uncoalesced sparse tensor holding all of them, whose dense value
is the sum over the members (divided by the set's size for ``Average``). The handle is a
function that waits for both and returns that tensor (``hvd.synchronize(handle)`` calls
it too).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from .allgather import submit_allgather
from .handles import synchronize
from .ops import Average, ReduceOp, resolve_op
from .process_sets import global_process_set, resolve

__all__ = ["sparse_allreduce_async"]


def sparse_allreduce_async(tensor: torch.Tensor, name: Optional[str] = None, op: Any = Average,
                           process_set: Any = global_process_set) -> Callable[[], torch.Tensor]:
    """Start reducing the sparse COO ``tensor`` over the members of ``process_set``
    (``Average`` or ``Sum``); returns a function that waits and returns the reduced
    sparse tensor (uncoalesced: every member's entries; ``.to_dense()`` or
    ``.coalesce()`` sums them)."""
    if not isinstance(tensor, torch.Tensor) or tensor.layout != torch.sparse_coo:
        raise ValueError(f"hvd_dc.sparse_allreduce_async takes a sparse COO tensor; got "
                         f"{tensor.layout if isinstance(tensor, torch.Tensor) else type(tensor).__name__} "
                         "(use allreduce for dense tensors)")
    op = resolve_op(None, op)
    if op not in (ReduceOp.AVERAGE, ReduceOp.SUM):
        raise ValueError(f"hvd_dc.sparse_allreduce_async supports op=Average or op=Sum; got {op}")
    eng = resolve(process_set, "sparse_allreduce_async")
    # allgather concatenates along the first dimension, so the indices travel as rows
    indices = tensor._indices().transpose(0, 1).contiguous()
    values = tensor._values()
    named = (lambda part: f"{name}.{part}") if name is not None else (lambda part: None)
    indices_handle = submit_allgather(eng, [indices], named("indices"), "allgather", single=True)
    values_handle = submit_allgather(eng, [values], named("values"), "allgather", single=True)

    def handle() -> torch.Tensor:
        gathered_values = synchronize(values_handle)
        gathered_indices = synchronize(indices_handle)
        if op == ReduceOp.AVERAGE:
            gathered_values = gathered_values / eng.size
        return torch.sparse_coo_tensor(gathered_indices.transpose(0, 1), gathered_values, tensor.size(),
                                       check_invariants=True)

    return handle

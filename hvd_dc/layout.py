"""Flat-buffer layout of a model, its wire description, and model comparison (no MPI).

A model is described by :class:`ModelSpec`: every trained parameter's name, shape and
dtype, the optimizer group it belongs to, and the wrapped optimizer's class and
hyperparameters. Both sides derive the same :class:`FlatLayout` from it:

* parameters are ordered by (optimizer group, dtype), keeping the user's order inside,
  so every (group, dtype) pair is one contiguous *segment*;
* each segment starts on a 64-byte boundary inside one byte buffer, so a whole model
  moves with a single Put or Get and each segment can be viewed as a typed 1-D tensor;
* the same layout, with 16-bit wire dtypes when fp16 compression is on, describes the
  gradient area of the window.

The worker binds each ``param.data`` and ``param.grad`` to views of its flat buffers; the
server runs the optimizer on one flat tensor per segment (or per parameter, for
optimizers that are not element-wise). :func:`diff_specs` turns a disagreement between
workers into a message that names the first parameter that differs.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .dc_math import DCOptions
from .settings import DEFAULT_CHUNK_BYTES

__all__ = [
    "ALIGN",
    "ELEMENTWISE_OPTIMIZERS",
    "align_up",
    "ParamInfo",
    "ModelSpec",
    "Segment",
    "FlatLayout",
    "dtype_name",
    "dtype_from_name",
    "diff_specs",
    "resolve_class",
    "scalar_hyperparameters",
]

#: Optimizer classes whose update of an element depends only on that element's own
#: gradient and state (exactly these classes, not subclasses), so running them on a flat
#: concatenation, or any slice of one, is exact.
ELEMENTWISE_OPTIMIZERS = tuple(
    getattr(torch.optim, name)
    for name in ("SGD", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop", "Adagrad", "Adadelta", "Rprop", "ASGD")
    if hasattr(torch.optim, name)
)

#: Alignment of every segment and area, in bytes (one cache line, enough for any dtype).
ALIGN = 64

_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}


def dtype_name(dtype: torch.dtype) -> str:
    """Short name of a floating dtype as carried in the spec ('float32', ...)."""
    for name, dt in _DTYPES.items():
        if dt == dtype:
            return name
    raise TypeError(
        f"hvd_dc trains floating-point parameters of dtype float16, bfloat16, float32 or float64; got {dtype}"
    )


def dtype_from_name(name: str) -> torch.dtype:
    return _DTYPES[name]


def align_up(n: int) -> int:
    """``n`` rounded up to a multiple of :data:`ALIGN`."""
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclasses.dataclass(frozen=True)
class ParamInfo:
    name: str
    shape: Tuple[int, ...]
    dtype: str
    group: int

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclasses.dataclass
class ModelSpec:
    """What the server must know to serve a model; sent by worker 0 at registration.

    ``params`` is in the user's order (the optimizer's param groups, in order). ``groups``
    holds each group's hyperparameters without ``params``. ``hyper_slots`` lists the
    float-valued hyperparameters, ``(group, key, index)``, that workers send with every
    push so that lr schedulers on the workers drive the server's optimizer. ``staging`` is
    the workers' ``HVD_DC_STAGING``, which the server follows. ``elementwise`` says whether
    the optimizer's class is in :data:`ELEMENTWISE_OPTIMIZERS`, and ``chunk_bytes`` how the
    model is cut into chunks (:mod:`hvd_dc.chunks`).
    """

    params: List[ParamInfo]
    optimizer_class: Tuple[str, str]
    defaults: Dict[str, Any]
    groups: List[Dict[str, Any]]
    hyper_slots: List[Tuple[int, str, int]]
    dc: DCOptions
    compression: str
    num_workers: int
    checkpoint_path: Optional[str] = None
    checkpoint_every_updates: Optional[int] = None
    checkpoint_every_seconds: Optional[float] = None
    server_device: str = "auto"
    staging: str = "auto"
    elementwise: bool = True
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    #: options only the workers act on (``DistributedOptimizer``'s ``op``,
    #: ``gradient_predivide_factor``, ``lr_scaling``), compared at registration like the rest
    worker_options: Dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_optimizer(
        cls,
        optimizer: torch.optim.Optimizer,
        num_workers: int,
        *,
        params: Optional[Sequence[Tuple[torch.Tensor, int]]] = None,
        names: Optional[Sequence[str]] = None,
        dc: Optional[DCOptions] = None,
        compression: str = "none",
        checkpoint_path: Optional[str] = None,
        checkpoint_every_updates: Optional[int] = None,
        checkpoint_every_seconds: Optional[float] = None,
        server_device: str = "auto",
        staging: str = "auto",
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        worker_options: Optional[Dict[str, Any]] = None,
    ) -> "ModelSpec":
        """The spec of ``optimizer``'s model. ``params``: the ``(parameter, group index)``
        pairs to serve (default: every parameter of every group); ``names``: theirs
        (default ``param.<group>.<i>``, ``i`` counting the served parameters)."""
        if params is None:
            params = [(p, gi) for gi, group in enumerate(optimizer.param_groups) for p in group["params"]]
        if names is None:
            names = [f"param.{gi}.{i}" for i, (_, gi) in enumerate(params)]
        return cls(
            params=[ParamInfo(n, tuple(p.shape), dtype_name(p.dtype), gi) for (p, gi), n in zip(params, names)],
            optimizer_class=(type(optimizer).__module__, type(optimizer).__qualname__),
            defaults=dict(optimizer.defaults),
            groups=[{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups],
            hyper_slots=scalar_hyperparameters(optimizer.param_groups),
            dc=DCOptions() if dc is None else dc,
            compression=compression,
            num_workers=num_workers,
            checkpoint_path=checkpoint_path,
            checkpoint_every_updates=checkpoint_every_updates,
            checkpoint_every_seconds=checkpoint_every_seconds,
            server_device=server_device,
            staging=staging,
            elementwise=type(optimizer) in ELEMENTWISE_OPTIMIZERS,
            chunk_bytes=chunk_bytes,
            worker_options=dict(worker_options or {}),
        )

    def layout(self) -> "FlatLayout":
        """The flat layout both sides derive from this spec."""
        return FlatLayout(self.params, wire_fp16=self.compression == "fp16")

    def agreed_options(self) -> Dict[str, Any]:
        """The options every worker must pass alike, under their argument names."""
        return {
            **self.dc.as_arguments(),
            "compression": self.compression,
            "checkpoint_path": self.checkpoint_path,
            "checkpoint_every_updates": self.checkpoint_every_updates,
            "checkpoint_every_seconds": self.checkpoint_every_seconds,
            "server_device": self.server_device,
            "HVD_DC_STAGING": self.staging,
            "chunk_bytes": self.chunk_bytes,
        }


@dataclasses.dataclass(frozen=True)
class Segment:
    """One contiguous run of same-group, same-dtype parameters inside a flat buffer."""

    group: int
    dtype: torch.dtype
    offset: int  # bytes from the start of the buffer
    numel: int
    param_indices: Tuple[int, ...]  # indices into ModelSpec.params, in buffer order
    param_offsets: Tuple[int, ...]  # element offsets of each parameter inside the segment

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty(0, dtype=self.dtype).element_size()


class FlatLayout:
    """Byte layout of a model: segments by (group, dtype), each 64-byte aligned.

    ``wire_dtype`` maps a parameter dtype to the dtype its gradient travels in (identity
    unless compression is on); :attr:`wire` is the layout of the gradient area.
    """

    def __init__(self, params: Sequence[ParamInfo], wire_fp16: bool = False) -> None:
        self.params = list(params)
        order: Dict[Tuple[int, str], List[int]] = {}
        for i, p in enumerate(self.params):
            order.setdefault((p.group, p.dtype), []).append(i)
        self.segments: List[Segment] = []
        self.wire_segments: List[Segment] = []
        offset = 0
        wire_offset = 0
        for (group, dname), idxs in sorted(order.items(), key=lambda kv: (kv[0][0], kv[0][1])):
            dtype = dtype_from_name(dname)
            wire_dtype = torch.float16 if (wire_fp16 and dtype in (torch.float32, torch.float64)) else dtype
            offs, n = [], 0
            for i in idxs:
                offs.append(n)
                n += self.params[i].numel
            seg = Segment(group, dtype, offset, n, tuple(idxs), tuple(offs))
            wseg = Segment(group, wire_dtype, wire_offset, n, tuple(idxs), tuple(offs))
            self.segments.append(seg)
            self.wire_segments.append(wseg)
            offset = align_up(offset + seg.nbytes)
            wire_offset = align_up(wire_offset + wseg.nbytes)
        self.nbytes = max(offset, ALIGN)
        self.wire_nbytes = max(wire_offset, ALIGN)
        self.numel = sum(s.numel for s in self.segments)

    def segment_views(self, buf: torch.Tensor, wire: bool = False) -> List[torch.Tensor]:
        """Typed 1-D views of each segment of the uint8 tensor ``buf``."""
        segs = self.wire_segments if wire else self.segments
        return [buf[s.offset : s.offset + s.nbytes].view(s.dtype) for s in segs]

    def param_views(self, buf: torch.Tensor, wire: bool = False) -> List[torch.Tensor]:
        """Views of ``buf`` shaped like each parameter, in ``self.params`` order."""
        out: List[Optional[torch.Tensor]] = [None] * len(self.params)
        segs = self.wire_segments if wire else self.segments
        for seg, flat in zip(segs, self.segment_views(buf, wire=wire)):
            for i, off in zip(seg.param_indices, seg.param_offsets):
                p = self.params[i]
                out[i] = flat[off : off + p.numel].view(p.shape)
        return out  # type: ignore[return-value]


def scalar_hyperparameters(groups: Sequence[Dict[str, Any]]) -> List[Tuple[int, str, int]]:
    """Slots ``(group, key, index)`` of every float hyperparameter (index -1: a scalar).

    Booleans, ints that are flags and non-numeric values are left out; tuples of floats
    (Adam's ``betas``) contribute one slot per element.
    """
    slots: List[Tuple[int, str, int]] = []
    for gi, group in enumerate(groups):
        for key in sorted(k for k in group if k != "params"):
            value = group[key]
            if isinstance(value, bool):
                continue
            if isinstance(value, float) or (isinstance(value, torch.Tensor) and value.numel() == 1):
                slots.append((gi, key, -1))
            elif isinstance(value, tuple) and value and all(
                isinstance(v, float) and not isinstance(v, bool) for v in value
            ):
                slots.extend((gi, key, j) for j in range(len(value)))
    return slots


def read_hyperparameters(groups: Sequence[Dict[str, Any]], slots, out) -> None:
    """Fill ``out`` (float64 array-like) with the current values of ``slots``."""
    for k, (gi, key, j) in enumerate(slots):
        v = groups[gi][key]
        out[k] = float(v if j < 0 else v[j])


def write_hyperparameters(groups: Sequence[Dict[str, Any]], slots, values) -> None:
    """Set ``slots`` of ``groups`` from ``values`` (inverse of :func:`read_hyperparameters`)."""
    for k, (gi, key, j) in enumerate(slots):
        v = float(values[k])
        group = groups[gi]
        if j < 0:
            cur = group[key]
            if isinstance(cur, torch.Tensor):
                cur.fill_(v)
            else:
                group[key] = v
        else:
            t = list(group[key])
            t[j] = v
            group[key] = tuple(t)


def resolve_class(module: str, qualname: str) -> type:
    """Import ``module`` and return ``qualname`` from it, with a clear error if missing."""
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        where = "the training script's __main__" if module == "__main__" else f"module {module!r}"
        raise RuntimeError(
            f"the parameter server cannot find optimizer class {qualname!r} in {where} ({exc}). "
            "The server stops inside hvd.init(), so define custom optimizer classes in an importable "
            "module, or above the hvd.init() call."
        ) from exc
    return obj


def diff_worker_options(reference: ModelSpec, other: ModelSpec, other_rank: int) -> Optional[str]:
    """A message naming the first difference in ``worker_options`` (``op``,
    ``gradient_predivide_factor``, ``lr_scaling``), or None."""
    theirs = other.worker_options
    for field, value in reference.worker_options.items():
        if theirs.get(field) != value:
            return f"{field} is {value!r} on worker 0 but {theirs.get(field)!r} on worker {other_rank}"
    return None


def diff_specs(reference: ModelSpec, other: ModelSpec, other_rank: int) -> Optional[str]:
    """A message naming the first difference between two workers' models, or None."""
    a, b = reference, other
    if a.optimizer_class != b.optimizer_class:
        return (
            f"worker 0 wraps optimizer {'.'.join(a.optimizer_class)} but worker {other_rank} wraps "
            f"{'.'.join(b.optimizer_class)}"
        )
    mine, theirs = a.agreed_options(), b.agreed_options()
    for field, value in mine.items():
        if theirs.get(field) != value:
            if field == "lr_scale":  # not a keyword: op and lr_scaling make it
                return (f"the server-side lr scale (from DistributedOptimizer's op and lr_scaling) is {value!r} on "
                        f"worker 0 but {theirs.get(field)!r} on worker {other_rank}: every worker must pass the same op "
                        "and lr_scaling")
            return f"{field} is {value!r} on worker 0 but {theirs.get(field)!r} on worker {other_rank}"
    if len(a.params) != len(b.params):
        names_a = {p.name for p in a.params}
        names_b = {p.name for p in b.params}
        only_a = sorted(names_a - names_b)[:3]
        only_b = sorted(names_b - names_a)[:3]
        detail = []
        if only_a:
            detail.append(f"only on worker 0: {', '.join(only_a)}")
        if only_b:
            detail.append(f"only on worker {other_rank}: {', '.join(only_b)}")
        return (
            f"worker 0 trains {len(a.params)} parameters but worker {other_rank} trains {len(b.params)}"
            + (f" ({'; '.join(detail)})" if detail else "")
        )
    for pa, pb in zip(a.params, b.params):
        if pa.name != pb.name:
            return f"parameter order differs: worker 0 has {pa.name!r} where worker {other_rank} has {pb.name!r}"
        if pa.shape != pb.shape:
            return (
                f"parameter {pa.name!r} has shape {list(pa.shape)} on worker 0 but {list(pb.shape)} "
                f"on worker {other_rank}"
            )
        if pa.dtype != pb.dtype:
            return f"parameter {pa.name!r} is {pa.dtype} on worker 0 but {pb.dtype} on worker {other_rank}"
        if pa.group != pb.group:
            return (
                f"parameter {pa.name!r} is in optimizer group {pa.group} on worker 0 but group {pb.group} "
                f"on worker {other_rank}"
            )
    if a.hyper_slots != b.hyper_slots:
        return f"the optimizer's param groups have different hyperparameter keys on worker 0 and worker {other_rank}"
    return None

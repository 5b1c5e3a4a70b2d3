"""How a model is cut into chunks and spread over the server ranks (no MPI).

The flat model (:class:`~hvd_dc.layout.FlatLayout`: one segment per optimizer group and
dtype) is cut into **chunks** of about ``chunk_bytes`` (default 4,096,000 bytes, BytePS's
partition size: big enough that per-chunk costs vanish, small enough that the last
layers' chunks leave while backward goes on; 0: one chunk per segment). A chunk never crosses a segment, so it has one
dtype and one group's hyperparameters. Chunks are the unit of everything on the wire and
on the server: a worker pushes a chunk as soon as backward has finished every gradient
in it, the chunk's server applies Algorithm 2 to it alone, and the worker pulls it. That
keeps Algorithm 2 exact element by element: each element's ``w_bak(m)`` is what worker
``m`` pulled of that element's chunk.

* For an **element-wise** optimizer (one whose update of an element depends only on that
  element's gradient and state: :data:`hvd_dc.layout.ELEMENTWISE_OPTIMIZERS`) a segment is cut at any
  multiple of 64 elements, into pieces as equal as possible.
* For any other optimizer (per-parameter norms, LARS/LAMB-style trust ratios, a custom
  class), chunks follow parameter boundaries: consecutive whole parameters up to
  ``chunk_bytes``, a larger parameter alone.

Chunks are assigned to the ``servers`` ranks balanced by bytes (largest first, to the
least loaded server; ties to the lower index), so both sides compute the same plan from
the same :class:`~hvd_dc.layout.ModelSpec`.
"""

from __future__ import annotations

import dataclasses
from typing import List, Tuple

import torch

from .layout import FlatLayout, ModelSpec, ParamInfo, dtype_name

__all__ = ["Chunk", "ChunkPlan", "chunk_spec"]

_ELEMENT_STEP = 64  # cut element-wise segments at multiples of 64 elements (64-byte aligned for any dtype)


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One chunk: elements ``[start, start + numel)`` of segment ``segment``."""

    index: int
    segment: int
    start: int
    numel: int
    offset: int  # bytes from the start of the model buffer
    nbytes: int
    wire_offset: int  # bytes from the start of the wire (gradient) buffer
    wire_nbytes: int
    params: Tuple[int, ...]  # indices of the parameters with elements in this chunk
    whole_params: bool  # the chunk is exactly these parameters (not a slice)
    server: int

    def param_infos(self, layout: FlatLayout) -> List[ParamInfo]:
        """The chunk as a model of its own: its whole parameters, or one flat slice."""
        if self.whole_params:
            return [layout.params[i] for i in self.params]
        seg = layout.segments[self.segment]
        return [ParamInfo(f"chunk{self.index}", (self.numel,), dtype_name(seg.dtype), seg.group)]


class ChunkPlan:
    """The chunks of ``layout`` and their servers."""

    @classmethod
    def for_spec(cls, spec: ModelSpec, servers: int) -> "ChunkPlan":
        """The plan both sides derive from a model's spec."""
        return cls(spec.layout(), spec.chunk_bytes, servers, spec.elementwise)

    def __init__(self, layout: FlatLayout, chunk_bytes: int, servers: int, elementwise: bool) -> None:
        if servers < 1:
            raise ValueError(f"the number of server ranks must be >= 1; got {servers}")
        if chunk_bytes < 0:
            raise ValueError(f"chunk_bytes must be >= 0; got {chunk_bytes}")
        self.layout = layout
        self.chunk_bytes = chunk_bytes
        self.servers = servers
        self.elementwise = elementwise
        pieces: List[Tuple[int, int, int, Tuple[int, ...], bool]] = []  # segment, start, numel, params, whole
        for si, seg in enumerate(layout.segments):
            if elementwise:
                pieces.extend(self._cut_elements(si, seg, chunk_bytes))
            else:
                pieces.extend(self._cut_params(si, seg, chunk_bytes))
        load = [0] * servers
        owner = [0] * len(pieces)
        sizes = [self._nbytes(layout.segments[p[0]], p[2]) for p in pieces]
        for i in sorted(range(len(pieces)), key=lambda i: (-sizes[i], i)):
            s = min(range(servers), key=lambda s: (load[s], s))
            owner[i] = s
            load[s] += sizes[i]
        self.load = load
        self.chunks: List[Chunk] = []
        for i, (si, start, numel, params, whole) in enumerate(pieces):
            seg, wseg = layout.segments[si], layout.wire_segments[si]
            el, wel = _element_size(seg.dtype), _element_size(wseg.dtype)
            self.chunks.append(Chunk(i, si, start, numel, seg.offset + start * el, numel * el,
                                     wseg.offset + start * wel, numel * wel, params, whole, owner[i]))
        self._param_chunks: List[List[int]] = [[] for _ in layout.params]
        for c in self.chunks:
            for p in c.params:
                self._param_chunks[p].append(c.index)

    @staticmethod
    def _nbytes(seg, numel: int) -> int:
        return numel * _element_size(seg.dtype)

    @staticmethod
    def _cut_elements(si: int, seg, chunk_bytes: int):
        el = _element_size(seg.dtype)
        n = seg.numel
        pieces = 1 if chunk_bytes == 0 else max(1, -(-n * el // chunk_bytes))
        step = -(-n // pieces)
        step = -(-step // _ELEMENT_STEP) * _ELEMENT_STEP
        out = []
        ends = list(seg.param_offsets[1:]) + [seg.numel]
        for start in range(0, n, step):
            numel = min(step, n - start)
            params = tuple(i for i, off, end in zip(seg.param_indices, seg.param_offsets, ends)
                           if off < start + numel and end > start)
            out.append((si, start, numel, params, False))
        return out

    @staticmethod
    def _cut_params(si: int, seg, chunk_bytes: int):
        el = _element_size(seg.dtype)
        out, group, start, size = [], [], 0, 0
        ends = list(seg.param_offsets[1:]) + [seg.numel]
        for i, off, end in zip(seg.param_indices, seg.param_offsets, ends):
            n = end - off
            if group and chunk_bytes and (size + n) * el > chunk_bytes:
                out.append((si, start, size, tuple(group), True))
                group, start, size = [], off, 0
            group.append(i)
            size += n
        if group:
            out.append((si, start, size, tuple(group), True))
        return out

    def of_server(self, server: int) -> List[Chunk]:
        """The chunks server ``server`` owns, in index order."""
        return [c for c in self.chunks if c.server == server]

    def of_param(self, param: int) -> List[int]:
        """Indices of the chunks holding elements of parameter ``param``."""
        return self._param_chunks[param]

    def describe(self) -> List[List[int]]:
        """Plain data naming every chunk (for checkpoints): segment, start, numel, server."""
        return [[c.segment, c.start, c.numel, c.server] for c in self.chunks]


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def chunk_spec(spec: ModelSpec, chunk: Chunk) -> ModelSpec:
    """``spec`` with the chunk as the whole model: what the chunk's server state serves."""
    return dataclasses.replace(spec, params=chunk.param_infos(spec.layout()))

"""The contract between workers and the parameter servers: ranks, tags, messages, windows.

Everything both sides must agree on lives here, so that neither :mod:`hvd_dc.server` nor
:mod:`hvd_dc.worker` knows a tag number, a message's shape or a word offset. It knows
nothing of DC math or optimizers. The design and the MPI facts behind it are in
``docs/DESIGN.md``.

Ranks (:class:`Topology`)
=========================
World ranks ``0 .. S-1`` serve (``S`` = ``HVD_DC_SERVERS``, default 1); worker ``m`` is
world rank ``S + m``. The model is cut into chunks (:mod:`hvd_dc.chunks`), each owned by
one server rank.

Two-sided messages (pickled, on the job's world communicator unless said otherwise)
=================================================================================
==================  ======================  ===============================================
tag                 direction               message
==================  ======================  ===============================================
``CONTROL``         worker -> every server  :class:`Register` (worker 0, once per model),
                                            :class:`Goodbye` (every worker, at shutdown),
                                            :class:`Abort` (worker 0: the job cannot start),
                                            :class:`SetWeights` (worker 0, from
                                            ``broadcast_parameters``)
``WEIGHTS``         worker 0 -> each server the initial weights, raw bytes, model layout
                                            (also after :class:`SetWeights`)
``REGISTERED``      each server -> worker   :class:`Registration` (accepted or refused),
                                            :class:`WeightsSet`
``MODEL_CHECK``     workers' communicator   each worker's ``ModelSpec`` to worker 0, then
                                            a :class:`ModelCheck` back to each
``AGREE``           every rank <-> rank 0   at ``init``: each rank's :class:`RankSettings`,
                                            then rank 0's verdict (a string or None)
``PROGRESS``        never sent              a server's standing receive, tested to drive
                                            MPI progress (docs/DESIGN.md)
==================  ======================  ===============================================

Windows (one-sided), made with ``Win.Allocate`` over the world; only servers hold memory
====================================================================================
On server ``s``, for worker ``m`` and each chunk ``j`` that ``s`` owns (``J`` chunks):

* **control window** (``int64``): per worker a block of ``2J`` words, padded to 64 bytes:
  ``push_seq[m][j]`` for every ``j``, then ``reply_seq[m][j]`` for every ``j``. Only
  atomics touch it (``Fetch_and_op``, ``Get_accumulate``), so a word is never read torn,
  and one ``Get_accumulate`` reads all of a server's words for a worker or for all workers.
* **data window** (bytes), per (worker, chunk)::

      push area : header (int64 x 8) | hyperparameters (float64 x H) | gradient chunk (wire dtype)
      reply area: header (int64 x 8) | weights chunk

  push header: ``[kind, seq]``; reply header: ``[seq, status, updates, staleness,
  rejected]`` (:class:`Reply`). Every area starts on a 64-byte boundary.

Invariants (what makes it exact without a lock), per (worker, chunk)
--------------------------------------------------------------------
1. A worker's requests are numbered 1, 2, 3, ...; every request goes to every chunk (a
   push, or a pull that only asks for the weights). The worker publishes request ``s`` of
   a chunk by raising ``push_seq`` to ``s`` only after its ``Put`` of the push area
   completed (``Flush``), and writes that push area again only after it read reply ``s``.
2. The server reads a push area only after it saw its ``push_seq`` move (and a
   ``Win.Sync``), answers each request exactly once, in order, and raises ``reply_seq``
   to ``s`` only after the reply area is written (``Win.Sync``). It writes that reply
   area again only for request ``s + 1``.
3. So each area has one writer and one reader at a time, handed over through the sequence
   words: no read is torn, nothing is applied twice or lost. A sequence that jumps is a
   :class:`ProtocolError`.
4. The reply area is the chunk's ``w_bak(m)`` of Algorithm 2: the server writes its new
   weights there and the worker computes its next gradient on exactly those bytes.

A worker holds one ``Lock_all(MODE_NOCHECK)`` epoch for its lifetime and never locks.
Whether its operations complete while a server computes depends on the transport
(shared memory and RDMA hardware: yes; TCP: only when that server enters MPI), see
``docs/DESIGN.md``.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from mpi4py import MPI

from .chunks import Chunk, ChunkPlan
from .layout import FlatLayout, ModelSpec, align_up
from .waiting import wait_until

__all__ = [
    "Topology",
    "Tag",
    "Register",
    "Goodbye",
    "Abort",
    "Registration",
    "ModelCheck",
    "RankSettings",
    "SetWeights",
    "WeightsSet",
    "RequestKind",
    "ReplyStatus",
    "Request",
    "Reply",
    "ProtocolError",
    "WindowLayout",
    "ServerWindows",
    "WorkerChannel",
]


@dataclasses.dataclass(frozen=True)
class Topology:
    """Who serves and who works: world ranks ``0..servers-1`` serve, the rest work."""

    servers: int
    world_size: int

    @property
    def num_workers(self) -> int:
        return self.world_size - self.servers

    def world_rank(self, worker: int) -> int:
        """World rank of worker ``worker``."""
        return self.servers + worker

    def worker(self, world_rank: int) -> int:
        """Worker index of world rank ``world_rank`` (a worker's)."""
        return world_rank - self.servers

    @property
    def worker_ranks(self) -> range:
        return range(self.servers, self.world_size)

    @property
    def server_ranks(self) -> range:
        return range(self.servers)

    def name(self, worker: int) -> str:
        return f"worker {worker} (world rank {self.world_rank(worker)})"


class Tag(enum.IntEnum):
    CONTROL = 7701
    WEIGHTS = 7702
    REGISTERED = 7703
    MODEL_CHECK = 7704
    AGREE = 7705
    PROGRESS = 7706


# -- two-sided messages -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Register:
    """Worker 0 asks every server to serve a model (every rank follows into the window
    allocation, which is collective)."""

    spec: ModelSpec


@dataclasses.dataclass(frozen=True)
class Goodbye:
    """A worker is done; a server exits after the last one."""


@dataclasses.dataclass(frozen=True)
class Abort:
    """The job cannot start (models differ, a worker is missing): the servers stop."""

    reason: str


@dataclasses.dataclass(frozen=True)
class Registration:
    """One server's answer to :class:`Register`, sent to every worker.

    ``error`` is None when the server serves its chunks of the model. Then ``updates`` is
    its update count (pushes applied to its first chunk), ``pushes[m]`` worker ``m``'s
    pushes it has applied or rejected, ``rejected[m]`` how many it rejected and
    ``staleness[m]`` the staleness histogram of its first chunk (all zero or empty unless
    resuming from a checkpoint), and ``server_device`` says where its master weights live.
    """

    error: Optional[str] = None
    updates: int = 0
    pushes: Tuple[int, ...] = ()
    rejected: Tuple[int, ...] = ()
    staleness: Tuple[Dict[int, int], ...] = ()
    resumed_from: Optional[str] = None
    server_device: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclasses.dataclass(frozen=True)
class ModelCheck:
    """Worker 0's verdict on the workers' models: ``difference`` names the first one;
    ``missing`` says which workers did not arrive in time; ``options`` names the first
    difference in the options only the workers act on (the job then goes on)."""

    difference: Optional[str] = None
    missing: Optional[str] = None
    options: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class RankSettings:
    """What every rank must agree on before roles exist (checked at ``init``)."""

    servers: int
    chunk_bytes: int


@dataclasses.dataclass(frozen=True)
class SetWeights:
    """Worker 0 (``CONTROL``): replace served model ``model``'s weights (its index among the
    served models, in registration order) with the ``nbytes`` bytes that follow on
    ``WEIGHTS`` (model layout), as at registration. Sent by ``broadcast_parameters`` when
    it overwrote served parameters: every worker is in that collective, so no push is in
    flight. The server answers every worker with :class:`WeightsSet` on ``REGISTERED``."""

    model: int
    nbytes: int


@dataclasses.dataclass(frozen=True)
class WeightsSet:
    """The server's answer to :class:`SetWeights`: the master weights and every worker's
    ``w_bak(m)`` (its reply area) now hold the new weights, or ``error`` says why not."""

    error: Optional[str] = None



# -- one-sided requests and replies -------------------------------------------------------


class RequestKind(enum.IntEnum):
    PUSH = 1  # a gradient chunk, then the pull that follows it
    PULL = 2  # a pull only


class ReplyStatus(enum.IntEnum):
    OK = 0
    REJECTED_NONFINITE = 1  # the chunk had a NaN/Inf; the model was not changed by it


class Request(NamedTuple):
    """One request as a server sees it: views into a (worker, chunk) push area."""

    worker: int
    chunk: int  # index among this server's chunks
    seq: int
    kind: RequestKind
    hyper: np.ndarray  # float64 values of the optimizer's hyperparameter slots
    grad: List[torch.Tensor]  # the chunk's gradient, typed views (wire dtype; PUSH only)


class Reply(NamedTuple):
    """The header of a reply; the weights are in the reply area."""

    seq: int
    status: ReplyStatus
    updates: int  # updates applied to this chunk so far, all workers
    staleness: int  # updates by others between this worker's previous pull and this push
    rejected: int  # this worker's rejected pushes of this chunk so far


class ProtocolError(RuntimeError):
    """A peer broke an invariant of this module (a bug, never a user error)."""


HEADER_WORDS = 8  # int64 words at the head of each area
_REQ_KIND, _REQ_SEQ = 0, 1  # words of the push header
# the reply header is Reply's fields in order


class WindowLayout:
    """Byte offsets of every area on one server rank, for its chunks, ``num_hyper``
    hyperparameter slots and ``num_workers`` workers. The only place window sizes are
    computed."""

    def __init__(self, chunks: Sequence[Chunk], num_hyper: int, num_workers: int) -> None:
        self.chunks = list(chunks)
        self.num_hyper = num_hyper
        self.num_workers = num_workers
        header = HEADER_WORDS * 8
        self.push_hyper_offset = header
        self.push_grad_offset = align_up(header + 8 * num_hyper)
        self.reply_weights_offset = header
        self._push: List[int] = []
        self._reply: List[int] = []
        self.push_nbytes: List[int] = []
        self.reply_nbytes: List[int] = []
        slot = 0
        for c in self.chunks:
            self._push.append(slot)
            self.push_nbytes.append(align_up(self.push_grad_offset + c.wire_nbytes))
            slot += self.push_nbytes[-1]
            self._reply.append(slot)
            self.reply_nbytes.append(align_up(header + c.nbytes))
            slot += self.reply_nbytes[-1]
        self.slot_nbytes = slot
        self.data_nbytes = slot * num_workers
        n = len(self.chunks)
        self.ctrl_block_words = align_up(2 * n * 8) // 8 if n else 0
        self.ctrl_nbytes = self.ctrl_block_words * 8 * num_workers

    @classmethod
    def for_server(cls, spec: ModelSpec, plan: ChunkPlan, server: int, num_workers: int) -> "WindowLayout":
        return cls(plan.of_server(server), len(spec.hyper_slots), num_workers)

    @property
    def total_nbytes(self) -> int:
        """Bytes of both windows together (what the server's shared memory must hold)."""
        return self.data_nbytes + self.ctrl_nbytes

    def push_offset(self, m: int, j: int) -> int:
        return m * self.slot_nbytes + self._push[j]

    def reply_offset(self, m: int, j: int) -> int:
        return m * self.slot_nbytes + self._reply[j]

    def push_seq_word(self, m: int, j: int) -> int:
        return m * self.ctrl_block_words + j

    def reply_seq_word(self, m: int, j: int) -> int:
        return m * self.ctrl_block_words + len(self.chunks) + j


def _allocate(nbytes: int, disp_unit: int, comm: MPI.Comm, shm: bool) -> MPI.Win:
    """``Win.Allocate``; ``shm=False`` asks MPICH not to place it in shared memory."""
    if shm:
        return MPI.Win.Allocate(nbytes, disp_unit, comm=comm)
    info = MPI.Info.Create()
    info.Set("alloc_shm", "false")
    try:
        return MPI.Win.Allocate(nbytes, disp_unit, info, comm=comm)
    finally:
        info.Free()


def _as_uint8(win: MPI.Win, nbytes: int) -> torch.Tensor:
    if nbytes == 0:
        return torch.empty(0, dtype=torch.uint8)
    return torch.from_numpy(np.frombuffer(win.tomemory(), dtype=np.uint8, count=nbytes))


class ServerWindows:
    """One server's side: its windows, typed views of every area in them, and the
    request/reply handover of the invariants above. Construction is collective with the
    other servers' and the workers' (:class:`WorkerChannel`).

    ``chunk_layouts[j]``: the flat layout of chunk ``j`` as a model of its own (its
    gradient and weights are viewed through it).
    """

    def __init__(self, comm: MPI.Comm, topology: Topology, wl: WindowLayout,
                 chunk_layouts: Sequence[FlatLayout], shm: bool = True) -> None:
        self.comm = comm
        self.topology = topology
        self.wl = wl
        self.ctrl_win = _allocate(wl.ctrl_nbytes, 8, comm, shm)
        self.data_win = _allocate(wl.data_nbytes, 1, comm, shm)
        # the server's own lifetime epochs: Win.Sync and its self-atomics need them
        self.ctrl_win.Lock_all(MPI.MODE_NOCHECK)
        self.data_win.Lock_all(MPI.MODE_NOCHECK)
        self._epoch_open = True
        self.data = _as_uint8(self.data_win, wl.data_nbytes)
        self.data.zero_()
        ctrl = np.frombuffer(self.ctrl_win.tomemory(), dtype=np.int64, count=wl.ctrl_nbytes // 8) \
            if wl.ctrl_nbytes else np.zeros(0, dtype=np.int64)
        ctrl[:] = 0
        self.data_win.Sync()
        self.ctrl_win.Sync()
        self._me = comm.Get_rank()
        n_workers, n_chunks = wl.num_workers, len(wl.chunks)
        self._words = np.zeros(n_workers * wl.ctrl_block_words, dtype=np.int64)
        self._no_op_origin = np.zeros_like(self._words)  # ignored by NO_OP, must not alias the result
        self._push_seq = self._words.reshape(n_workers, wl.ctrl_block_words)[:, :n_chunks] if n_workers else \
            np.zeros((0, n_chunks), dtype=np.int64)
        self._one = np.zeros(1, dtype=np.int64)
        self._old = np.zeros(1, dtype=np.int64)
        #: the last request answered, per worker and chunk
        self.answered = np.zeros((n_workers, n_chunks), dtype=np.int64)
        self._push_header: List[List[np.ndarray]] = []
        self._hyper: List[List[np.ndarray]] = []
        self._grad: List[List[List[torch.Tensor]]] = []
        self._reply_header: List[List[np.ndarray]] = []
        #: worker m's reply area of chunk j: w_bak(m) of that chunk, and what m reads
        self.reply_weights: List[List[torch.Tensor]] = []
        for m in range(n_workers):
            ph, hy, gr, rh, rw = [], [], [], [], []
            for j, (c, cl) in enumerate(zip(wl.chunks, chunk_layouts)):
                p, r = wl.push_offset(m, j), wl.reply_offset(m, j)
                ph.append(self.data[p : p + HEADER_WORDS * 8].numpy().view(np.int64))
                h = p + wl.push_hyper_offset
                hy.append(self.data[h : h + 8 * wl.num_hyper].numpy().view(np.float64))
                g = p + wl.push_grad_offset
                gr.append(cl.segment_views(self.data[g : g + cl.wire_nbytes], wire=True))
                rh.append(self.data[r : r + HEADER_WORDS * 8].numpy().view(np.int64))
                w = r + wl.reply_weights_offset
                rw.append(self.data[w : w + cl.nbytes])
            self._push_header.append(ph)
            self._hyper.append(hy)
            self._grad.append(gr)
            self._reply_header.append(rh)
            self.reply_weights.append(rw)

    def pending(self) -> List[Tuple[int, int]]:
        """``(worker, chunk)`` pairs with a published request not yet answered. One atomic
        read of every ``push_seq``; when any is pending, the memory barrier before their
        push areas are read."""
        n = self._words.size
        if n == 0:
            return []
        self.ctrl_win.Get_accumulate(
            [self._no_op_origin, MPI.INT64_T], [self._words, MPI.INT64_T], self._me, target=(0, n, MPI.INT64_T),
            op=MPI.NO_OP,
        )
        self.ctrl_win.Flush(self._me)
        found = np.argwhere(self._push_seq != self.answered)
        if found.size:
            self.data_win.Sync()
        return [(int(m), int(j)) for m, j in found]

    def request(self, m: int, j: int) -> Request:
        """Worker ``m``'s pending request for chunk ``j`` (views into its push area)."""
        seq = int(self._push_seq[m, j])
        if seq != self.answered[m, j] + 1:
            raise ProtocolError(
                f"{self.topology.name(m)} jumped from request #{self.answered[m, j]} to #{seq} "
                f"(chunk {self.wl.chunks[j].index})"
            )
        header = self._push_header[m][j]
        try:
            kind = RequestKind(int(header[_REQ_KIND]))
        except ValueError:
            raise ProtocolError(f"{self.topology.name(m)} sent unknown request kind {int(header[_REQ_KIND])}") from None
        if int(header[_REQ_SEQ]) != seq:
            raise ProtocolError(f"{self.topology.name(m)}: request #{seq} carries header seq {int(header[_REQ_SEQ])}")
        return Request(m, j, seq, kind, self._hyper[m][j], self._grad[m][j])

    def reply(self, request: Request, reply: Reply) -> None:
        """Publish ``reply`` (its weights are already in the reply area): header, memory
        barrier, then ``reply_seq``; the request is answered."""
        m, j = request.worker, request.chunk
        self._reply_header[m][j][: len(reply)] = reply
        self.data_win.Sync()
        self._one[0] = request.seq
        self.ctrl_win.Fetch_and_op(self._one, self._old, self._me, self.wl.reply_seq_word(m, j), MPI.REPLACE)
        self.ctrl_win.Flush(self._me)
        self.answered[m, j] = request.seq

    def free(self) -> None:
        """Release the windows (collective with every rank's ``free``)."""
        if self._epoch_open:
            self.ctrl_win.Unlock_all()
            self.data_win.Unlock_all()
            self._epoch_open = False
        # drop every view of window memory before the memory goes away
        self._push_header = self._hyper = self._grad = self._reply_header = self.reply_weights = []
        self.data = None  # type: ignore[assignment]
        self.ctrl_win.Free()
        self.data_win.Free()


class WorkerChannel:
    """A worker's side of one served model: its local buffers and its requests to every
    server. Construction is collective with the servers' :class:`ServerWindows`.

    * :attr:`grad_area`: the model's gradient in the wire layout; a pushed chunk is ``Put``
      straight from its slice.
    * :attr:`weights`: two model-layout buffers. Replies are read into the one the model is
      *not* computing on (``target``), so that weights can arrive while backward still
      reads the others; the caller swaps them when a request is complete.

    A request goes to every chunk (:meth:`begin`, then :meth:`push` of each chunk, in any
    order, as soon as its gradient is final); :meth:`progress` reads the replies that are
    ready; :meth:`finish` waits for the rest. With ``pin_memory`` (CUDA workers) the
    buffers are page-locked, so device copies run asynchronously at full bus speed.
    """

    def __init__(self, comm: MPI.Comm, topology: Topology, plan: ChunkPlan, layouts: Sequence[WindowLayout],
                 worker: int, timeout: float, pin_memory: bool = False, double_buffer: bool = True,
                 shm: bool = True) -> None:
        self.comm = comm
        self.topology = topology
        self.plan = plan
        self.layouts = list(layouts)
        self.worker = worker
        self.timeout = timeout
        self.ctrl_win = _allocate(0, 8, comm, shm)
        self.data_win = _allocate(0, 1, comm, shm)
        layout = plan.layout
        self.grad_area = torch.zeros(layout.wire_nbytes, dtype=torch.uint8, pin_memory=pin_memory)
        self.weights = [torch.zeros(layout.nbytes, dtype=torch.uint8, pin_memory=pin_memory)
                        for _ in range(2 if double_buffer else 1)]
        self._grad_np = self.grad_area.numpy()
        self._weights_np = [w.numpy() for w in self.weights]
        num_hyper = self.layouts[0].num_hyper if self.layouts else 0
        self.hyper = np.zeros(num_hyper, dtype=np.float64)
        n = len(plan.chunks)
        head = self.layouts[0].push_grad_offset if self.layouts else HEADER_WORDS * 8
        self._push_head = np.zeros((n, head), dtype=np.uint8)  # header | hyperparameters, per chunk
        self._reply_head = np.zeros((n, HEADER_WORDS), dtype=np.int64)
        # where each chunk lives: (server rank, index j on that server)
        self._where: List[Tuple[int, int]] = []
        index_on_server: Dict[int, int] = {}
        for c in plan.chunks:
            j = index_on_server.get(c.server, 0)
            index_on_server[c.server] = j + 1
            self._where.append((c.server, j))
        self._reply_seqs = [np.zeros(len(wl.chunks), dtype=np.int64) for wl in self.layouts]
        self._no_op = [np.zeros_like(r) for r in self._reply_seqs]
        self.seq = 0
        self._kind = RequestKind.PULL
        self._target = 0
        self._pushed = np.zeros(n, dtype=bool)
        self._fetched = np.ones(n, dtype=bool)
        self._val = np.zeros(1, dtype=np.int64)
        self._res = np.zeros(1, dtype=np.int64)
        self._epoch_open = False

    def open(self, target: int = 0) -> None:
        """Start this worker's lifetime passive epoch on the servers' windows and read every
        chunk's reply area, which holds the initial weights (``w_bak(m) = w_0``), into
        ``weights[target]``."""
        self.ctrl_win.Lock_all(MPI.MODE_NOCHECK)
        self.data_win.Lock_all(MPI.MODE_NOCHECK)
        self._epoch_open = True
        for c in self.plan.chunks:
            self._get_reply(c, target)
        for s in self.topology.server_ranks:
            self.data_win.Flush(s)

    # -- one request ------------------------------------------------------------------------

    def begin(self, kind: RequestKind, target: int) -> None:
        """Start request ``seq + 1`` of ``kind`` for every chunk; replies land in
        ``weights[target]``."""
        if not self._fetched.all():
            raise ProtocolError("a request began before the previous one was complete")
        self.seq += 1
        self._kind = kind
        self._target = target
        self._pushed[:] = False
        self._fetched[:] = False

    def pushed(self, c: int) -> bool:
        return bool(self._pushed[c])

    def push(self, c: int, kind: Optional[RequestKind] = None) -> None:
        """Send chunk ``c``'s part of the current request (its gradient slice must be final
        in :attr:`grad_area`). ``kind`` overrides the request's (a PULL for a chunk whose
        push this server already applied before a restart)."""
        chunk = self.plan.chunks[c]
        server, j = self._where[c]
        wl = self.layouts[server]
        kind = self._kind if kind is None else kind
        head = self._push_head[c]
        words = head[: HEADER_WORDS * 8].view(np.int64)
        words[_REQ_KIND] = kind
        words[_REQ_SEQ] = self.seq
        head[wl.push_hyper_offset : wl.push_hyper_offset + 8 * wl.num_hyper].view(np.float64)[:] = self.hyper
        target = wl.push_offset(self.worker, j)
        win = self.data_win
        win.Put([head, head.size, MPI.BYTE], server, target=target)
        if kind == RequestKind.PUSH and chunk.wire_nbytes:
            grad = self._grad_np[chunk.wire_offset : chunk.wire_offset + chunk.wire_nbytes]
            win.Put([grad, chunk.wire_nbytes, MPI.BYTE], server, target=target + wl.push_grad_offset)
        win.Flush(server)
        self._val[0] = self.seq
        self.ctrl_win.Fetch_and_op(self._val, self._res, server, wl.push_seq_word(self.worker, j), MPI.REPLACE)
        self.ctrl_win.Flush(server)
        self._pushed[c] = True

    def progress(self) -> int:
        """Read every reply that is ready (header and weights of its chunk); return how
        many chunks of the current request are still outstanding."""
        waiting = np.flatnonzero(self._pushed & ~self._fetched)
        if waiting.size == 0:
            return int((~self._fetched).sum())
        servers = sorted({self._where[c][0] for c in waiting.tolist()})
        for s in servers:
            wl = self.layouts[s]
            n = len(wl.chunks)
            base = wl.reply_seq_word(self.worker, 0)
            self.ctrl_win.Get_accumulate([self._no_op[s], MPI.INT64_T], [self._reply_seqs[s], MPI.INT64_T], s,
                                         target=(base, n, MPI.INT64_T), op=MPI.NO_OP)
            self.ctrl_win.Flush(s)
            got = False
            for c in waiting.tolist():
                server, j = self._where[c]
                if server == s and self._reply_seqs[s][j] == self.seq:
                    self._get_reply(self.plan.chunks[c], self._target)
                    self._fetched[c] = True
                    got = True
            if got:
                self.data_win.Flush(s)
        return int((~self._fetched).sum())

    def finish(self) -> np.ndarray:
        """Wait until every chunk's reply of the current request is read; return the reply
        headers (one row per chunk: :class:`Reply`'s fields). Raises
        :class:`~hvd_dc.waiting.HvdDcTimeout` naming the servers that did not answer."""
        if not self._pushed.all():
            raise ProtocolError("finish() before every chunk of the request was pushed")
        wait_until(lambda: self.progress() == 0, self.timeout, self._silent_servers)
        return self._reply_head

    def _silent_servers(self) -> str:
        missing = np.flatnonzero(~self._fetched).tolist()
        ranks = sorted({self._where[c][0] for c in missing})
        names = ", ".join(f"world rank {r}" for r in ranks)
        return (f"{self.topology.name(self.worker)}: the parameter server ({names}) did not answer request "
                f"#{self.seq} for {len(missing)} chunk(s) within {self.timeout:g} s (set HVD_DC_TIMEOUT to wait longer)")

    def _get_reply(self, chunk: Chunk, target: int) -> None:
        server, j = self._where[chunk.index]
        wl = self.layouts[server]
        where = wl.reply_offset(self.worker, j)
        self.data_win.Get([self._reply_head[chunk.index], HEADER_WORDS * 8, MPI.BYTE], server, target=where)
        if chunk.nbytes:
            dst = self._weights_np[target][chunk.offset : chunk.offset + chunk.nbytes]
            self.data_win.Get([dst, chunk.nbytes, MPI.BYTE], server, target=where + wl.reply_weights_offset)

    def free(self) -> None:
        """Release the windows (collective with the servers' :meth:`ServerWindows.free`)."""
        if self._epoch_open:
            self.ctrl_win.Unlock_all()
            self.data_win.Unlock_all()
            self._epoch_open = False
        self.ctrl_win.Free()
        self.data_win.Free()

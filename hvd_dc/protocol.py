"""The contract between workers and the parameter server: ranks, tags, messages, windows.

Everything both sides must agree on lives here, so that neither :mod:`hvd_dc.server` nor
:mod:`hvd_dc.worker` knows a tag number, a message's shape or a word offset. It knows
nothing of DC math or optimizers. The design and the MPI facts behind it are in
``docs/DESIGN.md``.

Ranks
=====
World rank ``SERVER_RANK`` (0) serves; worker ``m`` is world rank ``m + FIRST_WORKER_RANK``.

Two-sided messages (pickled, on the job's world communicator unless said otherwise)
=================================================================================
==================  ======================  ===============================================
tag                 direction               message
==================  ======================  ===============================================
``CONTROL``         worker -> server        :class:`Register` (worker 0, once per model),
                                            :class:`Goodbye` (every worker, at shutdown),
                                            :class:`Abort` (worker 0: the job cannot start),
                                            :class:`SetWeights` (worker 0, from
                                            ``broadcast_parameters``)
``WEIGHTS``         worker 0 -> server      the initial weights, raw bytes, model layout
                                            (also after :class:`SetWeights`)
``REGISTERED``      server -> every worker  :class:`Registration` (accepted or refused),
                                            :class:`WeightsSet`
``MODEL_CHECK``     workers' communicator   each worker's ``ModelSpec`` to worker 0, then
                                            a :class:`ModelCheck` back to each
==================  ======================  ===============================================

Windows (one-sided), both on the server rank and made with ``Win.Allocate``
==========================================================================
Workers allocate zero bytes. Per worker ``m``:

* **control window** (``int64``): one 64-byte line, word 0 ``push_seq[m]``, word 1
  ``reply_seq[m]``. Only atomics touch it (``Fetch_and_op``, ``Get_accumulate``), so a
  sequence word is never read torn.
* **data window** (bytes): one slot::

      push area : header (int64 x 8) | hyperparameters (float64 x H) | gradient (wire layout)
      reply area: header (int64 x 8) | weights (model layout)

  push header: ``[kind, seq]``; reply header: ``[seq, status, updates, staleness,
  rejected]`` (see :class:`Request` and :class:`Reply`). Every area starts on a 64-byte
  boundary.

Invariants (what makes it exact without a lock)
-----------------------------------------------
1. A worker's requests are numbered 1, 2, 3, ...; it publishes request ``s`` by raising
   ``push_seq[m]`` to ``s`` only after its ``Put`` of the push area completed (``Flush``),
   and it writes the push area again only after it has read reply ``s``.
2. The server reads a push area only after it saw its ``push_seq`` move (and a
   ``Win.Sync``), answers each request exactly once, in order, and raises ``reply_seq[m]``
   to ``s`` only after the reply area is written (``Win.Sync``). It writes that reply area
   again only for request ``s + 1``.
3. So each area has one writer and one reader at a time, handed over through the sequence
   words: no read is torn, nothing is applied twice or lost. A sequence that jumps is a
   :class:`ProtocolError`.
4. The reply area is ``w_bak(m)`` of Algorithm 2: the server writes its new weights there
   and the worker computes its next gradient on exactly those bytes.

Exchange, worker ``m`` (Algorithm 1's push followed by its pull): ``Put`` the push area,
``Flush``; ``Fetch_and_op(REPLACE)`` ``push_seq[m] = s``; poll ``reply_seq[m]`` with
``Fetch_and_op(NO_OP)`` until it reads ``s``; ``Get`` the reply area, ``Flush``. Workers
hold one ``Lock_all(MODE_NOCHECK)`` epoch for their lifetime; no lock is ever contended.
Whether these operations complete while the server computes depends on the transport
(shared memory and RDMA hardware: yes; TCP: only when the server enters MPI), see
``docs/DESIGN.md``.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import torch
from mpi4py import MPI

from .layout import FlatLayout, ModelSpec, align_up
from .waiting import wait_until

__all__ = [
    "SERVER_RANK",
    "FIRST_WORKER_RANK",
    "Tag",
    "Register",
    "Goodbye",
    "Abort",
    "Registration",
    "ModelCheck",
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
    "world_rank",
]

SERVER_RANK = 0
FIRST_WORKER_RANK = 1


def world_rank(worker: int) -> int:
    """World rank of worker ``worker``."""
    return worker + FIRST_WORKER_RANK


class Tag(enum.IntEnum):
    CONTROL = 7701
    WEIGHTS = 7702
    REGISTERED = 7703
    MODEL_CHECK = 7704


# -- two-sided messages -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Register:
    """Worker 0 asks the server to serve a model (every worker follows into the window
    allocation, which is collective)."""

    spec: ModelSpec


@dataclasses.dataclass(frozen=True)
class Goodbye:
    """A worker is done; the server exits after the last one."""


@dataclasses.dataclass(frozen=True)
class Abort:
    """The job cannot start (models differ, a worker is missing): the server stops."""

    reason: str


@dataclasses.dataclass(frozen=True)
class Registration:
    """The server's answer to :class:`Register`, sent to every worker.

    ``error`` is None when the model is served. Then ``updates`` is the server's update
    count, ``pushes[m]`` worker ``m``'s pushes so far, ``rejected[m]`` how many of them were
    rejected and ``staleness[m]`` its staleness histogram (all zero or empty unless
    resuming from a checkpoint), and ``server_device`` says where the master weights live.
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
    ``missing`` says which workers did not arrive in time."""

    difference: Optional[str] = None
    missing: Optional[str] = None


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


ControlMessage = Any  # Register | Goodbye | Abort | SetWeights


# -- one-sided requests and replies -------------------------------------------------------


class RequestKind(enum.IntEnum):
    PUSH = 1  # a gradient, then the pull that follows it
    PULL = 2  # a pull only


class ReplyStatus(enum.IntEnum):
    OK = 0
    REJECTED_NONFINITE = 1  # the gradient had a NaN/Inf; the model was not changed


class Request(NamedTuple):
    """One request as the server sees it: views into worker ``worker``'s push area."""

    worker: int
    seq: int
    kind: RequestKind
    hyper: np.ndarray  # float64 values of the optimizer's hyperparameter slots
    grad: List[torch.Tensor]  # one typed view per segment, wire layout (PUSH only)


class Reply(NamedTuple):
    """The header of a reply; the weights are in the reply area."""

    seq: int
    status: ReplyStatus
    updates: int  # server updates applied so far, all workers
    staleness: int  # updates by others between this worker's previous pull and this push
    rejected: int  # this worker's rejected pushes so far


class ProtocolError(RuntimeError):
    """A peer broke an invariant of this module (a bug, never a user error)."""


HEADER_WORDS = 8  # int64 words at the head of each area
_CTRL_WORDS = 8  # int64 words per worker in the control window: one cache line
_PUSH_SEQ, _REPLY_SEQ = 0, 1  # words of a worker's control line
_REQ_KIND, _REQ_SEQ = 0, 1  # words of the push header
# the reply header is Reply's fields in order


class WindowLayout:
    """Byte offsets of every area, for a model's layout, ``num_hyper`` hyperparameter
    slots and ``num_workers`` slots. The only place window sizes are computed."""

    def __init__(self, layout: FlatLayout, num_hyper: int, num_workers: int) -> None:
        self.layout = layout
        self.num_hyper = num_hyper
        self.num_workers = num_workers
        header = HEADER_WORDS * 8
        self.push_hyper_offset = header
        self.push_grad_offset = align_up(header + 8 * num_hyper)
        self.push_nbytes = align_up(self.push_grad_offset + layout.wire_nbytes)
        self.reply_weights_offset = header
        self.reply_nbytes = align_up(header + layout.nbytes)
        self.slot_nbytes = self.push_nbytes + self.reply_nbytes
        self.data_nbytes = self.slot_nbytes * num_workers
        self.ctrl_nbytes = _CTRL_WORDS * 8 * num_workers

    @classmethod
    def for_spec(cls, spec: ModelSpec, num_workers: int) -> "WindowLayout":
        return cls(spec.layout(), len(spec.hyper_slots), num_workers)

    @property
    def total_nbytes(self) -> int:
        """Bytes of both windows together (what the server's shared memory must hold)."""
        return self.data_nbytes + self.ctrl_nbytes

    def push_offset(self, m: int) -> int:
        return m * self.slot_nbytes

    def reply_offset(self, m: int) -> int:
        return m * self.slot_nbytes + self.push_nbytes


def _as_uint8(win: MPI.Win, nbytes: int) -> torch.Tensor:
    if nbytes == 0:
        return torch.empty(0, dtype=torch.uint8)
    return torch.from_numpy(np.frombuffer(win.tomemory(), dtype=np.uint8, count=nbytes))


class ServerWindows:
    """The server's side: both windows, typed views of every area, and the request/reply
    handover of the invariants above. Construction is collective with the workers'
    :class:`WorkerChannel`."""

    def __init__(self, comm: MPI.Comm, wl: WindowLayout) -> None:
        self.comm = comm
        self.wl = wl
        self.ctrl_win = MPI.Win.Allocate(wl.ctrl_nbytes, 8, comm=comm)
        self.data_win = MPI.Win.Allocate(wl.data_nbytes, 1, comm=comm)
        # the server's own lifetime epochs: Win.Sync and its self-atomics need them
        self.ctrl_win.Lock_all(MPI.MODE_NOCHECK)
        self.data_win.Lock_all(MPI.MODE_NOCHECK)
        self._epoch_open = True
        self.data = _as_uint8(self.data_win, wl.data_nbytes)
        self.data.zero_()
        ctrl = np.frombuffer(self.ctrl_win.tomemory(), dtype=np.int64, count=wl.ctrl_nbytes // 8)
        ctrl[:] = 0
        self.data_win.Sync()
        self.ctrl_win.Sync()
        self._me = comm.Get_rank()
        self._seqs = np.zeros(wl.num_workers * _CTRL_WORDS, dtype=np.int64)
        self._no_op_origin = np.zeros_like(self._seqs)  # ignored by NO_OP, must not alias the result
        self._one = np.zeros(1, dtype=np.int64)
        self._old = np.zeros(1, dtype=np.int64)
        #: the last request answered, per worker
        self.answered = np.zeros(wl.num_workers, dtype=np.int64)
        layout = wl.layout
        self._push_header: List[np.ndarray] = []
        self._hyper: List[np.ndarray] = []
        self._grad: List[List[torch.Tensor]] = []
        self._reply_header: List[np.ndarray] = []
        #: worker m's reply area's weights: w_bak(m), and what m reads
        self.reply_weights: List[torch.Tensor] = []
        for m in range(wl.num_workers):
            p = wl.push_offset(m)
            r = wl.reply_offset(m)
            self._push_header.append(self.data[p : p + HEADER_WORDS * 8].numpy().view(np.int64))
            h = p + wl.push_hyper_offset
            self._hyper.append(self.data[h : h + 8 * wl.num_hyper].numpy().view(np.float64))
            g = p + wl.push_grad_offset
            self._grad.append(layout.segment_views(self.data[g : g + layout.wire_nbytes], wire=True))
            self._reply_header.append(self.data[r : r + HEADER_WORDS * 8].numpy().view(np.int64))
            w = r + wl.reply_weights_offset
            self.reply_weights.append(self.data[w : w + layout.nbytes])

    def pending(self) -> np.ndarray:
        """Workers with a published request not yet answered (ascending). One atomic read
        of every ``push_seq``; when any is pending, the memory barrier before their push
        areas are read."""
        n = self._seqs.size
        self.ctrl_win.Get_accumulate(
            [self._no_op_origin, MPI.INT64_T], [self._seqs, MPI.INT64_T], self._me, target=(0, n, MPI.INT64_T),
            op=MPI.NO_OP,
        )
        self.ctrl_win.Flush(self._me)
        found = np.flatnonzero(self._seqs[_PUSH_SEQ::_CTRL_WORDS] != self.answered)
        if found.size:
            self.data_win.Sync()
        return found

    def request(self, m: int) -> Request:
        """Worker ``m``'s pending request (views into its push area)."""
        seq = int(self._seqs[m * _CTRL_WORDS + _PUSH_SEQ])
        if seq != self.answered[m] + 1:
            raise ProtocolError(
                f"worker {m} (world rank {world_rank(m)}) jumped from request #{self.answered[m]} to #{seq}"
            )
        header = self._push_header[m]
        try:
            kind = RequestKind(int(header[_REQ_KIND]))
        except ValueError:
            raise ProtocolError(f"worker {m} sent unknown request kind {int(header[_REQ_KIND])}") from None
        if int(header[_REQ_SEQ]) != seq:
            raise ProtocolError(f"worker {m}: request #{seq} carries header seq {int(header[_REQ_SEQ])}")
        return Request(m, seq, kind, self._hyper[m], self._grad[m])

    def reply(self, request: Request, reply: Reply) -> None:
        """Publish ``reply`` (its weights are already in the reply area): header, memory
        barrier, then ``reply_seq``; the request is answered."""
        m = request.worker
        self._reply_header[m][: len(reply)] = reply
        self.data_win.Sync()
        self._one[0] = request.seq
        self.ctrl_win.Fetch_and_op(self._one, self._old, self._me, m * _CTRL_WORDS + _REPLY_SEQ, MPI.REPLACE)
        self.ctrl_win.Flush(self._me)
        self.answered[m] = request.seq

    def free(self) -> None:
        """Release both windows (collective with the workers' :meth:`WorkerChannel.free`)."""
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
    """A worker's side: local push and reply buffers shaped like its slot, and the
    exchange with the server. Construction is collective with :class:`ServerWindows`.

    The worker binds its gradients to :attr:`grad_area` and its weights to
    :attr:`weights_area` (or stages them there), so an exchange moves the whole model with
    one ``Put`` and one ``Get`` and no copy. With ``pin_memory`` (CUDA workers) both
    buffers are page-locked, so device copies run asynchronously at full bus speed.
    """

    def __init__(self, comm: MPI.Comm, wl: WindowLayout, worker: int, timeout: float, pin_memory: bool = False) -> None:
        self.comm = comm
        self.wl = wl
        self.worker = worker
        self.timeout = timeout
        self.ctrl_win = MPI.Win.Allocate(0, 8, comm=comm)
        self.data_win = MPI.Win.Allocate(0, 1, comm=comm)
        self.push_buffer = torch.zeros(wl.push_nbytes, dtype=torch.uint8, pin_memory=pin_memory)
        self.reply_buffer = torch.zeros(wl.reply_nbytes, dtype=torch.uint8, pin_memory=pin_memory)
        self._push_np = self.push_buffer.numpy()
        self._reply_np = self.reply_buffer.numpy()
        self._push_header = self._push_np[: HEADER_WORDS * 8].view(np.int64)
        h = wl.push_hyper_offset
        #: where the hyperparameter values of the next push go
        self.hyper = self._push_np[h : h + 8 * wl.num_hyper].view(np.float64)
        g = wl.push_grad_offset
        #: the gradient of the next push, wire layout
        self.grad_area = self.push_buffer[g : g + wl.layout.wire_nbytes]
        self._reply_header = self._reply_np[: HEADER_WORDS * 8].view(np.int64)
        w = wl.reply_weights_offset
        #: the weights of the last reply, model layout
        self.weights_area = self.reply_buffer[w : w + wl.layout.nbytes]
        self.seq = 0
        self._ctrl_base = worker * _CTRL_WORDS
        self._val = np.zeros(1, dtype=np.int64)
        self._res = np.zeros(1, dtype=np.int64)
        self._epoch_open = False

    def open(self) -> None:
        """Start this worker's lifetime passive epoch on the server's windows and read its
        reply area, which holds the initial weights (``w_bak(m) = w_0``)."""
        self.ctrl_win.Lock_all(MPI.MODE_NOCHECK)
        self.data_win.Lock_all(MPI.MODE_NOCHECK)
        self._epoch_open = True
        self._get_reply()

    def exchange(self, kind: RequestKind) -> Reply:
        """Push (``PUSH``: hyperparameters and gradient) or only request (``PULL``), wait
        for the server's answer, and read it: the weights land in :attr:`weights_area`.

        Raises :class:`HvdDcTimeout` naming the server rank if no answer comes in time.
        """
        server, win = SERVER_RANK, self.data_win
        self.seq += 1
        self._push_header[_REQ_KIND] = kind
        self._push_header[_REQ_SEQ] = self.seq
        nbytes = self.wl.push_nbytes if kind == RequestKind.PUSH else self.wl.push_grad_offset
        win.Put([self._push_np, nbytes, MPI.BYTE], server, target=self.wl.push_offset(self.worker))
        win.Flush(server)
        self._val[0] = self.seq
        self.ctrl_win.Fetch_and_op(self._val, self._res, server, self._ctrl_base + _PUSH_SEQ, MPI.REPLACE)
        self.ctrl_win.Flush(server)
        wait_until(
            self._answered,
            self.timeout,
            lambda: f"worker {self.worker} (world rank {self.comm.Get_rank()}): the parameter server (world rank "
            f"{server}) did not answer request #{self.seq} within {self.timeout:g} s (set HVD_DC_TIMEOUT to wait "
            "longer)",
        )
        self._get_reply()
        h = self._reply_header
        return Reply(int(h[0]), ReplyStatus(int(h[1])), int(h[2]), int(h[3]), int(h[4]))

    def _answered(self) -> bool:
        self.ctrl_win.Fetch_and_op(self._val, self._res, SERVER_RANK, self._ctrl_base + _REPLY_SEQ, MPI.NO_OP)
        self.ctrl_win.Flush(SERVER_RANK)
        return int(self._res[0]) == self.seq

    def _get_reply(self) -> None:
        self.data_win.Get([self._reply_np, self.wl.reply_nbytes, MPI.BYTE], SERVER_RANK,
                          target=self.wl.reply_offset(self.worker))
        self.data_win.Flush(SERVER_RANK)

    def free(self) -> None:
        """Release the windows (collective with :meth:`ServerWindows.free`)."""
        if self._epoch_open:
            self.ctrl_win.Unlock_all()
            self.data_win.Unlock_all()
            self._epoch_open = False
        self.ctrl_win.Free()
        self.data_win.Free()


"""The one-sided window protocol between workers and the parameter server.

This module owns the bytes in the MPI windows and the order in which they are written;
it knows nothing of DC math or optimizers.

Two windows live on the server rank, both made with ``Win.Allocate`` (the only kind whose
passive-target operations complete while the server computes, under MPICH and Open MPI;
see RMA_NOTES.md). Workers allocate zero bytes.

* **control window**, ``int64``: per worker ``m`` one 64-byte line, word 0 its
  ``push_seq`` and word 1 its ``reply_seq``. Only atomics touch it
  (``Fetch_and_op`` / ``Get_accumulate``), so flag reads are never torn.
* **data window**, bytes: per worker one slot::

      push area : meta (int64 x 8) | hyperparameters (float64 x H) | gradient (wire layout)
      reply area: meta (int64 x 8) | weights (model layout)

Exchange (Algorithm 1's push followed by its pull), worker ``m``:

1. ``Put`` the push area (meta, hyperparameters, gradient) into its slot; ``Flush``.
2. ``Fetch_and_op(REPLACE)`` ``push_seq[m] = s``; ``Flush``.
3. Poll ``reply_seq[m]`` with ``Fetch_and_op(NO_OP)`` until it reads ``s``.
4. ``Get`` the reply area; ``Flush``. The weights land straight in the model's memory.

Server, on seeing ``push_seq[m] = s``: ``Win.Sync``; apply the gradient; copy its weights
into worker ``m``'s reply area (that copy *is* ``w_bak(m)`` of Algorithm 2, since it is
exactly what ``m`` will compute on); write the reply meta; ``Win.Sync``;
``reply_seq[m] = s``.

Each slot has one writer and one reader at a time and the handover goes through the
sequence words, so no lock is ever taken: workers open one ``Lock_all(MODE_NOCHECK)``
epoch for their lifetime and complete operations with ``Flush``. No read is torn: a
worker reads its reply area only after the server published it, and the server writes it
again only after that worker's next push.
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np
import torch
from mpi4py import MPI

from .layout import ALIGN, FlatLayout
from .waiting import Backoff, Deadline, HvdDcTimeout

__all__ = [
    "KIND_PUSH",
    "KIND_PULL",
    "STATUS_OK",
    "STATUS_REJECTED_NONFINITE",
    "META_WORDS",
    "WindowLayout",
    "ServerWindows",
    "WorkerChannel",
]

KIND_PUSH = 1  # gradient, then pull
KIND_PULL = 2  # pull only

STATUS_OK = 0
STATUS_REJECTED_NONFINITE = 1

META_WORDS = 8  # int64 words at the head of each area
CTRL_WORDS = 8  # int64 words per worker in the control window (one cache line)
_PUSH_SEQ = 0
_REPLY_SEQ = 1

# push meta words
PM_KIND = 0
PM_SEQ = 1
# reply meta words
RM_SEQ = 0
RM_STATUS = 1
RM_UPDATES = 2  # server updates applied so far (all workers)
RM_STALENESS = 3  # updates by others between this worker's previous pull and this push
RM_REJECTED = 4  # this worker's rejected pushes so far


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


class WindowLayout:
    """Byte offsets of every area in the data window, for ``num_workers`` slots."""

    def __init__(self, layout: FlatLayout, num_hyper: int, num_workers: int) -> None:
        self.layout = layout
        self.num_hyper = num_hyper
        self.num_workers = num_workers
        meta = META_WORDS * 8
        self.push_hyper_offset = meta
        self.push_grad_offset = _align(meta + 8 * num_hyper)
        self.push_nbytes = _align(self.push_grad_offset + layout.wire_nbytes)
        self.reply_weights_offset = meta
        self.reply_nbytes = _align(meta + layout.nbytes)
        self.slot_nbytes = self.push_nbytes + self.reply_nbytes
        self.data_nbytes = self.slot_nbytes * num_workers
        self.ctrl_nbytes = CTRL_WORDS * 8 * num_workers

    def push_offset(self, m: int) -> int:
        return m * self.slot_nbytes

    def reply_offset(self, m: int) -> int:
        return m * self.slot_nbytes + self.push_nbytes


def _allocate(nbytes: int, disp_unit: int, comm: MPI.Comm) -> MPI.Win:
    return MPI.Win.Allocate(nbytes, disp_unit, comm=comm)


def _as_uint8(win: MPI.Win, nbytes: int) -> torch.Tensor:
    if nbytes == 0:
        return torch.empty(0, dtype=torch.uint8)
    return torch.from_numpy(np.frombuffer(win.tomemory(), dtype=np.uint8, count=nbytes))


class ServerWindows:
    """The server's side: owns both windows and typed views of every area in them."""

    def __init__(self, comm: MPI.Comm, wl: WindowLayout) -> None:
        self.comm = comm
        self.wl = wl
        self.ctrl_win = _allocate(wl.ctrl_nbytes, 8, comm)
        self.data_win = _allocate(wl.data_nbytes, 1, comm)
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
        self._seqs = np.zeros(wl.num_workers * CTRL_WORDS, dtype=np.int64)
        self._no_op_origin = np.zeros_like(self._seqs)  # ignored by NO_OP, must not alias the result
        self._one = np.zeros(1, dtype=np.int64)
        self._old = np.zeros(1, dtype=np.int64)
        layout = wl.layout
        self.push_meta: List[np.ndarray] = []
        self.hyper: List[np.ndarray] = []
        self.grad: List[List[torch.Tensor]] = []
        self.reply_meta: List[np.ndarray] = []
        self.reply_weights: List[torch.Tensor] = []
        for m in range(wl.num_workers):
            p = wl.push_offset(m)
            r = wl.reply_offset(m)
            self.push_meta.append(self.data[p : p + META_WORDS * 8].numpy().view(np.int64))
            h = p + wl.push_hyper_offset
            self.hyper.append(self.data[h : h + 8 * wl.num_hyper].numpy().view(np.float64))
            g = p + wl.push_grad_offset
            self.grad.append(layout.segment_views(self.data[g : g + layout.wire_nbytes], wire=True))
            self.reply_meta.append(self.data[r : r + META_WORDS * 8].numpy().view(np.int64))
            w = r + wl.reply_weights_offset
            self.reply_weights.append(self.data[w : w + layout.nbytes])

    def push_seqs(self) -> np.ndarray:
        """Atomically read every worker's push_seq (one Get_accumulate(NO_OP))."""
        me = self.comm.Get_rank()
        n = self._seqs.size
        self.ctrl_win.Get_accumulate(
            [self._no_op_origin, MPI.INT64_T], [self._seqs, MPI.INT64_T], me, target=(0, n, MPI.INT64_T), op=MPI.NO_OP
        )
        self.ctrl_win.Flush(me)
        return self._seqs[_PUSH_SEQ::CTRL_WORDS]

    def begin_read(self) -> None:
        """Memory barrier before reading what workers Put (RMA unified model)."""
        self.data_win.Sync()

    def publish_reply(self, m: int, seq: int) -> None:
        """Make worker ``m``'s reply area visible, then raise its reply_seq to ``seq``."""
        self.data_win.Sync()
        me = self.comm.Get_rank()
        self._one[0] = seq
        self.ctrl_win.Fetch_and_op(self._one, self._old, me, m * CTRL_WORDS + _REPLY_SEQ, MPI.REPLACE)
        self.ctrl_win.Flush(me)

    def free(self) -> None:
        if self._epoch_open:
            self.ctrl_win.Unlock_all()
            self.data_win.Unlock_all()
            self._epoch_open = False
        # drop every view of window memory before the memory goes away
        self.push_meta = self.hyper = self.grad = self.reply_meta = self.reply_weights = []
        self.data = None  # type: ignore[assignment]
        self.ctrl_win.Free()
        self.data_win.Free()


class WorkerChannel:
    """A worker's side: its push and reply buffers and the exchange with the server.

    ``push_buffer`` and ``reply_buffer`` are local byte tensors shaped like the worker's
    slot areas; the worker binds its gradients and weights to views of them so that an
    exchange moves the whole model with one Put and one Get and no copy. With
    ``pin_memory`` (CUDA workers) they are page-locked, so that the device copies of
    :mod:`hvd_dc.staging` run asynchronously at full bus speed.
    """

    def __init__(self, comm: MPI.Comm, wl: WindowLayout, worker: int, server_rank: int, timeout: Optional[float],
                 pin_memory: bool = False) -> None:
        self.comm = comm
        self.wl = wl
        self.worker = worker
        self.server = server_rank
        self.timeout = timeout
        self.ctrl_win = _allocate(0, 8, comm)
        self.data_win = _allocate(0, 1, comm)
        self.push_buffer = torch.zeros(wl.push_nbytes, dtype=torch.uint8, pin_memory=pin_memory)
        self.reply_buffer = torch.zeros(wl.reply_nbytes, dtype=torch.uint8, pin_memory=pin_memory)
        self._push_np = self.push_buffer.numpy()
        self._reply_np = self.reply_buffer.numpy()
        self.push_meta = self._push_np[: META_WORDS * 8].view(np.int64)
        h = wl.push_hyper_offset
        self.hyper = self._push_np[h : h + 8 * wl.num_hyper].view(np.float64)
        g = wl.push_grad_offset
        self.grad_area = self.push_buffer[g : g + wl.layout.wire_nbytes]
        self.reply_meta = self._reply_np[: META_WORDS * 8].view(np.int64)
        w = wl.reply_weights_offset
        self.weights_area = self.reply_buffer[w : w + wl.layout.nbytes]
        self.seq = 0
        self._val = np.zeros(1, dtype=np.int64)
        self._res = np.zeros(1, dtype=np.int64)
        self._epoch_open = False

    def open(self) -> None:
        """Start this worker's lifetime passive epoch on the server's windows."""
        self.ctrl_win.Lock_all(MPI.MODE_NOCHECK)
        self.data_win.Lock_all(MPI.MODE_NOCHECK)
        self._epoch_open = True

    def fetch_reply(self) -> None:
        """Get this worker's reply area (the initial weights, at start-up)."""
        self.data_win.Get(
            [self._reply_np, self.wl.reply_nbytes, MPI.BYTE], self.server, target=self.wl.reply_offset(self.worker)
        )
        self.data_win.Flush(self.server)

    def exchange(self, kind: int) -> np.ndarray:
        """Push (``KIND_PUSH``: gradient and hyperparameters) or only request, then pull.

        Returns the reply meta words. Raises :class:`HvdDcTimeout` naming the server
        rank if no reply comes within the timeout.
        """
        wl, server, win = self.wl, self.server, self.data_win
        self.seq += 1
        self.push_meta[PM_KIND] = kind
        self.push_meta[PM_SEQ] = self.seq
        nbytes = wl.push_nbytes if kind == KIND_PUSH else wl.push_grad_offset
        win.Put([self._push_np, nbytes, MPI.BYTE], server, target=wl.push_offset(self.worker))
        win.Flush(server)
        ctrl = self.ctrl_win
        base = self.worker * CTRL_WORDS
        self._val[0] = self.seq
        ctrl.Fetch_and_op(self._val, self._res, server, base + _PUSH_SEQ, MPI.REPLACE)
        ctrl.Flush(server)
        deadline = Deadline(self.timeout)
        backoff = Backoff()
        while True:
            ctrl.Fetch_and_op(self._val, self._res, server, base + _REPLY_SEQ, MPI.NO_OP)
            ctrl.Flush(server)
            if self._res[0] == self.seq:
                break
            if deadline.expired():
                raise HvdDcTimeout(
                    f"worker {self.worker} (world rank {self.comm.Get_rank()}): the parameter server (world rank "
                    f"{server}) did not answer request #{self.seq} within {self.timeout:g} s "
                    "(set HVD_DC_TIMEOUT to wait longer)"
                )
            backoff.wait()
        self.fetch_reply()
        return self.reply_meta

    def free(self) -> None:
        if self._epoch_open:
            self.ctrl_win.Unlock_all()
            self.data_win.Unlock_all()
            self._epoch_open = False
        self.ctrl_win.Free()
        self.data_win.Free()

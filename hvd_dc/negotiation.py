"""How the workers agree on each collective before any data moves, so that a mismatch is
an error on every worker, quickly, and never a hang.

Every collective of :mod:`hvd_dc.collectives` (and ``barrier``, ``join``, the object
collectives) runs in two phases on a communicator of its own (a duplicate of the
workers' communicator, made at ``init``):

1. **Negotiation.** Each worker numbers its collectives 1, 2, 3, ... and sends worker 0
   a :class:`Descriptor` of the call (kind, name, each tensor's dtype/shape/device, op,
   root, and what the data phase needs: first dimensions, splits, payload sizes).
   Worker 0 compares them and answers every worker with one :class:`Verdict`: all the
   descriptors, or an error naming the tensor and the two workers that differ. A worker
   that does not arrive within the timeout is named in the error sent to all the others
   (and waiting for it, when it arrives, so that it raises too). A worker whose wait for
   the verdict times out *withdraws* (tells worker 0) and waits a little longer for the
   verdict, so that worker 0 never declares a collective complete that one worker gave
   up on: every worker raises, or every worker completes.
2. **The data phase**: a non-blocking MPI collective (``Iallreduce``, ``Iallgatherv``,
   ``Ibcast``, ``Ialltoallv``, ``Ireduce_scatter``), started in collective order and
   polled against the timeout. Every worker has committed to it by then.

Messages carry the collective's number, so a late message from an abandoned collective is
recognised and dropped instead of being paired with the next one. The asynchronous forms
return a handle; :meth:`Engine.progress` advances pending collectives in order (MPI
requires every rank to start its collectives in the same order).

``join()`` (Horovod's) is a collective kind: a worker that joined answers every later
allreduce with its identity element (zeros for Sum/Average) until all workers have
joined; any other collective then is an error for the workers that called it.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from mpi4py import MPI

from .waiting import Backoff, HorovodInternalError, HvdDcTimeout

__all__ = ["Descriptor", "Verdict", "Engine", "attach", "engine", "CollectiveMismatch", "NEGOTIATE_TAG",
           "VERDICT_TAG"]

NEGOTIATE_TAG = 101  # worker -> worker 0: ("desc", Descriptor) or ("withdraw", seq)
VERDICT_TAG = 102  # worker 0 -> worker: Verdict

#: how long a worker that timed out keeps waiting for worker 0's verdict after withdrawing
WITHDRAW_GRACE_S = 2.0


class CollectiveMismatch(HorovodInternalError):
    """The workers called different collectives, or the same one with different
    arguments (shape, dtype, op, root, name). Raised on every worker."""


class TensorInfo(NamedTuple):
    dtype: str
    shape: Tuple[int, ...]
    device: str  # "cpu", "cuda", ...


class Descriptor(NamedTuple):
    """One worker's description of its ``seq``-th collective."""

    seq: int
    kind: str  # "allreduce", "allgather", "broadcast", "alltoall", "reducescatter", "barrier", "join", ...
    name: Optional[str]
    tensors: Tuple[TensorInfo, ...] = ()
    op: Optional[str] = None
    root: Optional[int] = None
    extra: Any = None  # kind-specific: alltoall splits, payload sizes, the seq a join began at

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name!r}" if self.name else f"{self.kind} #{self.seq}"


class Verdict(NamedTuple):
    seq: int
    error: Optional[str]
    descriptors: Optional[Tuple[Descriptor, ...]] = None
    #: the error concerns collectives other than join: a worker inside join() carries on
    join_continues: bool = False
    #: the error is a worker that did not arrive in time (raised as HvdDcTimeout)
    timeout: bool = False


# which tensor dimensions must agree, per kind: "all" or "tail" (all but the first)
_SHAPE_RULE = {"allreduce": "all", "reducescatter": "all", "broadcast": "all", "allgather": "tail",
               "alltoall": "tail", "grouped_allreduce": "all", "grouped_reducescatter": "all",
               "grouped_allgather": "tail"}
#: kinds a worker inside join() takes part in (with identity elements)
JOINABLE = ("allreduce", "grouped_allreduce")


def _compare(a: Descriptor, b: Descriptor, ra: int, rb: int) -> Optional[str]:
    """The first difference between worker ``ra``'s and ``rb``'s descriptors, in words."""
    if a.kind != b.kind:
        return (f"worker {ra} called {a.label} but worker {rb} called {b.label} at the same point "
                "(collective #{}); every worker must call the same collectives in the same order".format(a.seq))
    what = a.label
    if a.name != b.name:
        return f"mismatched {a.kind} names: worker {ra} passed name {a.name!r}, worker {rb} passed {b.name!r}"
    if len(a.tensors) != len(b.tensors):
        return (f"mismatched {what}: worker {ra} passed {len(a.tensors)} tensors, worker {rb} passed "
                f"{len(b.tensors)}")
    for i, (ta, tb) in enumerate(zip(a.tensors, b.tensors)):
        item = f"{what}" + (f" (tensor {i} of the group)" if len(a.tensors) > 1 else "")
        if ta.dtype != tb.dtype:
            return (f"mismatched {item} data types: worker {ra} sent {ta.dtype}, worker {rb} sent {tb.dtype}")
        if ta.device != tb.device:
            return (f"mismatched {item} devices: worker {ra} passed a {ta.device} tensor, worker {rb} a "
                    f"{tb.device} tensor")
        rule = _SHAPE_RULE.get(a.kind, "all")
        if len(ta.shape) != len(tb.shape):
            return (f"mismatched {item} ranks: worker {ra} sent a tensor of shape {list(ta.shape)}, worker {rb} "
                    f"of shape {list(tb.shape)}")
        if (ta.shape if rule == "all" else ta.shape[1:]) != (tb.shape if rule == "all" else tb.shape[1:]):
            which = "shapes" if rule == "all" else "shapes (all dimensions but the first must agree)"
            return (f"mismatched {item} {which}: worker {ra} sent a tensor of shape {list(ta.shape)}, worker {rb} "
                    f"of shape {list(tb.shape)}")
    if a.op != b.op:
        return f"mismatched {what} reduction ops: worker {ra} passed {a.op}, worker {rb} passed {b.op}"
    if a.kind == "set_weights" and a.extra != b.extra:
        return (f"broadcast_parameters touched served models {list(a.extra)} on worker {ra} but {list(b.extra)} on "
                f"worker {rb}; every worker must broadcast the same parameters")
    if a.root != b.root:
        return f"mismatched {what} root ranks: worker {ra} passed root_rank={a.root}, worker {rb} passed {b.root}"
    return None


def judge(descs: List[Descriptor]) -> Verdict:
    """Worker 0's decision once every worker's descriptor for one collective is in."""
    seq = descs[0].seq
    joined = [r for r, d in enumerate(descs) if d.kind == "join"]
    active = [r for r, d in enumerate(descs) if d.kind != "join"]
    if active:
        first = active[0]
        for r in active[1:]:
            diff = _compare(descs[first], descs[r], first, r)
            if diff:
                return Verdict(seq, diff)
        if joined and descs[first].kind not in JOINABLE:
            names = ", ".join(f"worker {r}" for r in joined)
            return Verdict(seq, f"{descs[first].label} cannot run: {names} already called join(), after which "
                                "only allreduce can run until every worker has joined", join_continues=True)
    return Verdict(seq, None, tuple(descs))


class _Peer:
    """Worker 0's view of one other worker's negotiation messages, in arrival order."""

    def __init__(self, comm: MPI.Comm, rank: int) -> None:
        self.comm = comm
        self.rank = rank
        self.pending: Optional[MPI.Request] = None
        self.buffered: List[Tuple[str, Any]] = []

    def poll(self) -> None:
        """Receive every message already sent (never blocks)."""
        while True:
            if self.pending is None:
                self.pending = self.comm.irecv(source=self.rank, tag=NEGOTIATE_TAG)
            done, msg = self.pending.test()
            if not done:
                return
            self.pending = None
            self.buffered.append(msg)

    def take(self, seq: int) -> Tuple[Optional[Descriptor], bool]:
        """The descriptor for collective ``seq`` if it arrived, and whether this worker
        withdrew from it. Messages of earlier (abandoned) collectives are dropped: their
        verdict, an error, was already sent."""
        desc, withdrawn, keep = None, False, []
        for kind, body in self.buffered:
            s = body.seq if kind == "desc" else body
            if s == seq and kind == "desc":
                desc = body
            elif s == seq:
                withdrawn = True
            elif s > seq:
                keep.append((kind, body))
        self.buffered = keep
        return desc, withdrawn

    def withdrew(self, seq: int) -> bool:
        return any(k == "withdraw" and b == seq for k, b in self.buffered)


class Negotiation:
    """One collective's negotiation, advanced without blocking by :meth:`step`."""

    def __init__(self, eng: "Engine", desc: Descriptor) -> None:
        self.eng = eng
        self.desc = desc
        self.verdict: Optional[Verdict] = None
        self.withdrawn = False
        self.wait_started: Optional[float] = None
        n = eng.size
        if n == 1:
            self.verdict = Verdict(desc.seq, None, (desc,))
        elif eng.rank != 0:
            eng.outbox.append(eng.comm.isend(("desc", desc), dest=0, tag=NEGOTIATE_TAG))
            eng.flush_outbox()
        else:
            self.descs: Dict[int, Descriptor] = {0: desc}
            self.gave_up: List[int] = []

    # -- worker 0 --------------------------------------------------------------------------

    def _gather(self) -> None:
        eng = self.eng
        seq = self.desc.seq
        for r in range(1, eng.size):
            if r in self.descs:
                peer = eng.peers[r]
                peer.poll()
                if peer.withdrew(seq) and r not in self.gave_up:
                    self.gave_up.append(r)
                continue
            peer = eng.peers[r]
            peer.poll()
            desc, withdrawn = peer.take(seq)
            if desc is not None:
                self.descs[r] = desc
            if withdrawn and r not in self.gave_up:
                self.gave_up.append(r)

    def _decide(self, verdict: Verdict) -> None:
        eng = self.eng
        self.verdict = verdict
        for r in range(1, eng.size):
            eng.outbox.append(eng.comm.isend(verdict, dest=r, tag=VERDICT_TAG))
        eng.flush_outbox()

    def _missing(self) -> List[int]:
        return [r for r in range(self.eng.size) if r not in self.descs]

    # -- every worker ----------------------------------------------------------------------

    def step(self, deadline: Optional[float]) -> bool:
        """Advance; True once the verdict is known. ``deadline``: when this worker stops
        waiting (None: never, for a poll)."""
        if self.verdict is not None:
            return True
        eng = self.eng
        now = time.monotonic()
        if eng.rank == 0:
            self._gather()
            missing = self._missing()
            if not missing and not self.gave_up:
                self._decide(judge([self.descs[r] for r in range(eng.size)]))
            elif self.gave_up or (deadline is not None and now >= deadline):
                who = missing or self.gave_up
                names = ", ".join(f"worker {r} (world rank {r + 1})" for r in who)
                verb = "did not reach" if missing else "stopped waiting for"
                self._decide(Verdict(self.desc.seq, f"{names} {verb} {self.desc.label} within "
                                                    f"{eng.timeout:g} s (set HVD_DC_TIMEOUT to wait longer)", timeout=True))
            return self.verdict is not None
        eng.flush_outbox()
        verdict = eng.next_verdict(self.desc.seq)
        if verdict is not None:
            self.verdict = verdict
            return True
        if deadline is not None and now >= deadline and not self.withdrawn:
            self.withdrawn = True
            eng.outbox.append(eng.comm.isend(("withdraw", self.desc.seq), dest=0, tag=NEGOTIATE_TAG))
        return False


class Engine:
    """The collectives' state on one worker: the communicator, the collective counter,
    worker 0's view of the others, and the verdicts received ahead of use."""

    def __init__(self, comm: MPI.Comm, timeout: float) -> None:
        self.comm = comm
        self.size = comm.Get_size()
        self.rank = comm.Get_rank()
        self.timeout = timeout
        self.seq = 0
        self.peers = {r: _Peer(comm, r) for r in range(1, self.size)} if self.rank == 0 else {}
        self.outbox: List[MPI.Request] = []
        self._verdicts: Dict[int, Verdict] = {}
        self._verdict_req: Optional[MPI.Request] = None
        #: set when a data phase failed: MPI's collective order can no longer be trusted
        self.broken: Optional[str] = None
        self._handles = itertools.count(1)
        self.cross_rank = 0
        self.cross_size = 1

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def new_handle(self) -> int:
        return next(self._handles)

    def flush_outbox(self) -> None:
        """Drop the sends that completed; the others stay referenced (their buffers must
        live until MPI has sent them)."""
        self.outbox = [r for r in self.outbox if not r.Test()]

    def next_verdict(self, seq: int) -> Optional[Verdict]:
        """Verdict ``seq`` if it has arrived (never blocks); older ones are dropped."""
        while True:
            if seq in self._verdicts:
                return self._verdicts.pop(seq)
            if self._verdict_req is None:
                self._verdict_req = self.comm.irecv(source=0, tag=VERDICT_TAG)
            done, verdict = self._verdict_req.test()
            if not done:
                return None
            self._verdict_req = None
            if verdict.seq >= seq:
                self._verdicts[verdict.seq] = verdict

    def check_usable(self) -> None:
        if self.broken:
            raise HorovodInternalError(
                f"hvd_dc collectives are unusable: {self.broken}; the job must be restarted")

    def negotiate(self, desc: Descriptor) -> Verdict:
        """Blocking negotiation of ``desc``: the verdict, or :class:`HvdDcTimeout`."""
        neg = Negotiation(self, desc)
        wait(neg.step, self, f"{desc.label}")
        return neg.verdict  # type: ignore[return-value]


def wait(step: Callable[[Optional[float]], bool], eng: Engine, label: str) -> None:
    """Call ``step(deadline)`` with back-off until it returns True. After the timeout a
    worker other than 0 withdraws and waits :data:`WITHDRAW_GRACE_S` more for worker 0's
    verdict; then raises :class:`HvdDcTimeout` naming worker 0."""
    deadline = time.monotonic() + eng.timeout
    backoff = Backoff()
    while not step(deadline):
        now = time.monotonic()
        if now >= deadline + (WITHDRAW_GRACE_S if eng.rank != 0 else 0) + 0.05:
            if eng.rank != 0:
                raise HvdDcTimeout(
                    f"hvd_dc worker {eng.rank}: {label} among {eng.size} workers did not complete within "
                    f"{eng.timeout:g} s: worker 0 (world rank 1), which coordinates collectives, did not "
                    "reach it or answer (set HVD_DC_TIMEOUT to wait longer)")
        backoff.wait()


_engine: Optional[Engine] = None
_owner: Any = None


def attach(ctx: Any) -> None:
    """Create the workers' collectives engine for the context ``init`` just made
    (collective over the workers: duplicates their communicator, and splits it by local
    rank for Horovod's ``cross_rank``/``cross_size``)."""
    global _engine, _owner
    comm = ctx.workers.Dup()
    _engine = Engine(comm, ctx.settings.timeout)
    cross = ctx.workers.Split(ctx.local.Get_rank(), key=ctx.workers.Get_rank())
    _engine.cross_rank, _engine.cross_size = cross.Get_rank(), cross.Get_size()
    cross.Free()
    _owner = ctx


def engine(ctx: Any) -> Engine:
    """The engine of ``ctx`` (made by :func:`attach` at ``init``)."""
    if _engine is None or _owner is not ctx:
        raise RuntimeError("hvd_dc collectives are not set up; call hvd_dc.init() first")
    return _engine

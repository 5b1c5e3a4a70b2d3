"""How the members of a process set agree on each collective before any data moves, so
that a mismatch is an error on every member, quickly, and never a hang.

Every process set of workers (the global one: all workers) has an :class:`Engine`: its
own communicator, and on its first member (set rank 0) a :class:`Coordinator`. A
collective on one member is an :class:`Operation`:

1. **Matching.** Collectives are matched by name, as in Horovod: a member's collective
   has the key ``(name, k)`` where ``k`` counts this member's earlier collectives of that
   name in the set (unnamed collectives share the name ``None``, so they match in call
   order). The member sends the coordinator a :class:`Descriptor` (kind, name, each
   tensor's dtype/shape/device, op, root, and what the data phase needs: first
   dimensions, splits, payload sizes). Once every member sent a key's descriptor the
   coordinator compares them and sends every member one :class:`Verdict`: all the
   descriptors, or an error naming the tensor and the two workers that differ. Matching
   by name lets collectives complete in another order than they were started (an
   asynchronous allreduce left pending while the workers pass a barrier, as Horovod's
   own tests do).
2. **The data phase**: a non-blocking MPI collective (``Iallreduce``, ``Iallgatherv``,
   ``Ibcast``, ``Ialltoallv``, ``Ireduce_scatter``) started by every member when its
   verdict arrives. Verdicts leave the coordinator in one order and MPI keeps the order
   of messages between two ranks, so every member starts its data phases in the same
   order, as MPI requires; they are then polled against the timeout.

Errors, never hangs:

* A member that does not send a key within the timeout of a member waiting for it is
  named in an error sent to all members (the coordinator decides it when its own wait
  expires, or when another member *withdraws*: gives up waiting and says so). A member
  that withdrew waits :data:`WITHDRAW_GRACE_S` longer for the verdict, so the coordinator
  never declares complete a collective that one member gave up on: every member raises,
  or every member completes. The late member, when it arrives, finds the error waiting.
* Collectives that can never match (another name, another collective, one skipped) are
  found without waiting for the timeout: a member waiting for a verdict longer than
  :data:`BLOCKED_REPORT_S` tells the coordinator which key it waits for. When every
  member waits for a key that is not complete (or is inside ``join()``), no member can
  send anything more, so none of those keys can ever complete: each is decided as an
  error naming the first difference between what the members wait for.

``join()`` (Horovod's) is a state of a member of the global set: the coordinator
completes the other members' allreduces without it, and the joined member takes part in
their data phases with identity elements (zeros for Sum/Average) until all members have
joined; any other collective then is an error for the members that called it.

The live engines are listed by :func:`engines`, so that every wait can keep all of them
moving: a member that waits on one set still coordinates and answers the others.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from mpi4py import MPI

from .waiting import Backoff, HorovodInternalError, HvdDcTimeout

__all__ = ["Descriptor", "Verdict", "TensorInfo", "Operation", "Engine", "Coordinator", "attach", "engine",
           "engines", "register", "unregister", "finish_data_phases", "CollectiveMismatch", "NEGOTIATE_TAG",
           "VERDICT_TAG", "WITHDRAW_GRACE_S", "BLOCKED_REPORT_S", "JOINABLE"]

NEGOTIATE_TAG = 101  # member -> coordinator: ("desc", Descriptor), ("withdraw", key), ("blocked", key), ...
VERDICT_TAG = 102  # coordinator -> member: Verdict

#: how long a member that timed out keeps waiting for the coordinator's verdict after withdrawing
WITHDRAW_GRACE_S = 2.0
#: how long a member waits for a verdict before telling the coordinator which key it waits for;
#: short enough that collectives which can never match are reported at once, long enough that
#: a collective that completes normally sends nothing extra
BLOCKED_REPORT_S = 0.2

#: kinds a member inside join() takes part in (with identity elements)
JOINABLE = ("allreduce", "grouped_allreduce")

Key = Tuple[Optional[str], int]


class CollectiveMismatch(HorovodInternalError):
    """The workers called different collectives, or the same one with different
    arguments (shape, dtype, op, root, name). Raised on every worker."""


class TensorInfo(NamedTuple):
    dtype: str
    shape: Tuple[int, ...]
    device: str  # "cpu", "cuda", ...


class Descriptor(NamedTuple):
    """One member's description of one collective: its ``occ``-th of name ``name``."""

    occ: int
    kind: str  # "allreduce", "allgather", "broadcast", "alltoall", "reducescatter", "barrier", ...
    name: Optional[str]
    tensors: Tuple[TensorInfo, ...] = ()
    op: Optional[str] = None
    root: Optional[int] = None  # a worker rank (hvd.rank()), as Horovod's root_rank is
    extra: Any = None  # kind-specific: alltoall splits, payload sizes, the process set to add

    @property
    def key(self) -> Key:
        return (self.name, self.occ)

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name!r}" if self.name else f"{self.kind} #{self.occ + 1}"


class Verdict(NamedTuple):
    #: the collective decided; None for the verdict that ends join()
    key: Optional[Key]
    error: Optional[str]
    #: every member's descriptor, by set rank; None for a member inside join()
    descriptors: Optional[Tuple[Optional[Descriptor], ...]] = None
    #: the error concerns a collective the members inside join() did not call: they carry on
    join_continues: bool = False
    #: the error is a member that did not arrive in time (raised as HvdDcTimeout)
    timeout: bool = False
    #: for the verdict that ends join(): the worker rank that joined last
    join_last: Optional[int] = None


# which tensor dimensions must agree, per kind: "all" or "tail" (all but the first)
_SHAPE_RULE = {"allreduce": "all", "reducescatter": "all", "broadcast": "all", "allgather": "tail",
               "alltoall": "tail", "grouped_allreduce": "all", "grouped_reducescatter": "all",
               "grouped_allgather": "tail"}


def _compare(a: Descriptor, b: Descriptor, ra: int, rb: int) -> Optional[str]:
    """The first difference between worker ``ra``'s and ``rb``'s descriptors, in words."""
    if a.kind != b.kind:
        return (f"worker {ra} called {a.label} but worker {rb} called {b.label} at the same point; every worker "
                "must call the same collectives, with the same names, in the same order")
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
    if a.kind in ("add_process_set", "remove_process_set") and a.extra != b.extra:
        verb, what_a, what_b = ("add", list(a.extra), list(b.extra)) if a.kind == "add_process_set" else (
            "remove", f"id {a.extra}", f"id {b.extra}")
        return (f"{a.kind}: worker {ra} asked to {verb} process set {what_a} but worker {rb} {what_b}; every "
                f"worker must {verb} the same process sets in the same order")
    if a.root != b.root:
        return f"mismatched {what} root ranks: worker {ra} passed root_rank={a.root}, worker {rb} passed {b.root}"
    return None


class Operation:
    """One collective on one member: waiting for its verdict, then its data phase.

    ``start(verdict)`` starts the data phase (returns MPI requests); ``finish(verdict)``
    makes the result once they completed. Both are the collective's, not the engine's."""

    def __init__(self, start: Callable[[Verdict], List[MPI.Request]], finish: Callable[[Verdict], Any]) -> None:
        self.start = start
        self.finish = finish
        self.desc: Optional[Descriptor] = None
        self.verdict: Optional[Verdict] = None
        self.requests: Optional[List[MPI.Request]] = None
        self.done = False
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.data_deadline: Optional[float] = None
        self.withdrawn = False
        self.blocked_reported = False

    def fail(self, exc: BaseException) -> None:
        self.error = exc
        self.done = True


class _Decided:
    """The keys a coordinator has decided, per name: all occurrences below ``floor``
    plus the few decided out of order, so that late messages of a decided key are dropped
    without keeping every key ever seen."""

    def __init__(self) -> None:
        self.floor: Dict[Optional[str], int] = {}
        self.above: Dict[Optional[str], set] = {}

    def add(self, key: Key) -> None:
        name, occ = key
        above = self.above.setdefault(name, set())
        above.add(occ)
        floor = self.floor.get(name, 0)
        while floor in above:
            above.discard(floor)
            floor += 1
        self.floor[name] = floor

    def __contains__(self, key: Key) -> bool:
        name, occ = key
        return occ < self.floor.get(name, 0) or occ in self.above.get(name, ())


class Coordinator:
    """Set rank 0's half of an engine: collects every member's descriptors by key and
    decides each key once (see the module docstring)."""

    def __init__(self, eng: "Engine") -> None:
        self.eng = eng
        self.table: Dict[Key, Dict[int, Descriptor]] = {}
        self.withdrawn: Dict[Key, List[int]] = {}
        self.blocked: Dict[int, Key] = {}
        self.joined: Dict[int, int] = {}  # set rank -> order in which it joined
        self._join_order = 0
        self.decided = _Decided()
        self._recv: Dict[int, Optional[MPI.Request]] = {r: None for r in range(1, eng.size)}

    # -- messages ------------------------------------------------------------------------

    def receive(self) -> None:
        """Take every message already sent by the other members, in their order."""
        for r in self._recv:
            while True:
                if self._recv[r] is None:
                    self._recv[r] = self.eng.comm.irecv(source=r, tag=NEGOTIATE_TAG)
                done, msg = self._recv[r].test()  # type: ignore[union-attr]
                if not done:
                    break
                self._recv[r] = None
                self.handle(r, msg)

    def handle(self, r: int, msg: Tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "desc":
            desc: Descriptor = msg[1]
            if desc.key not in self.decided:  # else a late message of a decided key: its verdict was sent
                self.table.setdefault(desc.key, {})[r] = desc
        elif kind == "withdraw":
            if msg[1] not in self.decided:
                self.withdrawn.setdefault(msg[1], []).append(r)
                self.table.setdefault(msg[1], {})
        elif kind == "blocked":
            self.blocked[r] = msg[1]
        elif kind == "unblocked":
            if self.blocked.get(r) == msg[1]:
                del self.blocked[r]
        elif kind == "join":
            self.joined[r] = self._join_order
            self._join_order += 1
        elif kind == "unjoin":
            self.joined.pop(r, None)

    # -- decisions -----------------------------------------------------------------------

    def step(self) -> None:
        self.receive()
        self._decide_ready()
        self._check_join_done()
        self._check_deadlock()

    def _decide(self, verdict: Verdict) -> None:
        eng = self.eng
        key = verdict.key
        if key is not None:
            self.table.pop(key, None)
            self.withdrawn.pop(key, None)
            self.decided.add(key)
            for r in [r for r, k in self.blocked.items() if k == key]:
                del self.blocked[r]
        for r in range(1, eng.size):
            eng.outbox.append(eng.comm.isend(verdict, dest=r, tag=VERDICT_TAG))
        eng.flush_outbox()
        eng.apply(verdict)  # after sending: the coordinator starts its data phase in the same order

    def _names(self, ranks: Sequence[int]) -> str:
        return ", ".join(self.eng.describe(r) for r in ranks)

    def _timeout_verdict(self, key: Key) -> Verdict:
        eng = self.eng
        descs = self.table.get(key, {})
        missing = [r for r in range(eng.size) if r not in descs and r not in self.joined]
        label = next(iter(descs.values())).label if descs else _label_of(key)
        if missing:
            what = f"{self._names(missing)} did not reach {label}"
        else:
            what = f"{self._names(self.withdrawn.get(key, []))} stopped waiting for {label}"
        return Verdict(key, f"{what}{eng.where} within {eng.timeout:g} s (set HVD_DC_TIMEOUT to wait longer)",
                       timeout=True)

    def _decide_ready(self) -> None:
        n = self.eng.size
        for key in list(self.table):
            descs = self.table[key]
            if key in self.withdrawn:
                self._decide(self._timeout_verdict(key))
                continue
            active = [r for r in range(n) if r not in self.joined]
            if not active or any(r not in descs for r in active):
                continue
            first = descs[active[0]]
            diff = None
            for r in active[1:]:
                diff = _compare(first, descs[r], self.eng.members[active[0]], self.eng.members[r])
                if diff:
                    break
            if diff:
                self._decide(Verdict(key, diff + self.eng.where_suffix))
            elif self.joined and first.kind not in JOINABLE:
                names = self._names(sorted(self.joined))
                self._decide(Verdict(key, f"{first.label} cannot run: {names} already called join(), after which "
                                          "only allreduce can run until every worker has joined",
                                     join_continues=True))
            else:
                self._decide(Verdict(key, None, tuple(descs.get(r) for r in range(n))))

    def expire(self, key: Key) -> None:
        """The coordinator's own wait for ``key`` ran out: decide it as a timeout naming the
        members that did not arrive."""
        self.receive()
        self._decide_ready()
        if key not in self.decided:
            self._decide(self._timeout_verdict(key))

    def _check_join_done(self) -> None:
        if self.joined and len(self.joined) == self.eng.size:
            last = max(self.joined, key=lambda r: self.joined[r])
            self.joined.clear()
            self._join_order = 0
            self._decide(Verdict(None, None, join_last=self.eng.members[last]))

    def _check_deadlock(self) -> None:
        """Every member waits for a key that is not complete, or is inside join(): none of
        those keys can ever complete; decide each as an error naming the difference."""
        if not self.table:
            return
        waiting = {r: k for r, k in self.blocked.items() if k in self.table}
        if not waiting:
            return
        if any(r not in waiting and r not in self.joined for r in range(self.eng.size)):
            return
        # every message is written before any key leaves the table: each names what the others wait for
        messages = {key: self._deadlock_message(key, waiting) for key in dict.fromkeys(waiting[r] for r in
                                                                                    sorted(waiting))}
        for key, message in messages.items():
            self._decide(Verdict(key, message))

    def _deadlock_message(self, key: Key, waiting: Dict[int, Key]) -> str:
        eng = self.eng
        descs = self.table[key]
        r = min((rr for rr in waiting if waiting[rr] == key and rr in descs), default=min(descs))
        mine = descs[r]
        others = [m for m in range(eng.size) if m not in descs and m not in self.joined]
        if not others:  # cannot happen: the key would be complete
            return f"{mine.label}{eng.where} cannot complete"
        m = others[0]
        theirs = self.table.get(waiting.get(m, key), {}).get(m)
        if theirs is not None:
            diff = _compare(mine, theirs, eng.members[r], eng.members[m])
            if diff:
                return diff + eng.where_suffix
            return (f"worker {eng.members[r]} waits for {mine.label} (its call number {mine.occ + 1} of that name) "
                    f"and worker {eng.members[m]} for {theirs.label} (its call number {theirs.occ + 1}){eng.where}: "
                    "neither can complete; every worker must call the same collectives with the same names, each "
                    "name as often")
        return (f"worker {eng.members[r]} waits for {mine.label}{eng.where}, which worker {eng.members[m]} did not "
                "call; every worker must call the same collectives with the same names")


def _label_of(key: Key) -> str:
    name, occ = key
    return f"collective {name!r}" if name else f"collective #{occ + 1}"


class Engine:
    """The collectives of one process set on one member: the set's communicator, the
    per-name counters, the operations waiting for a verdict or in their data phase, and
    on the set's first member the :class:`Coordinator`.

    ``members``: the set's worker ranks (``hvd.rank()``), sorted; set rank ``i`` is
    worker ``members[i]``. ``servers``: how many world ranks serve (world rank of a
    worker = its rank + ``servers``), to name ranks in errors. ``where``: how errors name
    the set ("" for the global set)."""

    def __init__(self, comm: MPI.Comm, timeout: float, members: Optional[Sequence[int]] = None, servers: int = 1,
                 where: str = "") -> None:
        self.comm = comm
        self.size = comm.Get_size()
        self.rank = comm.Get_rank()
        self.timeout = timeout
        self.members = tuple(range(self.size)) if members is None else tuple(members)
        self.servers = servers
        self.where = where
        self.worker_rank = self.members[self.rank]
        self.counters: Dict[Optional[str], int] = {}
        self.pending: Dict[Key, Operation] = {}
        self.running: List[Operation] = []
        self.early: Dict[Key, Verdict] = {}
        self.outbox: List[MPI.Request] = []
        self.names_in_flight: set = set()
        self.coordinator = Coordinator(self) if self.rank == 0 else None
        self._verdict_req: Optional[MPI.Request] = None
        #: set when a data phase failed: MPI's collective order can no longer be trusted
        self.broken: Optional[str] = None
        self.joined = False
        self.join_result: Optional[int] = None
        #: verdicts a member inside join() serves with identity elements, in order
        self.to_serve: List[Verdict] = []
        self.cross_rank = 0
        self.cross_size = 1
        self.closed = False

    # -- naming ---------------------------------------------------------------------------

    @property
    def where_suffix(self) -> str:
        """The set, to end a message that does not name it otherwise ("" for the global set)."""
        return f" ({self.where.strip()})" if self.where else ""

    def describe(self, set_rank: int) -> str:
        w = self.members[set_rank]
        return f"worker {w} (world rank {w + self.servers})"

    def set_rank_of(self, worker_rank: int) -> Optional[int]:
        """The set rank of worker ``worker_rank``, or None if it is not a member."""
        try:
            return self.members.index(worker_rank)
        except ValueError:
            return None

    # -- messages -------------------------------------------------------------------------

    def flush_outbox(self) -> None:
        """Drop the sends that completed; the others stay referenced (their buffers must
        live until MPI has sent them)."""
        self.outbox = [r for r in self.outbox if not r.Test()]

    def _tell(self, msg: Tuple[Any, ...]) -> None:
        if self.coordinator is not None:
            self.coordinator.handle(0, msg)
        else:
            self.outbox.append(self.comm.isend(msg, dest=0, tag=NEGOTIATE_TAG))
            self.flush_outbox()

    def check_usable(self) -> None:
        if self.broken:
            raise HorovodInternalError(
                f"hvd_dc collectives{self.where} are unusable: {self.broken}; the job must be restarted")
        if self.closed:
            raise HorovodInternalError(f"hvd_dc: the process set{self.where} was removed")

    # -- a member's operations ------------------------------------------------------------

    def submit(self, op: Operation, kind: str, name: Optional[str], tensors: Sequence[TensorInfo] = (),
               reduce_op: Optional[str] = None, root: Optional[int] = None, extra: Any = None) -> None:
        occ = self.counters.get(name, 0)
        self.counters[name] = occ + 1
        desc = Descriptor(occ, kind, name, tuple(tensors), reduce_op, root, extra)
        op.desc = desc
        self.pending[desc.key] = op
        early = self.early.pop(desc.key, None)
        if early is not None:  # decided before this member arrived (it was late): raise what the others raised
            self.apply(early)
            return
        if self.size == 1:
            self.apply(Verdict(desc.key, None, (desc,)))
            return
        self._tell(("desc", desc))

    def apply(self, verdict: Verdict) -> None:
        """Act on a verdict, in the order verdicts were decided."""
        if verdict.key is None:
            self.join_result = verdict.join_last
            self.joined = False
            return
        op = self.pending.pop(verdict.key, None)
        if op is None:
            name, occ = verdict.key
            if self.joined:
                # decided while this member was inside join(): it counts as called here too
                self.counters[name] = max(self.counters.get(name, 0), occ + 1)
                if verdict.error is None:
                    self.to_serve.append(verdict)
            elif occ >= self.counters.get(name, 0):
                self.early[verdict.key] = verdict
            return  # else a verdict for a collective this member gave up on: already raised here
        op.verdict = verdict
        if verdict.error:
            cls = HvdDcTimeout if verdict.timeout else CollectiveMismatch
            op.fail(cls(f"hvd_dc worker {self.worker_rank}: {verdict.error}"))
            return
        try:
            op.requests = op.start(verdict)
        except BaseException as exc:  # nothing was started on this member: MPI's order is broken
            self.broken = f"the data phase of {op.desc.label} could not start ({exc})"  # type: ignore[union-attr]
            op.fail(exc)
            return
        op.data_deadline = time.monotonic() + self.timeout
        self.running.append(op)

    def progress(self) -> None:
        """Move everything along without blocking: messages, decisions, data phases."""
        if self.outbox:
            self.flush_outbox()
        if self.coordinator is not None:
            self.coordinator.step()
        else:
            self._receive_verdicts()
        if self.running:
            self.running = [op for op in self.running if not self._advance(op)]

    def _receive_verdicts(self) -> None:
        while True:
            if self._verdict_req is None:
                self._verdict_req = self.comm.irecv(source=0, tag=VERDICT_TAG)
            done, verdict = self._verdict_req.test()
            if not done:
                return
            self._verdict_req = None
            self.apply(verdict)

    def _advance(self, op: Operation) -> bool:
        """Test ``op``'s data phase; True once it is done."""
        if all(r.Test() for r in op.requests or ()):
            try:
                op.result = op.finish(op.verdict)  # type: ignore[arg-type]
            except BaseException as exc:
                op.error = exc
            op.done = True
            return True
        if op.data_deadline is not None and time.monotonic() > op.data_deadline:
            label = op.desc.label  # type: ignore[union-attr]
            self.broken = f"the data phase of {label} did not complete"
            op.fail(HvdDcTimeout(
                f"hvd_dc worker {self.worker_rank}: {label}{self.where} started on every worker but its data did not "
                f"arrive within {self.timeout:g} s"))
            return True
        return False

    def tend(self, op: Operation, since: float, deadline: float, now: float) -> None:
        """Called while this member waits for ``op``'s verdict: tell the coordinator once
        the wait is long (so that it can find collectives that never match), and when the
        timeout passes decide it (coordinator) or withdraw, then give up after the grace."""
        if op.done or op.verdict is not None or op.desc is None:
            return
        key = op.desc.key
        if not op.blocked_reported and now - since >= BLOCKED_REPORT_S and self.size > 1:
            op.blocked_reported = True
            self._tell(("blocked", key))
        if now < deadline:
            return
        if self.coordinator is not None:
            self.coordinator.expire(key)
        elif not op.withdrawn:
            op.withdrawn = True
            self._tell(("withdraw", key))
        elif now >= deadline + WITHDRAW_GRACE_S:
            self.pending.pop(key, None)
            op.fail(HvdDcTimeout(
                f"hvd_dc worker {self.worker_rank}: {op.desc.label}{self.where} among {self.size} workers did not "
                f"complete within {self.timeout:g} s: {self.describe(0)}, which coordinates these collectives, did "
                "not reach it or answer (set HVD_DC_TIMEOUT to wait longer)"))

    def stop_waiting(self, op: Operation) -> None:
        """The wait for ``op`` ended; if it ended without a verdict (an interrupt), take
        back the report that this member waits for it."""
        if op.blocked_reported and op.verdict is None and not op.withdrawn and op.desc is not None:
            self._tell(("unblocked", op.desc.key))
        op.blocked_reported = False

    # -- join -----------------------------------------------------------------------------

    def start_join(self) -> None:
        self.joined = True
        self.join_result = None
        self.to_serve = []
        self._tell(("join",))

    def leave_join(self) -> None:
        self.joined = False
        self._tell(("unjoin",))

    def not_joined(self) -> List[int]:
        """On the coordinator: the worker ranks that have not called join()."""
        if self.coordinator is None:
            return []
        return [self.members[r] for r in range(self.size) if r not in self.coordinator.joined]


# -- the live engines ------------------------------------------------------------------------------

_global: Optional[Engine] = None
_owner: Any = None
_engines: List[Engine] = []


def register(eng: Engine) -> None:
    """List ``eng`` among the engines every wait keeps moving."""
    _engines.append(eng)


def unregister(eng: Engine) -> None:
    """Take ``eng`` off the list, withdraw its posted receives and free its communicator
    (every member does this together, after its collectives completed)."""
    eng.closed = True
    if eng in _engines:
        _engines.remove(eng)
    posted = [eng._verdict_req] + (list(eng.coordinator._recv.values()) if eng.coordinator is not None else [])
    for req in posted:
        if req is not None:
            req.Cancel()
            req.Wait()
    eng.comm.Free()


def engines() -> List[Engine]:
    """Every live engine of this member (the global set's first)."""
    return list(_engines)


def finish_data_phases(timeout: float) -> None:
    """Complete the data phases this member started (asynchronous collectives whose
    handles were never synchronized) before MPI is finalized, which must not find them
    active; at most ``timeout`` seconds. Collectives still waiting for a verdict cannot
    complete without the other members and are left."""
    end = time.monotonic() + timeout
    backoff = Backoff()
    while any(eng.running for eng in _engines) and time.monotonic() < end:
        for eng in list(_engines):
            eng.progress()
        backoff.wait()


def attach(ctx: Any) -> None:
    """Create the global set's engine for the context ``init`` just made (collective over
    the workers: duplicates their communicator, and splits it by local rank for Horovod's
    ``cross_rank``/``cross_size``)."""
    global _global, _owner
    comm = ctx.workers.Dup()
    _engines.clear()
    _global = Engine(comm, ctx.settings.timeout, servers=ctx.topology.servers)
    cross = ctx.workers.Split(ctx.local.Get_rank(), key=ctx.workers.Get_rank())
    _global.cross_rank, _global.cross_size = cross.Get_rank(), cross.Get_size()
    cross.Free()
    register(_global)
    _owner = ctx


def engine(ctx: Any) -> Engine:
    """The global set's engine of ``ctx`` (made by :func:`attach` at ``init``)."""
    if _global is None or _owner is not ctx:
        raise RuntimeError("hvd_dc collectives are not set up; call hvd_dc.init() first")
    return _global

"""The behaviours Horovod's own test suite (test/parallel/test_torch.py) checks, written
for hvd_dc: ``mpiexec -n 3 python horovod_cases.py --out DIR --case NAME`` runs one case
on every worker (world rank 0 serves). A case asserts on each worker and returns details;
each worker writes them (``ok``) to DIR. tests/test_horovod_conformance.py runs every case
in its own mpiexec, so a failure cannot leave the next case's collectives out of step.
"""

import itertools
import time
import warnings

import torch
import torch.nn.functional as F

import hvd_dc as hvd
from common import parser, write_result

CASES = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


INTS = [torch.int32, torch.int64]
FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
ALL = [torch.uint8, torch.int8, torch.int16] + INTS + FLOATS
DIMS = [1, 2, 3]


def rand(dim, dtype, seed=1234, low=-100, high=100):
    torch.manual_seed(seed)
    return torch.empty([17] * dim).random_(low, high).to(dtype)


def raises(fn, exc=RuntimeError):
    """Call ``fn``; return (message, seconds) of the exception it must raise."""
    t0 = time.monotonic()
    try:
        fn()
    except exc as e:
        return str(e), time.monotonic() - t0
    raise AssertionError(f"{fn} did not raise {exc.__name__}")


# -- identity -------------------------------------------------------------------------------------


@case
def ranks(r, n):
    from mpi4py import MPI
    assert hvd.is_initialized()
    assert hvd.rank() == MPI.COMM_WORLD.Get_rank() - 1 and hvd.size() == MPI.COMM_WORLD.Get_size() - 1
    assert hvd.local_rank() == r and hvd.local_size() == n
    assert hvd.cross_rank() == 0 and hvd.cross_size() == 1 and hvd.is_homogeneous()
    return {}


# -- allreduce ------------------------------------------------------------------------------------


@case
def allreduce_sum(r, n):
    for dtype, dim in itertools.product(INTS + FLOATS, DIMS):
        t = rand(dim, dtype, high=50)  # sums of two stay exact in float16/bfloat16
        out = hvd.allreduce(t, average=False)
        assert out.dtype == dtype and out.shape == t.shape
        assert torch.equal(out, t * n), (dtype, dim)
        assert torch.equal(hvd.allreduce(t, op=hvd.Sum), out)
    return {}


@case
def allreduce_average(r, n):
    for dtype, dim in itertools.product(INTS + FLOATS, DIMS):
        t = rand(dim, dtype, high=50)
        assert torch.equal(hvd.allreduce(t, average=True), t), (dtype, dim)
        assert torch.equal(hvd.allreduce(t), t)  # Average is the default op
    # different values: integers average truncated, as Horovod's float64 scaling does
    assert hvd.allreduce(torch.tensor([r * 3 + 1])).tolist() == [int((1 + 4) / 2)]
    return {}


@case
def allreduce_min_max_product(r, n):
    for dtype, dim in itertools.product(INTS + [torch.float32, torch.float64], DIMS):
        torch.manual_seed(1234)
        all_ = torch.empty([n] + [17] * dim).random_(-100, 100).to(dtype)
        mine = all_[r]
        assert torch.equal(hvd.allreduce(mine, op=hvd.Min), all_.min(0).values)
        assert torch.equal(hvd.allreduce(mine, op=hvd.Max), all_.max(0).values)
        assert torch.equal(hvd.allreduce(mine, op=hvd.Product), all_.prod(0).to(dtype))
    return {}


@case
def allreduce_inplace(r, n):
    for dtype, dim in itertools.product(INTS + FLOATS, DIMS):
        t = rand(dim, dtype, high=50)
        expected = t * n
        out = hvd.allreduce_(t, average=False)
        assert out is t and torch.equal(t, expected), (dtype, dim)
    return {}


@case
def allreduce_positional_order(r, n):
    """Regression: allreduce_(tensor, average, name, op) in Horovod's positional order."""
    t = torch.ones(3) * (r + 1)
    hvd.allreduce_(t, None, "positional", hvd.Sum)
    assert t.tolist() == [3.0] * 3
    u = torch.ones(2) * (r + 1)
    assert hvd.allreduce(u, None, "positional2", hvd.Compression.none, hvd.Sum).tolist() == [3.0, 3.0]
    h = hvd.allreduce_async_(u, None, "positional3", hvd.Max)
    assert hvd.synchronize(h) is u and u.tolist() == [2.0, 2.0]
    return {}


@case
def allreduce_async_fused(r, n):
    tests, polled_false = [], False
    for dtype, dim in itertools.product(INTS + FLOATS, DIMS):
        t = rand(dim, dtype, high=50)
        h = hvd.allreduce_async(t, average=False)
        polled_false |= not hvd.poll(h)
        tests.append((h, t * n))
    assert polled_false, "poll() was never False: not asynchronous"
    for h, expected in tests:
        assert torch.equal(hvd.synchronize(h), expected)
    return {}


@case
def allreduce_prescale_postscale(r, n):
    """Regression: integer tensors are scaled in float64 (truncated back), 16-bit floats in
    float32, as Horovod does; they used to raise 'result type Float can't be cast'."""
    factor = 0.3711
    for dtype, dim in itertools.product(INTS + FLOATS, DIMS):
        t = rand(dim, dtype)
        pre = hvd.allreduce(t, average=False, prescale_factor=factor)
        post = hvd.allreduce(t, average=False, postscale_factor=factor)
        assert pre.dtype == dtype and post.dtype == dtype
        if dtype in INTS:
            assert torch.equal(pre, (t.double() * factor).to(dtype) * n), dtype
            assert torch.equal(post, ((t * n).double() * factor).to(dtype)), dtype
        elif dtype in (torch.float16, torch.bfloat16):
            one = (t.float() * factor).to(dtype)
            assert torch.equal(pre, (one.float() * n).to(dtype)), dtype
        else:
            assert torch.equal(pre, (t * factor) * n) and torch.equal(post, (t * n) * factor), dtype
    return {}


def _expect_mismatch(fn, *words):
    msg, seconds = raises(fn, hvd.HorovodInternalError)
    assert seconds < 2.5, f"the mismatch took {seconds:.1f} s to report"
    for w in words:
        assert w in msg, (w, msg)
    return msg


@case
def allreduce_shape_mismatch(r, n):
    """Different shapes (same rank, or same element count and another rank) fail on every
    worker, quickly, naming the tensor (they used to give no error)."""
    m1 = _expect_mismatch(lambda: hvd.allreduce(torch.ones([17 + r] * 3), name="grads"), "'grads'", "shape",
                          "[17, 17, 17]", "[18, 18, 18]")
    m2 = _expect_mismatch(lambda: hvd.allreduce(torch.ones([17, 23 * 57] if r == 0 else [17, 23, 57])), "rank")
    assert hvd.allreduce(torch.ones(2), op=hvd.Sum).tolist() == [2.0, 2.0]  # collectives still in step
    return {"messages": [m1, m2]}


@case
def allreduce_type_mismatch(r, n):
    """int32 on one worker and float32 on another is an error on both (it gave 1065353217)."""
    msg = _expect_mismatch(lambda: hvd.allreduce(torch.ones(17, dtype=torch.int32 if r % 2 == 0 else torch.float32)),
                           "int32", "float32")
    return {"message": msg}


@case
def op_mismatch(r, n):
    """Different ops (and average= vs op=) fail on every worker at once (they used to hang
    until HVD_DC_TIMEOUT)."""
    msg = _expect_mismatch(lambda: hvd.allreduce(torch.ones(3), op=hvd.Sum if r == 0 else hvd.Max), "op")
    _expect_mismatch(lambda: hvd.allreduce(torch.ones(3), name="x" if r == 0 else "y"), "names", "'x'", "'y'")
    _expect_mismatch(lambda: hvd.allreduce(torch.ones(3)) if r == 0 else hvd.broadcast(torch.ones(3), 0),
                     "allreduce", "broadcast")
    return {"message": msg}


@case
def duplicate_names(r, n):
    for submit in (lambda: hvd.allreduce_async(torch.ones(17), name="dup"),
                   lambda: hvd.allgather_async(torch.ones(17), name="dup"),
                   lambda: hvd.broadcast_async(torch.ones(17), root_rank=0, name="dup"),
                   lambda: hvd.reducescatter_async(torch.ones(17), name="dup")):
        h = submit()
        raises(submit, ValueError)
        hvd.synchronize(h)
    return {}


@case
def allreduce_grad(r, n):
    for dtype, dim, op in itertools.product([torch.float32, torch.float64], DIMS, [hvd.Sum, hvd.Average]):
        t = rand(dim, dtype).requires_grad_()
        out = hvd.allreduce(t, op=op)
        out.backward(torch.ones([17] * dim, dtype=dtype))
        expected = n if op == hvd.Sum else 1
        assert torch.equal(t.grad, torch.full([17] * dim, float(expected), dtype=dtype)), (dtype, dim, op)
    return {}


@case
def grouped_allreduce(r, n):
    for dtype, dim in itertools.product(INTS + FLOATS, DIMS):
        ts = [rand(dim, dtype, seed=s, high=50) for s in range(5)]
        summed = hvd.grouped_allreduce(ts, average=False)
        assert all(torch.equal(s, t * n) for s, t in zip(summed, ts))
        averaged = hvd.grouped_allreduce(ts, average=True)
        assert all(torch.equal(a, t) for a, t in zip(averaged, ts))
        copies = [t.clone() for t in ts]
        out = hvd.grouped_allreduce_(copies, average=False)
        assert all(o is c and torch.equal(c, t * n) for o, c, t in zip(out, copies, ts))
        h = hvd.grouped_allreduce_async(ts, op=hvd.Sum)
        assert all(torch.equal(s, t * n) for s, t in zip(hvd.synchronize(h), ts))
    return {}


@case
def grouped_allreduce_grad(r, n):
    for dtype, dim, op in itertools.product([torch.float32, torch.float64], DIMS, [hvd.Sum, hvd.Average]):
        ts = [rand(dim, dtype, seed=s).requires_grad_() for s in range(5)]
        outs = hvd.grouped_allreduce(ts, op=op)
        for o in outs:
            o.backward(torch.ones([17] * dim, dtype=dtype))
        expected = float(n if op == hvd.Sum else 1)
        assert all(torch.equal(t.grad, torch.full([17] * dim, expected, dtype=dtype)) for t in ts)
    return {}


# -- allgather ------------------------------------------------------------------------------------


@case
def allgather(r, n):
    sizes = [17, 32, 81, 12][:n]
    for dtype, dim in itertools.product(ALL + [torch.bool], DIMS):
        t = torch.ones([17] * dim).mul_(r).to(dtype)
        g = hvd.allgather(t)
        assert list(g.shape) == [17 * n] + [17] * (dim - 1) and g.dtype == dtype
        for i in range(n):
            assert torch.equal(g[i * 17:(i + 1) * 17], torch.ones([17] * dim).mul_(i).to(dtype))
        v = torch.ones([sizes[r]] + [17] * (dim - 1)).mul_(r).to(dtype)
        g = hvd.allgather(v)
        assert list(g.shape) == [sum(sizes)] + [17] * (dim - 1)
        for i in range(n):
            part = g[sum(sizes[:i]):sum(sizes[:i + 1])]
            assert part.shape[0] == sizes[i] and torch.equal(part, torch.ones(part.shape).mul_(i).to(dtype))
    return {}


@case
def allgather_async_fused(r, n):
    handles, polled_false = [], False
    for dtype, dim in itertools.product(ALL, DIMS):
        h = hvd.allgather_async(torch.ones([17] * dim).mul_(r).to(dtype))
        polled_false |= not hvd.poll(h)
        handles.append((h, dim, dtype))
    assert polled_false
    for h, dim, dtype in handles:
        g = hvd.synchronize(h)
        for i in range(n):
            assert torch.equal(g[i * 17:(i + 1) * 17], torch.ones([17] * dim).mul_(i).to(dtype))
    return {}


@case
def allgather_mismatch(r, n):
    """Other dimensions than the first, or dtypes, differing fail on every worker (the dtype
    case used to be cast silently)."""
    size = [17, 10 * (r + 1), 17]
    m1 = _expect_mismatch(lambda: hvd.allgather(torch.ones(size)), "shapes", "first")
    m2 = _expect_mismatch(lambda: hvd.allgather(torch.ones([17] * 3, dtype=torch.int32 if r % 2 == 0 else torch.float32)),
                          "int32", "float32")
    return {"messages": [m1, m2]}


@case
def allgather_grad(r, n):
    sizes = [3, 2, 7, 4][:n]
    for dtype, dim in itertools.product([torch.float32, torch.float64], DIMS):
        t = torch.ones([sizes[r]] + [17] * (dim - 1), dtype=dtype).mul_(r).requires_grad_()
        grad_ys = torch.cat([torch.ones([s] + [17] * (dim - 1), dtype=dtype) * i for i, s in enumerate(sizes)])
        hvd.allgather(t).backward(grad_ys)
        # Horovod 0.28: the gathered gradient is averaged over the workers, then sliced
        assert torch.equal(t.grad, torch.ones_like(t) * r), (dtype, dim)
    return {}


@case
def grouped_allgather(r, n):
    for dtype, dim in itertools.product(ALL, DIMS):
        ts = [torch.ones([17 + k] * dim).mul_(r).to(dtype) for k in range(3)]
        gs = hvd.grouped_allgather(ts)
        for k, g in enumerate(gs):
            assert g.shape[0] == (17 + k) * n
            for i in range(n):
                assert torch.equal(g[i * (17 + k):(i + 1) * (17 + k)], torch.ones([17 + k] * dim).mul_(i).to(dtype))
    ts = [torch.ones(2 + k, 3, dtype=torch.float64).mul_(r).requires_grad_() for k in range(2)]
    outs = hvd.grouped_allgather(ts)
    for o in outs:
        o.backward(torch.ones_like(o))
    assert all(torch.equal(t.grad, torch.ones_like(t)) for t in ts)
    return {}


# -- broadcast ------------------------------------------------------------------------------------


@case
def broadcast(r, n):
    for dtype, dim, root in itertools.product(ALL + [torch.bool], DIMS, range(n)):
        t = torch.ones([17] * dim).mul_(r).to(dtype)
        root_t = torch.ones([17] * dim).mul_(root).to(dtype)
        b = hvd.broadcast(t, root)
        assert torch.equal(b, root_t), (dtype, dim, root)
        if r != root:
            assert not torch.equal(t, root_t), "broadcast modified its input"
        c = t.clone()
        assert hvd.broadcast_(c, root) is c and torch.equal(c, root_t)
    return {}


@case
def broadcast_mismatch(r, n):
    """Shapes, dtypes (an int broadcast into a float used to give 9.8e-45) and root ranks
    (used to hang) that differ fail on every worker."""
    size = [17, 10 * (r + 1), 17]
    m1 = _expect_mismatch(lambda: hvd.broadcast(torch.ones(size), 0), "shape")
    m2 = _expect_mismatch(lambda: hvd.broadcast(torch.ones(17, dtype=torch.int32 if r % 2 == 0 else torch.float32), 0),
                          "int32", "float32")
    m3 = _expect_mismatch(lambda: hvd.broadcast(torch.ones(17), r), "root")
    raises(lambda: hvd.broadcast(torch.ones(2), n), ValueError)  # not a worker rank: local error
    return {"messages": [m1, m2, m3]}


@case
def broadcast_grad(r, n):
    for dtype, dim, root in itertools.product([torch.float32, torch.float64], DIMS, range(n)):
        t = torch.ones([17] * dim, dtype=dtype).mul_(r).requires_grad_()
        hvd.broadcast(t, root).backward(torch.ones([17] * dim, dtype=dtype))
        # Horovod 0.28: the output gradient averaged over the workers, on the root only
        expected = 1.0 if r == root else 0.0
        assert torch.equal(t.grad, torch.full_like(t, expected)), (dtype, dim, root)
    return {}


# -- alltoall -------------------------------------------------------------------------------------


def _alltoall_input(r, n, dim, dtype):
    vals = []
    for i in range(n):
        vals += [i] * (r + 1)
    t = torch.tensor(vals, dtype=torch.float32)
    for _ in range(dim - 1):
        t = t.unsqueeze(1)
        t = torch.cat((t, t), dim=1)
    return t.to(dtype)


@case
def alltoall(r, n):
    for dtype, dim in itertools.product(ALL, DIMS):
        t = _alltoall_input(r, n, dim, dtype)
        splits = torch.tensor([r + 1] * n, dtype=torch.int32)
        out, received = hvd.alltoall(t, splits)
        assert out.dtype == dtype and torch.equal(out, torch.full_like(out, r))
        assert out.numel() == n * (n + 1) // 2 * 2 ** (dim - 1)
        assert received.tolist() == [i + 1 for i in range(n)] and received.dtype == torch.int32
        eq = hvd.alltoall(t)  # equal split: rows // n to each
        assert eq.shape[0] == n * (n + 1) // 2 and torch.equal(eq, torch.full_like(eq, r))
        h = hvd.alltoall_async(t, splits)
        assert torch.equal(hvd.synchronize(h)[0], out)
    return {}


@case
def alltoall_argument_errors(r, n):
    raises(lambda: hvd.alltoall(torch.empty(n + 1)), ValueError)  # not a multiple of size()
    raises(lambda: hvd.alltoall(torch.empty(n - 1), torch.ones(n, dtype=torch.int32)), ValueError)  # sum > rows
    raises(lambda: hvd.alltoall(torch.empty(n), torch.empty(n, dtype=torch.float32)), ValueError)  # not int32
    assert hvd.alltoall(torch.arange(2 * n) + 10 * r).shape[0] == 2 * n  # still in step afterwards
    return {}


@case
def alltoall_mismatch(r, n):
    m1 = _expect_mismatch(lambda: hvd.alltoall(torch.empty(n, dtype=torch.int32 if r % 2 else torch.float32)),
                          "int32", "float32")
    size = [2 * n, 10 * (r + 1), 2 * n]
    m2 = _expect_mismatch(lambda: hvd.alltoall(torch.ones(size)), "shapes")
    return {"messages": [m1, m2]}


@case
def alltoall_grad(r, n):
    for dtype, dim in itertools.product([torch.float32, torch.float64], DIMS):
        t = _alltoall_input(r, n, dim, dtype).requires_grad_()
        out, _ = hvd.alltoall(t, torch.tensor([r + 1] * n, dtype=torch.int32))
        out.backward(torch.ones_like(out))
        assert torch.equal(t.grad, torch.ones_like(t))
        u = _alltoall_input(r, n, dim, dtype).requires_grad_()
        eq = hvd.alltoall(u)  # equal split
        eq.backward(torch.ones_like(eq))
        assert torch.equal(u.grad, torch.ones_like(u))
    return {}


# -- reducescatter --------------------------------------------------------------------------------


@case
def reducescatter(r, n):
    for dtype, dim in itertools.product(INTS + FLOATS, DIMS):
        t = rand(dim, dtype, high=50)
        rows = [17 // n + (1 if i < 17 % n else 0) for i in range(n)]
        start = sum(rows[:r])
        summed = hvd.reducescatter(t, op=hvd.Sum)
        assert summed.dtype == dtype and torch.equal(summed, (t * n)[start:start + rows[r]]), (dtype, dim)
        averaged = hvd.reducescatter(t)  # Average by default
        assert torch.equal(averaged, t[start:start + rows[r]])
        h = hvd.reducescatter_async(t, op=hvd.Sum)
        assert torch.equal(hvd.synchronize(h), summed)
    return {}


@case
def reducescatter_mismatch(r, n):
    m1 = _expect_mismatch(lambda: hvd.reducescatter(torch.ones([17 + r] * 3)), "shape")
    m2 = _expect_mismatch(lambda: hvd.reducescatter(torch.ones(17, dtype=torch.int32 if r % 2 == 0 else torch.float32)),
                          "int32", "float32")
    return {"messages": [m1, m2]}


@case
def reducescatter_grad(r, n):
    for dtype, dim, op in itertools.product([torch.float32, torch.float64], DIMS, [hvd.Sum, hvd.Average]):
        t = rand(dim, dtype).requires_grad_()
        out = hvd.reducescatter(t, op=op)
        out.backward(torch.ones_like(out))
        expected = float(n if op == hvd.Sum else 1)
        assert torch.equal(t.grad, torch.full_like(t, expected)), (dtype, dim, op)
    return {}


@case
def grouped_reducescatter(r, n):
    for dtype, dim in itertools.product(INTS + FLOATS, DIMS):
        ts = [rand(dim, dtype, seed=s, high=50) for s in range(3)]
        outs = hvd.grouped_reducescatter(ts, op=hvd.Sum)
        rows = [17 // n + (1 if i < 17 % n else 0) for i in range(n)]
        start = sum(rows[:r])
        assert all(torch.equal(o, (t * n)[start:start + rows[r]]) for o, t in zip(outs, ts))
        avg = hvd.synchronize(hvd.grouped_reducescatter_async(ts))
        assert all(torch.equal(o, t[start:start + rows[r]]) for o, t in zip(avg, ts))
    raises(lambda: hvd.grouped_reducescatter([torch.tensor(1.0), torch.ones(4)]), ValueError)  # a scalar
    ts = [rand(2, torch.float64, seed=s).requires_grad_() for s in range(2)]
    for o in hvd.grouped_reducescatter(ts, op=hvd.Sum):
        o.backward(torch.ones_like(o))
    assert all(torch.equal(t.grad, torch.full_like(t, float(n))) for t in ts)
    return {}


# -- objects, join, barrier, timeouts ---------------------------------------------------------------------


@case
def objects(r, n):
    expected = {"hello": 123, 0: [1, 2]}
    assert hvd.broadcast_object(expected if r == 0 else {}, root_rank=0) == expected
    d = {"metric_val_1": r}
    if r == 1:
        d["metric_val_2"] = 42
    got = hvd.allgather_object(d)
    want = [{"metric_val_1": i} for i in range(n)]
    want[1] = {"metric_val_1": 1, "metric_val_2": 42}
    assert got == want
    return {}


@case
def join_allreduce(r, n):
    for dtype, dim, first in itertools.product(INTS + [torch.float32, torch.float64], DIMS, range(n)):
        a = rand(dim, dtype, seed=1, high=50)
        b = rand(dim, dtype, seed=2, high=50)
        if r == first:
            last = hvd.join()
        else:
            ha = hvd.allreduce_async(a, name="a", op=hvd.Sum)
            hb = hvd.allreduce_async(b, name="b")
            sa, sb = hvd.synchronize(ha), hvd.synchronize(hb)
            # the joined worker contributes zeros; Average still divides by size()
            assert torch.equal(sa, a * (n - 1)), (dtype, dim)
            expected = ((b * (n - 1)).double() / n).to(dtype) if dtype in INTS else b * (n - 1) / n
            assert torch.equal(sb, expected), (dtype, dim)
            ga, gb = hvd.grouped_allreduce([a, b], op=hvd.Sum)  # grouped allreduce is served too
            assert torch.equal(ga, a * (n - 1)) and torch.equal(gb, b * (n - 1))
            last = hvd.join()
        assert last in range(n)
    return {}


@case
def join_other_collectives(r, n):
    """After a worker joined, allgather and broadcast fail on the workers that call them."""
    if r == 0:
        hvd.join()
        hvd.join()
        return {}
    msg1, _ = raises(lambda: hvd.allgather(torch.ones(17)))
    hvd.join()
    msg2, _ = raises(lambda: hvd.broadcast(torch.ones(17), 1))
    hvd.join()
    assert "join" in msg1 and "join" in msg2, (msg1, msg2)
    return {"messages": [msg1, msg2]}


@case
def join_timeout(r, n):
    """A join() that no other worker answers ends in HvdDcTimeout after HVD_DC_TIMEOUT: on
    the coordinator naming the workers that did not join, elsewhere naming the coordinator
    it waited on."""
    if r == 0:
        time.sleep(4.5)  # HVD_DC_TIMEOUT=3 for this case: worker 1 has given up by now
        msg, _ = raises(hvd.join, hvd.HvdDcTimeout)
        assert "workers [1] neither joined" in msg, msg
    else:
        msg, _ = raises(hvd.join, hvd.HvdDcTimeout)
        assert "worker 0 (world rank 1)" in msg, msg
        time.sleep(5.5)  # until worker 0's own join() gave up too (a barrier now would meet it in join())
    hvd.barrier()
    return {"message": msg}


@case
def barrier_and_timeout(r, n):
    """A worker missing from a collective is named, after HVD_DC_TIMEOUT, in a
    HorovodInternalError (a RuntimeError) on every worker that waited, and the late worker
    raises too instead of completing alone (HvdDcTimeout used to be a TimeoutError, and
    one worker could complete while another raised)."""
    hvd.barrier()
    if r == 1:
        time.sleep(4.5)  # HVD_DC_TIMEOUT=2 (+ the withdraw grace) for this case
    msg, seconds = raises(lambda: hvd.allreduce(torch.ones(3), name="late"), RuntimeError)
    assert "did not" in msg or "stopped waiting" in msg, msg
    if r == 0:
        assert "worker 1" in msg, msg
    try:
        raise hvd.HvdDcTimeout("x")
    except hvd.HorovodInternalError:
        pass
    assert issubclass(hvd.HvdDcTimeout, RuntimeError)
    hvd.barrier()
    assert hvd.allreduce(torch.ones(2), op=hvd.Sum).tolist() == [2.0, 2.0]  # in step again
    return {"message": msg}


@case
def out_of_step(r, n):
    """A worker that skipped a collective (its test failed) makes the next one an error on
    every worker, not a silently wrong result."""
    # worker 1's "test A" failed before its last allreduce; both go on to "test B"
    name = "test_a.metric" if r == 0 else "test_b.metric"
    msg, seconds = raises(lambda: hvd.allreduce(torch.ones(3), name=name), RuntimeError)
    assert "test_a.metric" in msg and "test_b.metric" in msg and seconds < 2.5, msg
    # unnamed: the skipped collective shows as a shape mismatch, not a wrong sum
    msg2, _ = raises(lambda: hvd.allreduce(torch.ones(3) if r == 0 else torch.ones(4)), RuntimeError)
    return {"messages": [msg, msg2]}


# -- the optimizer ----------------------------------------------------------------------------------


def _sgd_model(lr=0.1, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    return model, torch.optim.SGD(model.parameters(), lr=lr)


@case
def optimizer_keywords(r, n):
    model, opt = _sgd_model()
    groups = [[model[0].weight, model[0].bias]]
    # Horovod's positional order, then its keywords
    out = hvd.DistributedOptimizer(opt, model.named_parameters(), hvd.Compression.none, 1, hvd.Average,
                                   gradient_predivide_factor=2.0, groups=groups, sparse_as_dense=True,
                                   process_set=hvd.global_process_set, dc_variant="constant")
    assert out is opt and hvd.DistributedOptimizer is hvd.DistributedDCOptimizer
    m2, o2 = _sgd_model()
    raises(lambda: hvd.DistributedOptimizer(o2, m2.named_parameters(), op=hvd.Adasum), ValueError)
    raises(lambda: hvd.DistributedOptimizer(o2, m2.named_parameters(), op=hvd.Sum, gradient_predivide_factor=2.0),
           ValueError)
    raises(lambda: hvd.DistributedOptimizer(o2, m2.named_parameters(), process_set=hvd.ProcessSet([0])), ValueError)
    raises(lambda: hvd.DistributedOptimizer(o2, m2.named_parameters(), groups=[[m2[0].weight, m2[0].weight]]),
           ValueError)
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter("always")
        hvd.DistributedOptimizer(o2, m2.named_parameters(), num_groups=2)
    assert any(issubclass(w.category, DeprecationWarning) for w in ws)
    return {}


@case
def optimizer_op_sum(r, n):
    """lr_scaling="per_step" (default): a push is 1/size() of a Horovod step, so Average is
    applied with lr / size() and Sum with lr, the gradient as it is; "per_push": Average
    applies lr, Sum pushes size() times the gradient."""
    results = {}
    for scaling in ("per_step", "per_push"):
        for op in (hvd.Average, hvd.Sum):
            model = torch.nn.Linear(2, 1, bias=False)
            torch.nn.init.zeros_(model.weight)
            opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=1.0), model.named_parameters(),
                                           op=op, dc_variant="none", lr_scaling=scaling)
            model(torch.tensor([[1.0, 2.0]])).sum().backward()
            results[f"{scaling}_{op.value}"] = model.weight.grad.tolist()
            hvd.barrier()
            if r == 0:
                opt.step()
            hvd.barrier()
            opt.pull()
            results[f"{scaling}_{op.value}_w"] = model.weight.tolist()
    assert results["per_step_average"] == [[1.0, 2.0]] and results["per_step_sum"] == [[1.0, 2.0]]
    assert results["per_step_average_w"] == [[-1.0 / n, -2.0 / n]] and results["per_step_sum_w"] == [[-1.0, -2.0]]
    assert results["per_push_average"] == [[1.0, 2.0]] and results["per_push_sum"] == [[1.0 * n, 2.0 * n]]
    assert results["per_push_average_w"] == [[-1.0, -2.0]] and results["per_push_sum_w"] == [[-1.0 * n, -2.0 * n]]
    return results


@case
def optimizer_op_mismatch(r, n):
    model, opt = _sgd_model()
    msg, _ = raises(lambda: hvd.DistributedOptimizer(opt, model.named_parameters(),
                                                     op=hvd.Sum if r == 0 else hvd.Average), ValueError)
    assert "different" in msg, msg
    return {"message": msg}


@case
def checkpoint_after_wrap(r, n):
    """Horovod's imagenet example: wrap, load a checkpoint into the model on rank 0, then
    broadcast_parameters. The server takes the broadcast weights (they used to be replaced
    by its initial weights at the first step())."""
    model, opt = _sgd_model(lr=0.5 * n)  # Horovod's lr * size(): each push is applied with 0.5
    opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters(), dc_variant="none")
    torch.manual_seed(99)
    ckpt = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    if r == 0:
        model.load_state_dict(ckpt)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    assert all(torch.equal(v, ckpt[k]) for k, v in model.state_dict().items())
    x = torch.ones(1, 4)
    opt.zero_grad()
    model(x).sum().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    hvd.barrier()
    if r == 0:
        opt.step()  # one push: w = ckpt - lr * g
    hvd.barrier()
    opt.pull()
    for k, p in model.named_parameters():
        # every worker computed its gradient on the checkpoint weights; worker 0's was applied
        g0 = hvd.broadcast(grads[k], 0, name=f"g.{k}")
        assert torch.equal(grads[k], g0), k
        assert torch.allclose(p.detach(), ckpt[k] - 0.5 * g0, atol=1e-6), k
    return {}


@case
def broadcast_state_options(r, n):
    """broadcast_optimizer_state gives every worker root's hyperparameters (the server then
    applies root's lr to every push); the server's running state is its own."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    p0 = dict(lr=0.1, momentum=0.8, weight_decay=0.2, nesterov=True)
    p1 = dict(lr=0.2, momentum=0.9, weight_decay=0.1, nesterov=False)
    opt = torch.optim.SGD(model.parameters(), **(p0 if r == 0 else p1))
    opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters())
    hvd.broadcast_optimizer_state(opt, root_rank=0)
    for k, v in p0.items():
        assert opt.param_groups[0][k] == v and type(opt.param_groups[0][k]) is type(v), k
    model(torch.ones(3, 4)).sum().backward()
    opt.step()
    return {}


@case
def broadcast_state_loaded_checkpoint_refused(r, n):
    """Horovod's imagenet resume (load a checkpoint's optimizer state on rank 0, then
    broadcast_optimizer_state) cannot set the server's running state exactly: a ValueError
    on every worker naming checkpoint_path, and the server keeps training."""
    model, opt = _sgd_model(lr=0.1)
    opt.param_groups[0]["momentum"] = 0.9
    opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters())
    if r == 0:
        saved = {"state": {i: {"momentum_buffer": torch.ones_like(p)} for i, p in enumerate(model.parameters())},
                 "param_groups": opt.state_dict()["param_groups"]}
        opt.load_state_dict(saved)
    msg, _ = raises(lambda: hvd.broadcast_optimizer_state(opt, root_rank=0), ValueError)
    assert "checkpoint_path" in msg and "running state" in msg, msg
    opt.zero_grad()
    model(torch.ones(1, 4)).sum().backward()
    opt.step()  # training goes on with the server's own state
    return {"message": msg}


@case
def broadcast_state_no_grad(r, n):
    class ModelNoGrad(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Parameter(torch.tensor([1, 3], dtype=torch.int32), requires_grad=False)
            self.b = torch.nn.Parameter(torch.rand(4))

        def forward(self, x):
            return torch.index_select(self.b, 0, self.a.long()) * x

    model = ModelNoGrad()
    opt = torch.optim.SGD(model.parameters(), lr=0.001, weight_decay=1e-6, momentum=0.9, nesterov=True)
    opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters())
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(opt, root_rank=0)
    grad = opt.param_groups[0]["params"][1].grad
    assert opt.param_groups[0]["params"][0].grad is None
    assert torch.equal(hvd.broadcast(grad, root_rank=0), grad)
    model(torch.ones(2)).sum().backward()
    opt.step()
    return {}


@case
def named_parameters(r, n):
    """Duplicate or missing names are a ValueError; no names at all train."""
    net1, net2 = torch.nn.Conv2d(1, 1, 1), torch.nn.Conv2d(1, 1, 1)
    opt = torch.optim.SGD(itertools.chain(net1.parameters(), net2.parameters()), lr=0.1)
    msg, _ = raises(lambda: hvd.DistributedOptimizer(
        opt, named_parameters=itertools.chain(net1.named_parameters(), net2.named_parameters())), ValueError)
    assert "duplicate" in msg
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 1), torch.nn.Conv2d(8, 1, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    raises(lambda: hvd.DistributedOptimizer(opt, named_parameters=list(model.named_parameters())[0:1]), ValueError)
    opt = hvd.DistributedOptimizer(opt)  # no names
    loss = model(torch.rand(1, 1, 16, 16)).sum()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return {}


@case
def unused_parameters(r, n):
    """Parameters a worker's loss does not reach (force_allreduce), and parameters whose
    requires_grad is switched off and on (dynamic_requires_grad), train without error."""
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.fc3 = torch.nn.Linear(5, 4), torch.nn.Linear(4, 3), torch.nn.Linear(3, 3)

        def forward(self, x):
            x1 = self.fc2(F.relu(self.fc1(x)))
            return x1, self.fc3(F.relu(x1))

    for opt_class in (torch.optim.SGD, torch.optim.Adam, torch.optim.RMSprop):
        model = Net()
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        opt = hvd.DistributedOptimizer(opt_class(model.parameters(), lr=0.01), named_parameters=model.named_parameters())
        y1, y2 = model(torch.randn(8, 5))
        loss = y1.sum() if r == 0 else y2.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    gen, disc = torch.nn.Conv2d(1, 4, 1), torch.nn.Conv2d(4, 1, 1)
    gen_opt = hvd.DistributedOptimizer(torch.optim.SGD(gen.parameters(), lr=0.1), named_parameters=gen.named_parameters())
    disc_opt = hvd.DistributedOptimizer(torch.optim.SGD(disc.parameters(), lr=0.1),
                                        named_parameters=disc.named_parameters())
    inp = torch.rand(1, 1, 8, 8)
    for step in range(4):
        train_gen = step % 2 == 0
        for p in gen.parameters():
            p.requires_grad_(train_gen)
        for p in disc.parameters():
            p.requires_grad_(not train_gen)
        gen_opt.zero_grad()
        disc_opt.zero_grad()
        disc(gen(inp)).sum().backward()
        for p in gen.parameters():
            assert bool(p.grad.abs().max() > 0) == train_gen
        (gen_opt if train_gen else disc_opt).step()
    return {}


@case
def gradient_clipping(r, n):
    model = torch.nn.Linear(1, 1)
    model.weight = torch.nn.Parameter(torch.zeros(1, 1) + 0.5)
    model.bias = torch.nn.Parameter(torch.zeros(1))
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), named_parameters=model.named_parameters(),
                                   dc_variant="none")
    loss = F.mse_loss(model(torch.ones(1, 1)), torch.ones(1, 1))
    opt.zero_grad()
    loss.backward()
    opt.synchronize()
    prior = model.weight.grad.item()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
    clipped = model.weight.grad.item()
    assert abs(prior) > abs(clipped)
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter("always")
        with opt.skip_synchronize():
            opt.step()
    assert not ws, [str(w.message) for w in ws]
    return {"prior": prior, "clipped": clipped}


@case
def sync_batch_norm(r, n):
    torch.manual_seed(0)
    batches = [torch.stack([torch.tensor([[i, i + 1], [i * 2, i * 2 + 1], [i * 3, i * 3 + 1], [i * 4, i * 4 + 1]],
                                         dtype=torch.float32) for i in range(n)]),
               torch.stack([torch.tensor([[i + 1], [i * 2 + 1], [i * 3 + 1], [i * 4 + 1]], dtype=torch.float32)
                            for i in range(n)])]
    for ts in batches:
        sync_bn = hvd.SyncBatchNorm(num_features=4)
        bn = torch.nn.BatchNorm1d(num_features=4)
        ts1 = ts.clone().requires_grad_()
        ts2 = ts.clone().requires_grad_()
        out = sync_bn(ts1[r].unsqueeze(0))
        ref = bn(ts2)
        assert torch.allclose(out, ref[r].unsqueeze(0), atol=1e-5)
        assert torch.allclose(sync_bn.running_mean, bn.running_mean, atol=1e-5)
        assert torch.allclose(sync_bn.running_var, bn.running_var, atol=1e-5)
        out.sum().backward()
        ref.mean(dim=0).sum().backward()
        assert torch.allclose(hvd.allreduce(sync_bn.weight.grad, name="w"), bn.weight.grad, atol=1e-5)
        assert torch.allclose(hvd.allreduce(sync_bn.bias.grad, name="b"), bn.bias.grad, atol=1e-5)
        assert torch.allclose(hvd.allreduce(ts1.grad, name="x"), ts2.grad, atol=1e-5)
    return {}


# -- collectives matched by name ------------------------------------------------------------------


@case
def match_by_name(r, n):
    """Collectives are matched by name, as in Horovod, so one left pending does not hold up
    the others: worker 0 starts allreduce 'pending' and passes a barrier that worker 1
    reaches before it starts 'pending' (Horovod's *_duplicate_name_error tests do this; the
    workers used to wait on the barrier until HVD_DC_TIMEOUT). Named asynchronous
    collectives may also be started in different orders."""
    t0 = time.monotonic()
    t = torch.ones(3) * (r + 1)
    if r == 0:
        h = hvd.allreduce_async(t, name="pending", op=hvd.Sum)
    hvd.barrier()
    if r != 0:
        h = hvd.allreduce_async(t, name="pending", op=hvd.Sum)
    hvd.barrier()
    assert hvd.synchronize(h).tolist() == [float(n * (n + 1) // 2)] * 3
    order = ["a", "b"] if r == 0 else ["b", "a"]
    handles = {name: hvd.allgather_async(torch.full((1,), float(r)), name=name) for name in order}
    for name in ("a", "b"):
        assert hvd.synchronize(handles[name]).tolist() == [float(i) for i in range(n)]
    seconds = time.monotonic() - t0
    assert seconds < 10, f"took {seconds:.1f} s (HVD_DC_TIMEOUT=30 here: a wait that times out is a regression)"
    return {"seconds": seconds}


# -- process sets -----------------------------------------------------------------------------------


def _values(x):
    return torch.tensor([float(x + 1), 10.0 * (x + 1)])


@case
def process_set_collectives(r, n):
    """Every family of collectives inside process sets of 3 workers: [0, 2] (not
    contiguous) and [1, 2] (coordinated by worker 1, with worker 0 outside); ranks are
    worker ranks, results are in set-rank order, Average divides by the set's size."""
    assert n == 3
    a = hvd.add_process_set([2, 0])
    c = hvd.add_process_set(hvd.ProcessSet([1, 2]))
    assert (a.ranks, c.ranks, a.process_set_id, c.process_set_id) == ([0, 2], [1, 2], 1, 2)
    assert a.size() == 2 and c.size() == 2 and hvd.global_process_set.ranks == [0, 1, 2]
    assert hvd.global_process_set.rank() == r and hvd.global_process_set.size() == n
    assert [a.included(), c.included()] == [r in (0, 2), r in (1, 2)]
    for ps in (a, c):
        if not ps.included():
            continue
        assert ps.rank() == ps.ranks.index(r)
        root = ps.ranks[-1]  # a worker rank: set rank 1
        t = _values(r)
        total = sum(_values(x) for x in ps.ranks)
        assert torch.equal(hvd.allreduce(t, op=hvd.Sum, process_set=ps), total)
        assert torch.equal(hvd.allreduce(t, process_set=ps), total / 2)
        assert torch.equal(hvd.synchronize(hvd.allreduce_async(t, op=hvd.Max, name="m", process_set=ps)),
                           _values(max(ps.ranks)))
        summed = hvd.grouped_allreduce([t, 2 * t], op=hvd.Sum, process_set=ps)
        assert torch.equal(summed[0], total) and torch.equal(summed[1], 2 * total)
        gathered = hvd.allgather(torch.full((r + 1, 2), float(r)), process_set=ps)
        assert torch.equal(gathered, torch.cat([torch.full((x + 1, 2), float(x)) for x in ps.ranks]))
        assert torch.equal(hvd.broadcast(torch.full((3,), float(r)), root_rank=root, process_set=ps),
                           torch.full((3,), float(root)))
        send = torch.arange(3, dtype=torch.float32) + 100 * r  # row 0 to set rank 0, rows 1-2 to set rank 1
        got, received = hvd.alltoall(send, splits=torch.tensor([1, 2], dtype=torch.int32), process_set=ps)
        mine = [0] if ps.rank() == 0 else [1, 2]
        assert got.tolist() == [100.0 * x + i for x in ps.ranks for i in mine]
        assert received.tolist() == [len(mine)] * 2
        rows = hvd.reducescatter(torch.arange(10.0).reshape(5, 2) * (r + 1), op=hvd.Sum, process_set=ps)
        full = torch.arange(10.0).reshape(5, 2) * sum(x + 1 for x in ps.ranks)
        assert torch.equal(rows, full[:3] if ps.rank() == 0 else full[3:])
        hvd.barrier(process_set=ps)
        assert hvd.allgather_object(f"w{r}", process_set=ps) == [f"w{x}" for x in ps.ranks]
        assert hvd.broadcast_object({"from": r}, root_rank=root, process_set=ps) == {"from": root}
        torch.manual_seed(r)
        sparse = torch.rand(6, 4).mul(torch.rand(6, 4) > 0.6).to_sparse()
        dense = hvd.allreduce(sparse.to_dense(), process_set=ps)
        reduced = hvd.sparse_allreduce_async(sparse, name="sp", op=hvd.Average, process_set=ps)()
        assert torch.allclose(reduced.to_dense(), dense, atol=1e-6)
    hvd.barrier()
    assert hvd.allreduce(torch.ones(1), op=hvd.Sum).tolist() == [float(n)]
    return {}


@case
def process_set_grads(r, n):
    """Autograd through collectives in a set: the gradients are reduced over the set only."""
    assert n == 3
    a = hvd.add_process_set([0, 2])
    if a.included():
        for op, k in ((hvd.Sum, 2.0), (hvd.Average, 1.0)):
            t = torch.ones(4, dtype=torch.float64).requires_grad_()
            hvd.allreduce(t, op=op, process_set=a).backward(torch.ones(4, dtype=torch.float64))
            assert torch.equal(t.grad, torch.full((4,), k, dtype=torch.float64)), op
        t = torch.full((r + 1, 3), float(r), dtype=torch.float64).requires_grad_()
        g = hvd.allgather(t, process_set=a)
        g.backward(torch.cat([torch.full((x + 1, 3), float(x), dtype=torch.float64) for x in a.ranks]))
        assert torch.equal(t.grad, torch.full_like(t, float(r)))
        t = torch.ones(3, dtype=torch.float64).requires_grad_()
        hvd.broadcast(t, root_rank=2, process_set=a).backward(torch.ones(3, dtype=torch.float64))
        assert torch.equal(t.grad, torch.full_like(t, 1.0 if r == 2 else 0.0))
        t = torch.ones(4, 2, dtype=torch.float64).requires_grad_()
        out = hvd.reducescatter(t, op=hvd.Sum, process_set=a)
        out.backward(torch.ones_like(out))
        assert torch.equal(t.grad, torch.full_like(t, 2.0))
        ts = [torch.ones(3, dtype=torch.float64).requires_grad_() for _ in range(2)]
        for o in hvd.grouped_allreduce(ts, op=hvd.Sum, process_set=a):
            o.backward(torch.ones(3, dtype=torch.float64))
        assert all(torch.equal(t.grad, torch.full((3,), 2.0, dtype=torch.float64)) for t in ts)
        t = torch.arange(3, dtype=torch.float64).requires_grad_()
        out, _ = hvd.alltoall(t, splits=torch.tensor([1, 2], dtype=torch.int32), process_set=a)
        out.backward(torch.arange(out.numel(), dtype=torch.float64) + 1)
        # each row's gradient comes back from the member it went to: set rank 0 received row 0
        # of both (gradients 1, 2), set rank 1 rows 1-2 of both (gradients 1, 2 | 3, 4)
        back = [1.0, 1.0, 2.0] if a.rank() == 0 else [2.0, 3.0, 4.0]
        assert t.grad.tolist() == back, t.grad.tolist()
    hvd.barrier()
    return {}


@case
def process_set_independent(r, n):
    """Collectives of different sets do not wait for one another: worker 2 starts an
    allreduce in set [0, 2] that worker 0 reaches 3 s later, and meanwhile completes one in
    set [1, 2] with worker 1."""
    assert n == 3
    a = hvd.add_process_set([0, 2])
    c = hvd.add_process_set([1, 2])
    t0 = time.monotonic()
    fast = None
    if r == 0:
        time.sleep(3)
        slow = hvd.allreduce(torch.ones(2), op=hvd.Sum, name="slow", process_set=a)
    elif r == 1:
        hvd.allreduce(torch.ones(2), op=hvd.Sum, name="fast", process_set=c)
        fast = time.monotonic() - t0
    else:
        h = hvd.allreduce_async(torch.ones(2), op=hvd.Sum, name="slow", process_set=a)
        hvd.allreduce(torch.ones(2), op=hvd.Sum, name="fast", process_set=c)
        fast = time.monotonic() - t0
        assert not hvd.poll(h), "the allreduce of set [0, 2] completed without worker 0"
        slow = hvd.synchronize(h)
    if fast is not None:
        assert fast < 2.0, f"the allreduce of set [1, 2] took {fast:.1f} s: it waited for set [0, 2]"
    if r != 1:
        assert slow.tolist() == [2.0, 2.0]
    hvd.barrier()
    return {"fast": fast}


@case
def process_set_mismatch(r, n):
    """A mismatch inside a set is an error on its members at once, naming them by worker
    rank and the set; the worker outside is not involved, and the set works afterwards."""
    assert n == 3
    a = hvd.add_process_set([0, 2])
    messages = []
    if a.included():
        messages.append(_expect_mismatch(lambda: hvd.allreduce(torch.ones(3 + r), name="g", process_set=a),
                                         "'g'", "shape", "worker 0", "worker 2", "process set 1 [0, 2]"))
        messages.append(_expect_mismatch(lambda: hvd.allreduce(torch.ones(2), name="x" if r == 0 else "y",
                                                               process_set=a), "names", "'x'", "'y'"))
        messages.append(_expect_mismatch(
            lambda: hvd.allreduce(torch.ones(2), process_set=a) if r == 0 else hvd.allgather(torch.ones(2),
                                                                                            process_set=a),
            "allreduce", "allgather"))
        assert hvd.allreduce(torch.ones(2), op=hvd.Sum, process_set=a).tolist() == [2.0, 2.0]
    hvd.barrier()
    return {"messages": messages}


@case
def process_set_timeout(r, n):
    """A member of a set that does not arrive is named by its worker and world rank after
    HVD_DC_TIMEOUT on the members that waited, and raises too when it arrives."""
    assert n == 3
    c = hvd.add_process_set([1, 2])
    msg = None
    if r == 2:
        time.sleep(4.5)  # HVD_DC_TIMEOUT=3 for this case
    if c.included():
        msg, _ = raises(lambda: hvd.allreduce(torch.ones(2), name="late", process_set=c), hvd.HvdDcTimeout)
        assert "late" in msg and "process set 1 [1, 2]" in msg, msg
        if r == 1:
            assert "worker 2 (world rank 3) did not reach" in msg, msg
        assert hvd.allreduce(torch.ones(2), op=hvd.Sum, process_set=c).tolist() == [2.0, 2.0]
    else:
        # the set is done about 4.6 s in; arrive after that, within their 3 s wait, so that the
        # server does not see worker 0 finish long before the others
        time.sleep(5.5)
    hvd.barrier()
    return {"message": msg}


@case
def process_set_add_remove(r, n):
    """add_process_set and remove_process_set with Horovod's results and errors; workers
    that add different sets get an error on every worker."""
    from mpi4py import MPI

    s0 = hvd.add_process_set([0])
    s1 = hvd.add_process_set([1])
    assert (s0.process_set_id, s1.process_set_id) == (1, 2)
    raises(lambda: hvd.add_process_set([0]), ValueError)  # the ranks of s0
    raises(lambda: hvd.add_process_set(list(range(n))), ValueError)  # the ranks of the global set
    raises(lambda: hvd.add_process_set([0, n]), ValueError)  # n is no worker rank
    raises(lambda: hvd.add_process_set([]), ValueError)
    raises(lambda: hvd.add_process_set(hvd.ProcessSet(MPI.COMM_WORLD)), NotImplementedError)
    raises(lambda: hvd.ProcessSet(["a"]), ValueError)
    assert hvd.remove_process_set(s1) is True and s1.process_set_id is None and s1.size() is None
    assert hvd.remove_process_set(s1) is False
    assert hvd.remove_process_set(hvd.global_process_set) is False
    msg, _ = raises(lambda: hvd.allreduce(torch.ones(1), process_set=s1), hvd.ProcessSetError)
    assert "not been registered" in msg, msg
    s1 = hvd.add_process_set([1])  # the same ranks again: a new set, a new id
    assert s1.process_set_id == 3
    mine = s0 if r == 0 else s1
    assert hvd.allreduce(torch.ones(1) * (r + 1), op=hvd.Sum, process_set=mine).tolist() == [float(r + 1)]
    assert hvd.remove_process_set(s0) is True and hvd.remove_process_set(s1) is True
    msg = _expect_mismatch(lambda: hvd.add_process_set([r]), "add_process_set", "[0]", "[1]")
    assert hvd.add_process_set([0]).process_set_id == 4  # the failed add took no id
    return {"message": msg}


@case
def process_set_non_member(r, n):
    """A worker outside a set that calls a collective in it gets ProcessSetError (a
    HorovodInternalError, as in Horovod, and a ValueError) at once, and no other worker is
    affected; a root rank outside the set is a ValueError; an unregistered set is refused."""
    s = hvd.add_process_set([0])
    errors = {}
    if r == 0:
        assert s.rank() == 0 and s.included() is True
        assert hvd.allreduce(torch.ones(2), op=hvd.Sum, process_set=s).tolist() == [1.0, 1.0]
        msg, _ = raises(lambda: hvd.broadcast(torch.ones(1), root_rank=1, process_set=s), ValueError)
        assert "not a member" in msg, msg
    else:
        assert s.included() is False and s.size() == 1
        raises(s.rank, ValueError)
        calls = {
            "allreduce": lambda: hvd.allreduce(torch.ones(2), process_set=s),
            "allreduce_async_": lambda: hvd.allreduce_async_(torch.ones(2), process_set=s),
            "grouped_allreduce": lambda: hvd.grouped_allreduce([torch.ones(2)], process_set=s),
            "allgather": lambda: hvd.allgather(torch.ones(2), process_set=s),
            "grouped_allgather": lambda: hvd.grouped_allgather([torch.ones(2)], process_set=s),
            "broadcast": lambda: hvd.broadcast(torch.ones(2), 0, process_set=s),
            "alltoall": lambda: hvd.alltoall(torch.ones(2), process_set=s),
            "reducescatter": lambda: hvd.reducescatter(torch.ones(2), process_set=s),
            "grouped_reducescatter": lambda: hvd.grouped_reducescatter([torch.ones(2)], process_set=s),
            "barrier": lambda: hvd.barrier(process_set=s),
            "allgather_object": lambda: hvd.allgather_object(1, process_set=s),
            "broadcast_object": lambda: hvd.broadcast_object(1, 0, process_set=s),
            "sparse_allreduce_async": lambda: hvd.sparse_allreduce_async(torch.ones(2).to_sparse(), "s", hvd.Sum,
                                                                         process_set=s),
        }
        for name, fn in calls.items():
            msg, seconds = raises(fn, hvd.ProcessSetError)
            assert f"worker {r} is not a member" in msg and seconds < 0.5, (name, msg)
            errors[name] = msg
        assert issubclass(hvd.ProcessSetError, hvd.HorovodInternalError)
        assert issubclass(hvd.ProcessSetError, ValueError)
    msg, _ = raises(lambda: hvd.allreduce(torch.ones(1), process_set=hvd.ProcessSet([0])), hvd.ProcessSetError)
    assert "not been registered" in msg, msg
    hvd.barrier()
    return {"errors": errors}


@case
def process_set_optimizer(r, n):
    """DistributedOptimizer(process_set=...) other than the global set is a ValueError that
    says why (every push goes to the one parameter server; a set cannot train a model of
    its own); the global set trains."""
    s = hvd.add_process_set([0])
    model, opt = _sgd_model()
    msg, _ = raises(lambda: hvd.DistributedOptimizer(opt, model.named_parameters(), process_set=s), ValueError)
    assert "parameter server" in msg and "model of its own" in msg, msg
    opt = hvd.DistributedOptimizer(opt, model.named_parameters(), process_set=hvd.global_process_set)
    model(torch.ones(2, 4)).sum().backward()
    opt.step()
    assert opt.stats()["pushes"] == 1
    return {"message": msg}


#: the sets process_sets_at_init passes to hvd.init (main() does)
AT_INIT = [hvd.ProcessSet([1]), hvd.ProcessSet([0])]


@case
def process_sets_at_init(r, n):
    """hvd.init(process_sets=[...]) (Horovod's keyword) adds the sets on every worker, in
    the list's order; anything but a list or 'dynamic' is a ValueError."""
    assert [ps.process_set_id for ps in AT_INIT] == [1, 2] and [ps.ranks for ps in AT_INIT] == [[1], [0]]
    mine = AT_INIT[1 - r]
    assert mine.included() and mine.rank() == 0
    assert hvd.allreduce(torch.ones(1) * (r + 1), op=hvd.Sum, process_set=mine).tolist() == [float(r + 1)]
    raises(lambda: hvd.init(process_sets=5), ValueError)
    hvd.init(process_sets="dynamic")  # already initialised: accepted, nothing happens
    return {}


# -- the optimizer's parameter names, sparse allreduce ------------------------------------------------


@case
def parameter_names_without_named_parameters(r, n):
    """Without named_parameters the optimizer still names every parameter
    (``_parameter_names``, as Horovod's does), the same names on every worker; it used to
    raise AttributeError."""
    model = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.Linear(10, 10))
    opt = torch.optim.SGD([{"params": model[0].parameters()}, {"params": model[1].parameters()}], lr=0.001)
    opt = hvd.DistributedOptimizer(opt)
    names = opt._parameter_names
    assert set(names) == set(model.parameters()) and len(set(names.values())) == 4, names
    everyone = hvd.allgather_object(sorted(names.values()))
    assert all(e == everyone[0] for e in everyone), everyone
    model(torch.ones(1, 10)).sum().backward()
    opt.step()
    return {"names": sorted(names.values())}


@case
def sparse_allreduce(r, n):
    """sparse_allreduce_async (Horovod's): the handle is a function returning a sparse
    tensor whose dense value is the dense allreduce; Average and Sum; hvd.synchronize takes
    the handle too; dense input and other ops are ValueError."""
    torch.manual_seed(100 + r)

    def sparse(rows):
        t = torch.rand(rows, 10)
        t[t < 0.8] = 0
        return t.to_sparse()

    for op in (hvd.Average, hvd.Sum):
        ts = [sparse(d) for d in (17, 32, 3)] + [torch.zeros(5, 10).to_sparse()]
        dense = [hvd.allreduce(t.to_dense(), op=op) for t in ts]
        handles = [hvd.sparse_allreduce_async(t, name=f"{op.value}.{i}", op=op) for i, t in enumerate(ts)]
        for d, h in zip(dense, handles):
            out = h()
            assert out.is_sparse and out.shape == d.shape
            assert torch.allclose(out.to_dense(), d, atol=1e-6)
    t = sparse(6)
    out = hvd.synchronize(hvd.sparse_allreduce_async(t, op=hvd.Sum))  # unnamed
    assert torch.allclose(out.to_dense(), hvd.allreduce(t.to_dense(), op=hvd.Sum), atol=1e-6)
    raises(lambda: hvd.sparse_allreduce_async(torch.ones(3), "dense", hvd.Sum), ValueError)
    raises(lambda: hvd.sparse_allreduce_async(t, "max", hvd.Max), ValueError)
    return {}


def main():
    p = parser()
    p.add_argument("--case", required=True, choices=sorted(CASES))
    args = p.parse_args()
    hvd.init(process_sets=AT_INIT if args.case == "process_sets_at_init" else None)
    r, n = hvd.rank(), hvd.size()
    details = CASES[args.case](r, n)
    write_result(args.out, r, ok=True, case=args.case, size=n, **(details or {}))
    hvd.shutdown()


if __name__ == "__main__":
    main()

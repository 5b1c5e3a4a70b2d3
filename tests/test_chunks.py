"""Chunking (no MPI): how a model is cut and spread over servers, which optimizers may be
cut anywhere, and a replay of random chunk arrivals from several workers over S = 1, 2, 3
servers that bit-matches a single-process Algorithm 2 run chunk by chunk."""

import random

import pytest
import torch

from hvd_dc.chunks import ChunkPlan, chunk_spec
from hvd_dc.dc_math import DCOptions, default_lambda
from hvd_dc.layout import ELEMENTWISE_OPTIMIZERS, ModelSpec, read_hyperparameters
from hvd_dc.server_state import ServerState, ShardState
from reference import Algorithm2Float32


def _spec(opt, workers=2, chunk_bytes=4096, **kw):
    return ModelSpec.from_optimizer(opt, workers, chunk_bytes=chunk_bytes, **kw)


def _model():
    return [torch.nn.Parameter(torch.zeros(3000)), torch.nn.Parameter(torch.zeros(7, 11)),
            torch.nn.Parameter(torch.zeros(900, dtype=torch.float64))]


def test_every_element_is_in_exactly_one_chunk_and_no_chunk_crosses_a_segment():
    a, b, c = _model()
    opt = torch.optim.SGD([{"params": [a, b]}, {"params": [c], "lr": 0.5}], lr=0.1)
    plan = ChunkPlan.for_spec(_spec(opt), 3)
    layout = plan.layout
    for si, seg in enumerate(layout.segments):
        mine = [ch for ch in plan.chunks if ch.segment == si]
        assert [ch.start for ch in mine] == [0] + [ch.start + ch.numel for ch in mine[:-1]]
        assert sum(ch.numel for ch in mine) == seg.numel
        assert all(ch.start % 64 == 0 and ch.offset % 64 == 0 for ch in mine)
        assert all(ch.nbytes <= 4096 for ch in mine)
    assert {ch.server for ch in plan.chunks} == {0, 1, 2}
    assert max(plan.load) - min(plan.load) <= max(ch.nbytes for ch in plan.chunks)  # balanced by bytes
    for i in range(len(layout.params)):
        assert plan.of_param(i) and all(i in plan.chunks[k].params for k in plan.of_param(i))


def test_zero_chunk_bytes_is_one_chunk_per_segment():
    a, b, c = _model()
    opt = torch.optim.SGD([{"params": [a, b]}, {"params": [c], "lr": 0.5}], lr=0.1)
    plan = ChunkPlan.for_spec(_spec(opt, chunk_bytes=0), 2)
    assert [(ch.segment, ch.start, ch.numel) for ch in plan.chunks] == [(0, 0, 3077), (1, 0, 900)]


class _LayerNormalised(torch.optim.Optimizer):
    """A LARS-like optimizer: each parameter's step is scaled by its own norm, so a slice
    of a parameter is not a model of its own."""

    def __init__(self, params, lr=0.1):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.sub_(group["lr"] * p.grad / (p.grad.norm() + 1e-6))


def test_non_elementwise_optimizers_are_cut_at_parameter_boundaries():
    params = [torch.nn.Parameter(torch.zeros(n)) for n in (600, 2000, 100, 100)]
    spec = _spec(_LayerNormalised(params))
    assert not spec.elementwise
    plan = ChunkPlan.for_spec(spec, 2)
    assert [ch.params for ch in plan.chunks] == [(0,), (1,), (2, 3)]  # 4096 bytes: 1024 floats at most, or one param
    assert all(ch.whole_params for ch in plan.chunks)
    assert [p.name for p in chunk_spec(spec, plan.chunks[2]).params] == ["param.0.2", "param.0.3"]


@pytest.mark.parametrize("opt_class", ELEMENTWISE_OPTIMIZERS, ids=lambda c: c.__name__)
def test_the_elementwise_optimizers_give_the_same_bits_cut_or_whole(opt_class):
    """What 'element-wise' promises: running the optimizer on chunks of a flat parameter
    gives exactly what running it on the whole does."""
    torch.manual_seed(0)
    w0 = torch.randn(2048)
    whole = torch.nn.Parameter(w0.clone())
    pieces = [torch.nn.Parameter(w0[i:i + 512].clone()) for i in range(0, 2048, 512)]
    kwargs = {"lr": 0.01}
    opt_whole, opt_pieces = opt_class([whole], **kwargs), opt_class(pieces, **kwargs)
    for step in range(5):
        g = torch.randn(2048, generator=torch.Generator().manual_seed(step))
        whole.grad = g.clone()
        for k, p in enumerate(pieces):
            p.grad = g[k * 512:(k + 1) * 512].clone()
        opt_whole.step()
        opt_pieces.step()
    assert torch.equal(whole.detach(), torch.cat([p.detach() for p in pieces]))


def test_a_norm_based_optimizer_cut_inside_a_parameter_would_differ():
    """The negative control of the test above: why non-element-wise classes are cut only
    at parameter boundaries."""
    w0 = torch.randn(2048, generator=torch.Generator().manual_seed(1))
    whole = torch.nn.Parameter(w0.clone())
    pieces = [torch.nn.Parameter(w0[i:i + 512].clone()) for i in range(0, 2048, 512)]
    g = torch.randn(2048, generator=torch.Generator().manual_seed(2))
    whole.grad = g.clone()
    for k, p in enumerate(pieces):
        p.grad = g[k * 512:(k + 1) * 512].clone()
    _LayerNormalised([whole]).step()
    _LayerNormalised(pieces).step()
    assert not torch.equal(whole.detach(), torch.cat([p.detach() for p in pieces]))


def _replay(variant, num_workers, servers, steps_per_worker, seed, threads_order=False):
    """Random interleavings of chunk arrivals, applied by the servers' own code (one
    ShardState per server) and by a float32 Algorithm 2 per chunk; returns both."""
    n = 5000
    lr = 0.05
    w0 = torch.randn(n, generator=torch.Generator().manual_seed(seed))
    p = torch.nn.Parameter(w0.clone())
    opt = torch.optim.SGD([p], lr=lr)
    lam = default_lambda(variant)
    spec = _spec(opt, num_workers, dc=DCOptions.create(variant, lam if variant != "none" else None))
    plan = ChunkPlan.for_spec(spec, servers)
    initial = torch.zeros(plan.layout.nbytes, dtype=torch.uint8)
    plan.layout.param_views(initial)[0].copy_(w0)
    shards, replies = [], {}
    for s in range(servers):
        mine = plan.of_server(s)
        areas = [[torch.zeros(chunk_spec(spec, c).layout().nbytes, dtype=torch.uint8) for c in mine]
                 for _ in range(num_workers)]
        shards.append(ShardState(spec, mine, initial, areas))
        for j, c in enumerate(mine):
            for m in range(num_workers):
                replies[m, c.index] = (s, j, areas[m][j][: c.nbytes].view(torch.float32))
    refs = {c.index: Algorithm2Float32(w0[c.start:c.start + c.numel].clone(), num_workers, variant, lam, lr)
            for c in plan.chunks}
    hyper = [0.0] * len(spec.hyper_slots)
    read_hyperparameters(spec.groups, spec.hyper_slots, hyper)
    rng = random.Random(seed)
    chunks = [c.index for c in plan.chunks]

    def local_model(m, source):
        return torch.cat([source(m, c) for c in chunks])

    def gradient(w_local, m, step):  # depends on the weights the worker pulled
        return torch.sin(w_local * 3.0 + (m + 1) * 0.7 + step) * 0.3

    steps = [0] * num_workers
    todo = {m: list(chunks) for m in range(num_workers)}
    grads = {m: gradient(w0, m, 0) for m in range(num_workers)}
    ref_grads = dict(grads)
    pulls_only = {m: False for m in range(num_workers)}
    while any(steps[m] < steps_per_worker for m in range(num_workers)):
        m = rng.choice([k for k in range(num_workers) if steps[k] < steps_per_worker])
        c = todo[m].pop(rng.randrange(len(todo[m])))  # any of this worker's chunks, in any order
        chunk = plan.chunks[c]
        s, j, _ = replies[m, c]
        state = shards[s].states[j]
        if pulls_only[m]:
            state.pull(m)
            refs[c].pull(m)
        else:
            g = grads[m][chunk.start:chunk.start + chunk.numel]
            ok, _ = state.apply_push(m, state.layout.segment_views(g.clone().view(torch.uint8), wire=True), hyper,
                                     pull=True)
            assert ok
            refs[c].push(m, ref_grads[m][chunk.start:chunk.start + chunk.numel])
            refs[c].pull(m)
        if not todo[m]:  # the request is complete: the worker computes its next step on its replies
            steps[m] += 1
            todo[m] = list(chunks)
            pulls_only[m] = rng.random() < 0.15
            grads[m] = gradient(local_model(m, lambda m, c: replies[m, c][2]), m, steps[m])
            ref_grads[m] = gradient(local_model(m, lambda m, c: refs[c].bak[m]), m, steps[m])
    got = torch.cat([replies_weights for replies_weights in
                     (shards[replies[0, c][0]].states[replies[0, c][1]].weight_segments[0] for c in chunks)])
    want = torch.cat([refs[c].w for c in chunks])
    return got, want, plan, shards


@pytest.mark.parametrize("servers", [1, 2, 3])
@pytest.mark.parametrize("num_workers", [2, 4, 8])
@pytest.mark.parametrize("variant", ["adaptive", "constant", "none"])
def test_random_chunk_interleavings_bit_match_algorithm2(variant, num_workers, servers):
    got, want, plan, shards = _replay(variant, num_workers, servers, steps_per_worker=6, seed=10 * num_workers + servers)
    assert len(plan.chunks) == 5 and {c.server for c in plan.chunks} == set(range(servers))
    assert torch.equal(got, want), f"max diff {float((got - want).abs().max())}"
    for shard in shards:
        assert shard.pushes_settled()


def test_a_half_applied_push_is_not_settled():
    p = torch.nn.Parameter(torch.zeros(3000))
    spec = _spec(torch.optim.SGD([p], lr=0.1), 1)
    plan = ChunkPlan.for_spec(spec, 1)
    initial = torch.zeros(plan.layout.nbytes, dtype=torch.uint8)
    areas = [[torch.zeros(chunk_spec(spec, c).layout().nbytes, dtype=torch.uint8) for c in plan.chunks]]
    shard = ShardState(spec, plan.chunks, initial, areas)
    first: ServerState = shard.states[0]
    g = torch.ones(plan.chunks[0].numel)
    first.apply_push(0, first.layout.segment_views(g.view(torch.uint8), wire=True), [0.1] * len(spec.hyper_slots),
                     pull=True)
    assert not shard.pushes_settled()


def test_applying_chunks_on_threads_gives_the_same_bits():
    """HVD_DC_SERVER_THREADS: a server applies different chunks at once; each chunk's
    state is its own, so the bits cannot depend on the threads (the fused kernels release
    the GIL, so the threads really run together)."""
    import concurrent.futures

    def run(threads):
        torch.manual_seed(3)
        p = torch.nn.Parameter(torch.randn(20000))
        spec = _spec(torch.optim.SGD([p], lr=0.05, momentum=0.9), 2, chunk_bytes=8192,
                     dc=DCOptions.create("adaptive"))
        plan = ChunkPlan.for_spec(spec, 1)
        initial = torch.zeros(plan.layout.nbytes, dtype=torch.uint8)
        plan.layout.param_views(initial)[0].copy_(p.detach())
        areas = [[torch.zeros(chunk_spec(spec, c).layout().nbytes, dtype=torch.uint8) for c in plan.chunks]
                 for _ in range(2)]
        shard = ShardState(spec, plan.chunks, initial, areas)
        hyper = [0.0] * len(spec.hyper_slots)
        read_hyperparameters(spec.groups, spec.hyper_slots, hyper)
        pool = concurrent.futures.ThreadPoolExecutor(threads)
        for step in range(6):
            m = step % 2
            g = torch.randn(20000, generator=torch.Generator().manual_seed(step))
            futures = [pool.submit(st.apply_push, m, st.layout.segment_views(
                g[c.start:c.start + c.numel].clone().view(torch.uint8), wire=True), hyper, True)
                for st, c in zip(shard.states, plan.chunks)]
            assert all(f.result()[0] for f in futures)
        pool.shutdown()
        return torch.cat([st.weight_segments[0] for st in shard.states]), len(plan.chunks)

    one, chunks = run(1)
    four, _ = run(4)
    assert chunks == 10 and torch.equal(one, four)

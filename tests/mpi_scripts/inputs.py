"""Unusual but valid inputs: sparse gradients, a parameter that gets no gradient, and the
nonfinite='raise' policy. lambda = 0 and a per-push lr of 1 (Horovod's lr * size(), applied / size() per
push) make the expected weights exact."""

import torch

import hvd_dc as hvd
from common import parser, write_result

args = parser().parse_args()
hvd.init()
me, n = hvd.rank(), hvd.size()
emb = torch.nn.Embedding(10, 3, sparse=True)
unused = torch.nn.Parameter(torch.ones(4))
with torch.no_grad():
    emb.weight.copy_(torch.arange(30, dtype=torch.float32).reshape(10, 3))
named = [("emb.weight", emb.weight), ("unused", unused)]
opt = hvd.DistributedDCOptimizer(torch.optim.SGD([emb.weight, unused], lr=float(n)), named_parameters=named,
                                 dc_variant="constant", dc_lambda=0.0, nonfinite="raise",
                                 staleness_policy="none")
steps = 6
for s in range(steps):
    opt.zero_grad()
    idx = torch.tensor([(me + s) % 10, (me * 3 + s) % 10, (me + s) % 10])  # a repeated index
    emb(idx).sum().backward()
    assert emb.weight.grad.layout == torch.strided
    opt.step()
hvd.barrier()
opt.pull()
expected = torch.arange(30, dtype=torch.float32).reshape(10, 3)
for m in range(n):
    for s in range(steps):
        for i in ((m + s) % 10, (m * 3 + s) % 10, (m + s) % 10):
            expected[i] -= 1.0
raised = None
opt.zero_grad()
(emb(torch.tensor([0])).sum() * float("inf")).backward()
before = emb.weight.detach().clone()
try:
    opt.step()
except FloatingPointError as exc:
    raised = str(exc)
write_result(args.out, me, sparse_ok=bool(torch.equal(before, expected)), unused_unchanged=bool(torch.equal(unused.detach(), torch.ones(4))),
             raised=raised, model_unchanged_after_raise=bool(torch.equal(emb.weight.detach(), before)))
hvd.shutdown()

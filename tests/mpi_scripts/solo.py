"""A world of one process trains alone with the wrapped optimizer, as Horovod does:
the result is bit-identical to the same loop without hvd_dc."""

import torch

import hvd_dc as hvd
from common import parser, write_result

args = parser().parse_args()


def train(wrap):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    if wrap:
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        opt = hvd.DistributedDCOptimizer(opt, named_parameters=model.named_parameters())
    g = torch.Generator().manual_seed(1)
    for _ in range(30):
        x = torch.randn(32, 8, generator=g)
        opt.zero_grad()
        ((model(x) - x.sum(1, keepdim=True)) ** 2).mean().backward()
        opt.step()
    if wrap:
        opt.pull()
        stats = opt.stats()
    else:
        stats = None
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]), stats


hvd.init()
alone, _ = train(wrap=False)
wrapped, stats = train(wrap=True)
avg = hvd.allreduce(torch.tensor([2.0]))
write_result(args.out, hvd.rank(), size=hvd.size(), local_size=hvd.local_size(),
             identical=bool(torch.equal(alone, wrapped)), stats=stats, allreduce=float(avg))
hvd.shutdown()

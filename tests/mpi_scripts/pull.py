"""opt.pull() fetches the newest weights without pushing: after worker 0's pushes, the
other workers' pull returns exactly the weights worker 0 holds after its last step."""

import torch

import hvd_dc as hvd
from common import parser, write_result

args = parser().parse_args()
hvd.init()
model = torch.nn.Linear(6, 3)
opt = hvd.DistributedDCOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                 named_parameters=model.named_parameters(), dc_variant="constant")
before = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
if hvd.rank() == 0:
    for _ in range(5):
        opt.zero_grad()
        model(torch.randn(4, 6)).pow(2).sum().backward()
        opt.step()
mine = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
worker0 = hvd.broadcast(mine, root_rank=0)
hvd.barrier()
pushes_before_pull = opt.stats()["pushes"]
opt.pull()
after = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
write_result(args.out, hvd.rank(), changed=not torch.equal(before, after), equals_worker0=bool(torch.equal(after, worker0)),
             pushes=opt.stats()["pushes"], pushes_before_pull=pushes_before_pull, server_updates=opt.stats()["server_updates"])
hvd.shutdown()

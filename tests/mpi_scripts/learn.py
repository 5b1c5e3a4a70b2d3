"""A small real model learns: an MLP on scikit-learn's bundled digits data, written as a
Horovod script is (the lr times hvd.size(), momentum 0.9, op=Average), hvd_dc's defaults
unless options are given. Every DivergenceWarning a worker gets is recorded."""

import os
import warnings

import torch
from mpi4py import MPI
from sklearn.datasets import load_digits

import hvd_dc as hvd
from common import parser, write_result

p = parser()
p.add_argument("--variant", default="adaptive")
p.add_argument("--optimizer", default="sgd")
p.add_argument("--epochs", type=int, default=6)
p.add_argument("--policy", default="none", help="staleness_policy")
p.add_argument("--lr", type=float, default=None, help="the single-process lr (times size(), as Horovod scripts do)")
p.add_argument("--lr-scaling", default="auto")
p.add_argument("--async-momentum", default="auto")
args = p.parse_args()
warnings.simplefilter("always", hvd.DivergenceWarning)

hvd.init()
x, y = load_digits(return_X_y=True)
x = torch.tensor(x, dtype=torch.float32) / 16.0
y = torch.tensor(y)
perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
train, test = perm[:1400], perm[1400:]
shard = train[hvd.rank() :: hvd.size()]

torch.manual_seed(1234 + hvd.rank())  # different inits: the server's copy must win
model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
if args.optimizer == "adam":
    opt = torch.optim.Adam(model.parameters(), lr=(args.lr or 2e-3) * hvd.size())
else:
    opt = torch.optim.SGD(model.parameters(), lr=(args.lr or 0.05) * hvd.size(), momentum=0.9)
opt = hvd.DistributedDCOptimizer(opt, named_parameters=model.named_parameters(), dc_variant=args.variant,
                                 staleness_policy=args.policy, lr_scaling=args.lr_scaling,
                                 async_momentum=args.async_momentum)


def test_loss_acc():
    with torch.no_grad():
        out = model(x[test])
        return float(torch.nn.functional.cross_entropy(out, y[test])), float((out.argmax(1) == y[test]).float().mean())


loss0, acc0 = test_loss_acc()
g = torch.Generator().manual_seed(hvd.rank())
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", hvd.DivergenceWarning)
    for epoch in range(args.epochs):
        order = shard[torch.randperm(len(shard), generator=g)]
        for i in range(0, len(order), 16):
            idx = order[i : i + 16]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
divergence = [str(w.message) for w in caught if issubclass(w.category, hvd.DivergenceWarning)]
hvd.barrier()
opt.pull()
loss1, acc1 = test_loss_acc()
# the launcher's view beside MPI's, so a test can check which task became which rank
write_result(args.out, hvd.rank(), loss0=loss0, acc0=acc0, loss1=loss1, acc1=acc1, stats=opt.stats(),
             divergence=divergence, world_rank=MPI.COMM_WORLD.Get_rank(), slurm_procid=os.environ.get("SLURM_PROCID"))
hvd.shutdown()

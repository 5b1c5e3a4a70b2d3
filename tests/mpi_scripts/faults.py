"""Faults with a defined outcome:
--mode stall : the server stops answering; workers time out naming world rank 0.
--mode idle  : the last worker registers and never pushes, then shuts down; the job ends cleanly.
--mode hung  : the last worker registers and then hangs; once the others have finished, the
               server names it after HVD_DC_TIMEOUT, writes its checkpoint and ends the job."""

import time

import torch

import hvd_dc as hvd
from common import parser, write_result

p = parser()
p.add_argument("--mode", choices=["stall", "idle", "hung"], required=True)
p.add_argument("--ckpt", default=None)
args = p.parse_args()

hvd.init()
me, n = hvd.rank(), hvd.size()
model = torch.nn.Linear(4, 2)
opt = hvd.DistributedDCOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), named_parameters=model.named_parameters(),
                                 checkpoint_path=args.ckpt)
last = me == n - 1
if args.mode in ("idle", "hung") and last:
    if args.mode == "hung":
        print(f"worker {me} hangs", flush=True)
        while True:
            time.sleep(1)
    time.sleep(2)
else:
    for s in range(20):
        opt.zero_grad()
        model(torch.randn(3, 4)).sum().backward()
        try:
            opt.step()
        except hvd.HvdDcTimeout as exc:
            print(f"TIMEOUT worker {me}: {exc}", flush=True)
            raise
write_result(args.out, me, stats=opt.stats())
hvd.shutdown()

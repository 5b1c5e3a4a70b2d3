"""A server_device the server rank cannot provide fails registration on every worker
with an error naming the server, and the job ends instead of hanging."""

import torch

import hvd_dc as hvd
from common import parser, write_result

p = parser()
p.add_argument("--server-device", default="cuda")
args = p.parse_args()
hvd.init()
me = hvd.rank()
model = torch.nn.Linear(3, 2)
error = None
try:
    hvd.DistributedDCOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), named_parameters=model.named_parameters(),
                               server_device=args.server_device)
except RuntimeError as exc:
    error = str(exc)
write_result(args.out, me, error=error)
hvd.shutdown()

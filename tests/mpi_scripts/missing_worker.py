"""One worker never builds the optimizer: the others fail with an error naming it."""

import torch

import hvd_dc as hvd
from common import parser

args = parser().parse_args()
hvd.init()
if hvd.rank() == hvd.size() - 1:
    hvd.shutdown()  # leaves without ever registering
else:
    model = torch.nn.Linear(3, 1)
    hvd.DistributedDCOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), named_parameters=model.named_parameters())
    print("UNREACHABLE: registration succeeded", flush=True)

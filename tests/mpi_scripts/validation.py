"""Bad arguments to DistributedDCOptimizer raise clear errors before anything is sent;
afterwards a correct registration still works on every worker."""

import torch

import hvd_dc as hvd
from common import parser, write_result

args = parser().parse_args()
hvd.init()
me = hvd.rank()  # hvd.rank() is refused after shutdown, and the result is written then
model = torch.nn.Linear(3, 2)


def sgd():
    return torch.optim.SGD(model.parameters(), lr=0.1)


cases = {
    "not_optimizer": lambda: hvd.DistributedDCOptimizer(model),
    "variant": lambda: hvd.DistributedDCOptimizer(sgd(), dc_variant="fast"),
    "lambda": lambda: hvd.DistributedDCOptimizer(sgd(), dc_lambda=-1.0),
    "compression": lambda: hvd.DistributedDCOptimizer(sgd(), compression="zip"),
    "bpps": lambda: hvd.DistributedDCOptimizer(sgd(), backward_passes_per_step=0),
    "unnamed": lambda: hvd.DistributedDCOptimizer(sgd(), named_parameters=[("weight", model.weight)]),
    "dup_names": lambda: hvd.DistributedDCOptimizer(sgd(), named_parameters=[("a", model.weight), ("a", model.bias)]),
    "lbfgs": lambda: hvd.DistributedDCOptimizer(torch.optim.LBFGS(model.parameters())),
    "complex_param": lambda: hvd.DistributedDCOptimizer(torch.optim.SGD([torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64))], lr=0.1)),
    "frozen_only": lambda: hvd.DistributedDCOptimizer(torch.optim.SGD([torch.nn.Parameter(torch.zeros(2), requires_grad=False)], lr=0.1)),
    "init_comm": lambda: hvd.init(comm=[0, 1]),
    "server_device": lambda: hvd.DistributedDCOptimizer(sgd(), server_device="gpu"),
    "meta_param": lambda: hvd.DistributedDCOptimizer(torch.optim.SGD([torch.nn.Parameter(torch.zeros(2, device="meta"))], lr=0.1)),
}
errors = {}
for name, fn in cases.items():
    try:
        fn()
        errors[name] = None
    except (ValueError, TypeError) as exc:
        errors[name] = f"{type(exc).__name__}: {exc}"

opt = hvd.DistributedDCOptimizer(sgd(), named_parameters=model.named_parameters(), backward_passes_per_step=2)
twice = None
try:
    hvd.DistributedDCOptimizer(opt, named_parameters=model.named_parameters())
except ValueError as exc:
    twice = str(exc)
x = torch.randn(4, 3)
for _ in range(3):
    model(x).sum().backward()
too_many = None
try:
    opt.step()
except RuntimeError as exc:
    too_many = str(exc)
opt.zero_grad()
model(x).sum().backward()
model(x).sum().backward()
opt.step()  # two passes are allowed
hvd.shutdown()
after = None
try:
    opt.step()
except RuntimeError as exc:
    after = str(exc)
size_after = None
try:
    hvd.size()
except RuntimeError as exc:
    size_after = str(exc)
write_result(args.out, me, errors=errors, twice=twice,
             too_many=too_many, after_shutdown=after, size_after=size_after)

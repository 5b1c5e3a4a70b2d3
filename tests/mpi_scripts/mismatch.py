"""Workers whose models differ get a clear error naming the difference, and no hang."""

import torch

import hvd_dc as hvd
from common import parser

p = parser()
p.add_argument("--kind", choices=["shape", "extra", "dtype", "variant", "op"], default="shape")
args = p.parse_args()

hvd.init()
odd = hvd.rank() == hvd.size() - 1
width = 9 if (odd and args.kind == "shape") else 8
layers = [torch.nn.Linear(4, width), torch.nn.ReLU(), torch.nn.Linear(width, 2)]
if odd and args.kind == "extra":
    layers += [torch.nn.Linear(2, 2)]
model = torch.nn.Sequential(*layers)
if odd and args.kind == "dtype":
    model[2].double()
opt = torch.optim.SGD(model.parameters(), lr=0.1)
variant = "constant" if (odd and args.kind == "variant") else "adaptive"
if args.kind == "op":
    try:
        hvd.DistributedDCOptimizer(opt, named_parameters=model.named_parameters(), op=hvd.Sum if odd else hvd.Average)
    except ValueError as exc:
        print(exc, flush=True)
    opt = hvd.DistributedDCOptimizer(opt, named_parameters=model.named_parameters(), op=hvd.Average)
    model(torch.ones(1, 4)).sum().backward()
    opt.step()
    print("registered after the correction", flush=True)
    raise SystemExit(0)
opt = hvd.DistributedDCOptimizer(opt, named_parameters=model.named_parameters(), dc_variant=variant)
print("UNREACHABLE: registration succeeded", flush=True)

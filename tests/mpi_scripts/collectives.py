"""Worker collectives with Horovod's arguments: allreduce, allgather, broadcasts, barrier."""

import torch

import hvd_dc as hvd
from common import parser, write_result

args = parser().parse_args()
hvd.init()
r, n = hvd.rank(), hvd.size()
t = torch.tensor([float(r), 2.0 * r + 1])
res = {
    "avg": hvd.allreduce(t, name="m").tolist(),
    "avg_kw": hvd.allreduce(t, average=True).tolist(),
    "sum": hvd.allreduce(t, op=hvd.Sum).tolist(),
    "sum_avgfalse": hvd.allreduce(t, average=False).tolist(),
    "max": hvd.allreduce(t, op=hvd.Max).tolist(),
    "min": hvd.allreduce(t, op=hvd.Min).tolist(),
    "scaled": hvd.allreduce(t, op=hvd.Sum, prescale_factor=2.0, postscale_factor=0.5).tolist(),
    "fp16": hvd.allreduce(t, compression=hvd.Compression.fp16).tolist(),
    "bf16_dtype": str(hvd.allreduce(t.to(torch.bfloat16)).dtype),
    "int_sum": hvd.allreduce(torch.tensor([r + 1]), op=hvd.Sum).tolist(),
    "gather": hvd.allgather(torch.full((r + 1, 2), float(r))).tolist(),
    "object": hvd.broadcast_object({"from": r, "list": [1, 2]} if r == n - 1 else None, root_rank=n - 1),
    "gather_obj": hvd.allgather_object(f"w{r}"),
}
model = torch.nn.Linear(3, 2)
torch.nn.init.constant_(model.weight, float(r))
hvd.broadcast_parameters(model.state_dict(), root_rank=0)
res["bcast_params"] = model.weight.detach().reshape(-1).tolist()
opt = torch.optim.SGD(model.parameters(), lr=0.1 * (r + 1))
hvd.broadcast_optimizer_state(opt, root_rank=0)
res["bcast_opt_lr"] = opt.param_groups[0]["lr"]
hvd.barrier()
in_place = t.clone()
hvd.allreduce_(in_place, op=hvd.Sum)
res["inplace"] = in_place.tolist()
errors = {}
for label, fn in {
    "adasum": lambda: hvd.allreduce(t, op=hvd.Adasum),
    "both": lambda: hvd.allreduce(t, average=True, op=hvd.Sum),
    "root": lambda: hvd.broadcast_object(1, root_rank=n),
}.items():
    try:
        fn()
        errors[label] = None
    except ValueError as exc:
        errors[label] = str(exc)
res["errors"] = errors
write_result(args.out, r, size=n, local_rank=hvd.local_rank(), local_size=hvd.local_size(), **res)
hvd.shutdown()

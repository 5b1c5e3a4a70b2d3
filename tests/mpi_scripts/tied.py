"""Overlap on, weights tied between the input embedding and the output layer, and a graph
kept with retain_graph: no version-counter error during training, the weights are the
servers' after each step, and reusing a graph from before a step fails as plain torch's
in-place optimizer step would make it fail."""

import torch

import hvd_dc as hvd
from common import parser, write_result

args = parser().parse_args()
hvd.init()
torch.manual_seed(0)
emb = torch.nn.Embedding(50, 64)
hidden = torch.nn.Linear(64, 64)
out = torch.nn.Linear(64, 50, bias=False)
out.weight = emb.weight  # tied: one Parameter, two uses
model = torch.nn.ModuleList([emb, hidden, out])
opt = hvd.DistributedDCOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), named_parameters=model.named_parameters(),
                                 overlap="on")
gen = torch.Generator().manual_seed(hvd.rank())
losses, errors = [], []
for step in range(12):
    x = torch.randint(0, 50, (32,), generator=gen)
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(out(torch.tanh(hidden(emb(x)))), (x + 1) % 50)
    try:
        loss.backward(retain_graph=step == 11)
        opt.step()
    except RuntimeError as exc:
        errors.append(str(exc))
    losses.append(float(loss))
try:
    loss.backward()  # the graph of step 11 saw the weights the step replaced
    stale_graph_error = None
except RuntimeError as exc:
    stale_graph_error = str(exc)
tied = out.weight is emb.weight and out.weight.data_ptr() == emb.weight.data_ptr()
hvd.barrier()
opt.pull()
write_result(args.out, hvd.rank(), errors=errors, first=losses[0], last=losses[-1], tied=tied,
             stale_graph_error=stale_graph_error, overlap=opt.stats()["overlap"])

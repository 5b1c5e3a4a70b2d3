"""Synthetic-data throughput, shaped like Horovod's examples/pytorch/pytorch_synthetic_benchmark.py.

    mpiexec -n 5 python examples/pytorch_synthetic_benchmark.py            # 1 server + 4 workers
    hvd-dc-run -np 5 python examples/pytorch_synthetic_benchmark.py --model mlp --width 4096

Random inputs and labels, no data loading: it measures what DC-ASGD's push/pull costs on
top of the forward and backward passes. Horovod's script uses torchvision's resnet50;
to stay dependency-free this one builds a CNN or MLP of a chosen size (``--model``,
``--width``). It makes Horovod's calls as Horovod's script makes them:
``hvd.DistributedOptimizer(..., compression=..., op=hvd.Adasum if args.use_adasum else
hvd.Average)`` (hvd_dc refuses Adasum with more than one worker, with the reason),
``broadcast_parameters`` and ``broadcast_optimizer_state`` after wrapping, and
``hvd.SyncBatchNorm`` layers with ``--sync-bn`` (Horovod's passes
``norm_layer=hvd.SyncBatchNorm`` to resnet50; they make every forward pass a collective). Prints images/s per worker (mean +- 1.96 std over iterations) and the
total over workers, plus the server's updates/s and the staleness workers saw.
"""

import argparse
import timeit

import numpy as np
import torch
import torch.nn.functional as F

import hvd_dc as hvd


def build_model(kind: str, width: int, image: int, classes: int, norm=None) -> torch.nn.Module:
    if kind == "mlp":
        return torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Linear(3 * image * image, width),
            torch.nn.ReLU(),
            torch.nn.Linear(width, width),
            torch.nn.ReLU(),
            torch.nn.Linear(width, classes),
        )
    c = max(8, width // 64)
    norm = norm or (lambda channels: torch.nn.Identity())
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, c, 3, padding=1), norm(c), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(c, 2 * c, 3, padding=1), norm(2 * c), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(2 * c * (image // 4) ** 2, width), torch.nn.ReLU(),
        torch.nn.Linear(width, classes),
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["cnn", "mlp"], default="cnn")
    p.add_argument("--width", type=int, default=512, help="hidden width (sets the model size)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32, help="input batch size (per worker)")
    p.add_argument("--num-warmup-batches", type=int, default=10)
    p.add_argument("--num-batches-per-iter", type=int, default=10)
    p.add_argument("--num-iters", type=int, default=10)
    p.add_argument("--fp16-allreduce", action="store_true", help="fp16 gradients on the wire (Compression.fp16)")
    p.add_argument("--dc-variant", default="adaptive", choices=["adaptive", "constant", "none"])
    p.add_argument("--no-cuda", action="store_true", help="train on the CPU even where CUDA is available")
    p.add_argument("--use-adasum", action="store_true", help="Horovod's flag: hvd_dc refuses Adasum (and says why)")
    p.add_argument("--sync-bn", action="store_true", help="hvd.SyncBatchNorm after each convolution (cnn)")
    args = p.parse_args()
    args.cuda = not args.no_cuda and torch.cuda.is_available()

    hvd.init()
    torch.manual_seed(0)
    if args.cuda:
        torch.cuda.set_device(hvd.local_rank() % torch.cuda.device_count())
    else:
        torch.set_num_threads(1)
    model = build_model(args.model, args.width, args.image_size, 1000, hvd.SyncBatchNorm if args.sync_bn else None)
    if args.cuda:
        model.cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001)
    compression = hvd.Compression.fp16 if args.fp16_allreduce else hvd.Compression.none
    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(),
                                         compression=compression,
                                         op=hvd.Adasum if args.use_adasum else hvd.Average,
                                         dc_variant=args.dc_variant)
    # after wrapping, as Horovod's script does: the broadcast weights become the server's too
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)
    data = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    target = torch.randint(0, 1000, (args.batch_size,))
    if args.cuda:
        data, target = data.cuda(), target.cuda()

    def benchmark_step():
        optimizer.zero_grad()
        loss = F.cross_entropy(model(data), target)
        loss.backward()
        optimizer.step()

    def log(s):
        if hvd.rank() == 0:
            print(s, flush=True)

    nparams = sum(q.numel() for q in model.parameters())
    log(f"Model: {args.model} ({nparams / 1e6:.2f} M parameters), batch size {args.batch_size}, "
        f"{hvd.size()} workers, DC variant {args.dc_variant}, {'CUDA' if args.cuda else 'CPU'}")
    timeit.timeit(benchmark_step, number=args.num_warmup_batches)
    img_secs = []
    for x in range(args.num_iters):
        t = timeit.timeit(benchmark_step, number=args.num_batches_per_iter)
        img_sec = args.batch_size * args.num_batches_per_iter / t
        log(f"Iter #{x}: {img_sec:.1f} img/sec per worker")
        img_secs.append(img_sec)
    img_sec_mean = float(np.mean(img_secs))
    img_sec_conf = float(1.96 * np.std(img_secs))
    total = hvd.allreduce(torch.tensor(img_sec_mean), op=hvd.Sum, name="img_sec").item()
    s = optimizer.stats() if hvd.size() > 1 else {"staleness_mean": 0.0, "staleness_p99": 0.0, "updates_per_s": 0.0}
    staleness = hvd.allreduce(torch.tensor(float(s["staleness_mean"])), name="staleness").item()
    log(f"Img/sec per worker: {img_sec_mean:.1f} +-{img_sec_conf:.1f}")
    log(f"Total img/sec on {hvd.size()} worker(s): {total:.1f}")
    log(f"Server updates/s seen by worker 0: {s['updates_per_s']:.1f}; mean staleness over workers {staleness:.2f}")
    hvd.shutdown()


if __name__ == "__main__":
    main()

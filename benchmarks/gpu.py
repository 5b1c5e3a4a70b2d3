"""Benchmark 8: CUDA workers and a GPU-side server (issue 7), on one GPU.

Three measurements, each against a baseline taken in the same run:

1. **apply**: DC-ASGD-a with SGD (momentum 0.9) applied by a staged
   :class:`~hvd_dc.server_state.ServerState` whose master weights live on the device.
   Baseline: a device-to-device copy of the model (``torch.Tensor.copy_``), whose bandwidth
   is the card's practical memory bandwidth. The apply's bandwidth counts the bytes a single
   fused pass would have to move, per element: read g, w, w_bak, MeanSquare, momentum;
   write w, MeanSquare, momentum, w_bak(m) (the pull) = 9 x 4 bytes for float32. Two rows:
   gradient already on the device (the device work alone), and gradient read from host
   memory plus the reply written to host memory (what the server loop does per push).
2. **staging**: a worker's per-step cost of moving a 25M-parameter model's gradients to
   pinned host memory and weights back (:class:`~hvd_dc.staging.DeviceStaging`): copies
   alone (no compute), and the step time of forward+backward+staging with the gradient copy
   overlapped with backward against forward+backward alone.
3. **e2e**: images/s of a ResNet-18-style CIFAR model (batch 128, synthetic data) trained
   by 1 server + N workers all on the one GPU (``mpiexec -n N+1``, ``server_device='auto'``)
   against the same model trained alone by plain torch in one process.

Without CUDA it refuses to run unless ``--device cpu`` is given, which runs the same code
on the CPU at small sizes (to check the script; those figures say nothing about GPUs).

Run: ``python benchmarks/gpu.py [--quick] [--device cpu] [--parts apply,staging,e2e]``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Callable, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

from hvd_dc.dc_math import DCOptions  # noqa: E402
from hvd_dc.layout import FlatLayout, ModelSpec, ParamInfo, dtype_name, read_hyperparameters  # noqa: E402
from hvd_dc.server_state import ServerState  # noqa: E402
from hvd_dc.staging import DeviceStaging  # noqa: E402

BYTES_PER_ELEMENT_APPLY = 9 * 4  # see the module docstring


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 3) -> float:
    """Median seconds of ``fn()`` including the device work it queued: every call, warm-up
    included, ends with a device synchronisation, so the next one starts on an idle device."""
    return common.median_time(lambda: (fn(), sync(device)), repeats, warmup=warmup)


# -- 1. apply ----------------------------------------------------------------------------------


def make_state(n: int, device: torch.device, workers: int):
    """A staged ServerState for ``n`` float32 parameters in 4 tensors (DC-ASGD-a, SGD with
    momentum 0.9), a random gradient on the device, and the same in pageable host memory
    (the window is not page-locked)."""
    shapes = [(n // 4,)] * 3 + [(n - 3 * (n // 4),)]
    params = [torch.nn.Parameter(torch.empty(s, device="meta")) for s in shapes]  # shapes only, no memory
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    spec = ModelSpec.from_optimizer(opt, workers, names=[f"p{i}" for i in range(len(shapes))],
                                    dc=DCOptions.create("adaptive", 2.0))
    layout = spec.layout()
    g = torch.Generator().manual_seed(0)
    initial = torch.zeros(layout.nbytes, dtype=torch.uint8)
    for seg in layout.segment_views(initial):
        seg.copy_(torch.randn(seg.numel(), generator=g))
    replies = [torch.zeros(layout.nbytes, dtype=torch.uint8) for _ in range(workers)]
    state = ServerState(spec, initial, replies, device=device)
    wire_host_buf = torch.zeros(layout.wire_nbytes, dtype=torch.uint8)
    wire_host = layout.segment_views(wire_host_buf, wire=True)
    for seg in wire_host:
        seg.copy_(torch.randn(seg.numel(), generator=g) * 1e-3)
    wire_dev = [seg.to(device, copy=True) for seg in wire_host]
    hyper = [0.0] * len(spec.hyper_slots)
    read_hyperparameters(spec.groups, spec.hyper_slots, hyper)
    return state, wire_dev, wire_host, hyper


def apply_rows(device: torch.device, sizes: List[int], repeats: int) -> List[dict]:
    rows = []
    for n in sizes:
        src = torch.randn(n, device=device)
        dst = torch.empty_like(src)
        copy_s = timed(lambda: dst.copy_(src), device, repeats)
        copy_GBps = 2 * 4 * n / copy_s
        state, wire_dev, wire_host, hyper = make_state(n, device, workers=4)
        k = [0]

        def apply(wire):
            k[0] = (k[0] + 1) % 4
            state.apply_push(k[0], wire, hyper, pull=True)

        dev_s = timed(lambda: apply(wire_dev), device, repeats)
        host_s = timed(lambda: apply(wire_host), device, repeats)
        eff = BYTES_PER_ELEMENT_APPLY * n / dev_s
        rows.append({
            "params": n, "d2d_copy_s": copy_s, "d2d_copy_GBps": copy_GBps,
            "apply_device_s": dev_s, "apply_device_updates_per_s": 1 / dev_s,
            "apply_device_effective_GBps": eff, "apply_device_fraction_of_copy_bw": eff / copy_GBps,
            "apply_from_host_s": host_s, "apply_from_host_updates_per_s": 1 / host_s,
            "finite": state.summary()["finite"],
        })
        state = wire_dev = wire_host = src = dst = None  # free this size's buffers before the next
    return rows


# -- 2. staging --------------------------------------------------------------------------------


def mlp(params_target: int, device: torch.device, width: int) -> torch.nn.Module:
    layers = max(1, round(params_target / (width * width + width)))
    mods: List[torch.nn.Module] = []
    for _ in range(layers):
        mods += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    return torch.nn.Sequential(*mods).to(device)


def staging_row(device: torch.device, params_target: int, batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    width = 2048 if params_target >= 10_000_000 else 256
    model = mlp(params_target, device, width)
    params = list(model.parameters())
    layout = FlatLayout([ParamInfo(f"p{i}", tuple(p.shape), dtype_name(p.dtype), 0) for i, p in enumerate(params)])
    pin = device.type == "cuda"
    host_grad = torch.zeros(layout.wire_nbytes, dtype=torch.uint8, pin_memory=pin)
    host_weights = torch.zeros(layout.nbytes, dtype=torch.uint8, pin_memory=pin)
    st = DeviceStaging(layout, device, host_grad, host_weights, wire_fp16=False)
    with torch.no_grad():
        for view, p in zip(st.weight_views, params):
            view.copy_(p)
    for p, wv, gv in zip(params, st.weight_views, st.grad_views):
        p.data = wv
        p.grad = gv
    x = torch.randn(batch, width, device=device)
    n = layout.numel

    def fwd_bwd():
        st.grads.zero_()
        model(x).square().mean().backward()

    def exchange_copies():
        st.gradients_to_host()  # the full copy unless the hooks below staged every gradient
        st.before_host_weights_written()
        st.weights_to_device()

    alone_s = timed(fwd_bwd, device, repeats)
    copies_s = timed(exchange_copies, device, repeats)
    def stage(index):
        return lambda _param: st.stage_parameter(index) and None  # a hook returns nothing

    hooks = [p.register_post_accumulate_grad_hook(stage(i)) for i, p in enumerate(params)]
    staged_s = timed(lambda: (fwd_bwd(), exchange_copies()), device, repeats)
    for h in hooks:
        h.remove()
    return {
        "params": n, "batch": batch, "grad_MB": layout.wire_nbytes / 1e6, "weights_MB": layout.nbytes / 1e6,
        "copies_only_s": copies_s, "copies_GBps": (layout.wire_nbytes + layout.nbytes) / copies_s,
        "fwd_bwd_s": alone_s, "fwd_bwd_plus_staging_s": staged_s,
        "staging_overhead_s": staged_s - alone_s, "staging_overhead_fraction": (staged_s - alone_s) / alone_s,
        "eager_pushes": st.eager_pushes,
    }


# -- 3. end to end -----------------------------------------------------------------------------


def e2e_rows(device: torch.device, workers: List[int], quick: bool) -> List[dict]:
    extra = ["--device", device.type, "--window", "2" if quick else "20", "--warmup", "1" if quick else "5"]
    if quick:
        extra += ["--width", "8", "--batch", "16"]
    worker = str(common.WORKERS / "gpu_worker.py")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        common.run([sys.executable, worker, "--alone", "--out", tmp] + extra, timeout=300)
        alone = common.read_rank_results(Path(tmp))[0]
    rows.append({"setup": "plain torch, one process", "processes": 1, "images_per_s": alone["images_per_s"],
                 "vs_alone": 1.0})
    for n in workers:
        with tempfile.TemporaryDirectory() as tmp:
            common.run(common.mpiexec() + ["-n", str(n + 1), sys.executable, worker, "--out", tmp] + extra,
                       timeout=600)
            res = common.read_rank_results(Path(tmp))
        total = sum(r["images_per_s"] for r in res.values())
        rows.append({"setup": f"hvd_dc: 1 server + {n} workers", "processes": n + 1, "images_per_s": total,
                     "vs_alone": total / alone["images_per_s"],
                     "server_device": res[0]["server_device"], "staged_workers": res[0]["stats"]["staged"],
                     "per_worker_images_per_s": [res[r]["images_per_s"] for r in sorted(res)]})
    return rows


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (a dry run of the script)")
    p.add_argument("--parts", default="apply,staging,e2e")
    p.add_argument("--workers", default="2,4", help="worker counts for the end-to-end part")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device here (torch.cuda.is_available() is False); nothing measured. "
              "Use --device cpu to check the script.", file=sys.stderr)
        sys.exit(2)
    parts = args.parts.split(",")
    repeats = 5 if args.quick else 30
    result = {"quick": args.quick, "device": device_name(device), "parts": parts}
    tables = []
    if "apply" in parts:
        sizes = [100_000] if args.quick else [1_000_000, 25_000_000, 100_000_000]
        rows = apply_rows(device, sizes, repeats)
        result["apply"] = rows
        tables.append(common.format_table(
            ["params", "D2D copy GB/s", "apply ms (grad on device)", "effective GB/s", "fraction of copy bw",
             "apply ms (grad from host, reply to host)", "updates/s from host"],
            [[f"{r['params']:,}", r["d2d_copy_GBps"] / 1e9, r["apply_device_s"] * 1e3,
              r["apply_device_effective_GBps"] / 1e9, r["apply_device_fraction_of_copy_bw"],
              r["apply_from_host_s"] * 1e3, r["apply_from_host_updates_per_s"]] for r in rows]))
    if "staging" in parts:
        target = 200_000 if args.quick else 25_000_000
        row = staging_row(device, target, 8 if args.quick else 256, repeats)
        result["staging"] = row
        tables.append(common.format_table(
            ["params", "grad + weights MB", "copies alone ms", "copies GB/s", "fwd+bwd ms", "fwd+bwd+staging ms",
             "staging overhead ms", "overhead fraction"],
            [[f"{row['params']:,}", row["grad_MB"] + row["weights_MB"], row["copies_only_s"] * 1e3,
              row["copies_GBps"] / 1e9, row["fwd_bwd_s"] * 1e3, row["fwd_bwd_plus_staging_s"] * 1e3,
              row["staging_overhead_s"] * 1e3, row["staging_overhead_fraction"]]]))
    if "e2e" in parts:
        workers = [int(w) for w in args.workers.split(",")] if not args.quick else [2]
        rows = e2e_rows(device, workers, args.quick)
        result["e2e"] = rows
        tables.append(common.format_table(
            ["setup", "processes", "images/s", "vs alone", "server master weights on"],
            [[r["setup"], r["processes"], r["images_per_s"], r["vs_alone"], r.get("server_device", "-")]
             for r in rows]))
    text = "\n\n".join(tables)
    print(f"device: {result['device']}")
    print(text)
    result["table"] = text
    common.write_json(args.out, "gpu", result)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu (dry run: no GPU figures)"


if __name__ == "__main__":
    main()

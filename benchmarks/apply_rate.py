"""Benchmark 1: the server's DC-ASGD-a apply rate against memcpy, on one core.

For flat float32 models of n parameters, times one DC-ASGD-a update with plain SGD
(``ServerState.apply_push``) and the pull that follows (``ServerState.pull``), i.e. exactly
the entry points the server loop calls, so it measures whatever implementation hvd_dc
ships. Reported as effective bandwidth over the bytes the update must touch, divided by
the bandwidth of ``np.copyto`` on a buffer of the same size measured in the same process.

Bytes the update must touch (reads + writes, counted the same way for memcpy):

* apply (DC-ASGD-a + SGD): read g, w, w_bak, MeanSquare; write MeanSquare, w = 24 n bytes
* apply+pull: + read w, write the reply slot (= w_bak)                       = 32 n bytes
* memcpy of B bytes: read B, write B                                         =  2 B bytes

The default for ``SGD(momentum=...)`` since the Horovod-hyperparameters study is DANA
(``async_momentum="dana"``): ``hvd_dc_dana`` times it (DC-ASGD-a, momentum 0.9, two workers),
counting its own bytes: apply reads g, w, w_bak, MeanSquare, v, S and writes MeanSquare, v,
S, w = 40 n; apply+pull also writes the reply (the look-ahead) in the same pass = 44 n.

Baselines on the same data, same formula and evaluation order:

* naive: the model as 1,000 parameters of n/1000 elements, updated one at a time with
  separate (allocating) torch ops per parameter, as a straightforward per-parameter server;
* foreach: ``torch._foreach_*`` ops over the same 1,000-tensor list (how torch.optim's
  foreach SGD/Adam work).

Run: ``python benchmarks/apply_rate.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import common  # noqa: E402
from server_fixtures import make_state  # noqa: E402  (tests/server_fixtures.py)

from hvd_dc import kernels  # noqa: E402
from hvd_dc.layout import read_hyperparameters  # noqa: E402

LR = 0.01
LAMBDA0 = 2.0
MOMENTUM = 0.95
EPS = 1e-7
NUM_PIECES = 1000


def _grad(n: int, seed: int) -> torch.Tensor:
    g = torch.from_numpy(np.random.default_rng(seed).standard_normal(n, dtype=np.float32))
    return g.mul_(1e-3)


class ServerApply:
    """hvd_dc's server: ServerState.apply_push / pull on one flat SGD parameter, with the
    kernels it would choose (the fused C kernels when they are built)."""

    KERNELS = "fused"
    #: bytes touched per element: apply, apply + pull (module docstring)
    BYTES = (24, 32)

    def __init__(self, n: int) -> None:
        self.state = self._make(n)
        layout = self.state.layout
        self.wire = torch.zeros(layout.wire_nbytes, dtype=torch.uint8)
        self.segs = layout.segment_views(self.wire, wire=True)  # built once, reused
        self.segs[0].copy_(_grad(n, 1))
        self.hyper = [0.0] * len(self.state.spec.hyper_slots)
        read_hyperparameters(self.state.spec.groups, self.state.spec.hyper_slots, self.hyper)

    def _make(self, n: int):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(n))], lr=LR)
        return make_state(opt, 1, kernels=self.KERNELS, variant="adaptive", dc_lambda=LAMBDA0,
                          dc_momentum=MOMENTUM, dc_eps=EPS)

    def apply(self) -> None:
        ok, _ = self.state.apply_push(0, self.segs, self.hyper)
        assert ok

    def pull(self) -> None:
        self.state.pull(0)

    def apply_and_pull(self) -> None:
        """What the server loop calls for a push: the push and the pull that follows."""
        ok, _ = self.state.apply_push(0, self.segs, self.hyper, pull=True)
        assert ok

    def weights(self) -> torch.Tensor:
        return self.state.weight_segments[0].view(torch.float32)[: self.segs[0].numel()]

    def describe(self) -> str:
        state = self.state
        if state.fused_sgd:
            return (f"fused C kernel (hvd_dc._kernels, {kernels.simd()}): per flat segment one read pass "
                    "for the NaN/Inf check, then one pass for the DC-ASGD-a compensation, the SGD step and, "
                    "with the pull, the copy into the reply slot")
        comp = state.compensator
        return (f"torch path: {type(comp).__qualname__}.compensate per flat segment (about ten tensor passes), then "
                f"{type(state.optimizer).__name__}.step on flat segments; pull = one copy of the flat model")


class ServerApplyTorch(ServerApply):
    """The same, with HVD_DC_KERNELS=torch: the fallback path when no compiler is there."""

    KERNELS = "torch"


class ServerApplyDana(ServerApply):
    """DC-ASGD-a with SGD momentum 0.9 run as DANA (one momentum per worker, look-ahead
    replies; :mod:`hvd_dc.async_momentum`), two workers: the default for momentum SGD."""

    BYTES = (40, 44)

    def _make(self, n: int):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(n))], lr=LR, momentum=0.9)
        return make_state(opt, 2, kernels=self.KERNELS, variant="adaptive", dc_lambda=LAMBDA0,
                          dc_momentum=MOMENTUM, dc_eps=EPS, async_momentum="dana")

    def describe(self) -> str:
        fused = all(self.state.update.fused_segments)
        return ("fused C kernel (hvd_dc._kernels.dana): one pass for the look-ahead, the compensation, v, S, w "
                "and the reply" if fused else "torch path of DanaState")


class PieceBaseline:
    """The same model as NUM_PIECES separate parameters."""

    def __init__(self, n: int) -> None:
        sizes = [n // NUM_PIECES] * NUM_PIECES
        sizes[-1] += n - sum(sizes)
        self.w = list(torch.zeros(n).split(sizes))
        self.wb = list(torch.zeros(n).split(sizes))
        self.ms = list(torch.zeros(n).split(sizes))
        self.g = list(_grad(n, 1).split(sizes))

    def weights(self) -> torch.Tensor:
        return torch.cat(self.w)


class NaiveLoop(PieceBaseline):
    def apply(self) -> None:
        for g, w, wb, ms in zip(self.g, self.w, self.wb, self.ms):
            ms.copy_((MOMENTUM * ms) + ((1.0 - MOMENTUM) * (g * g)))
            lam = LAMBDA0 / torch.sqrt(ms + EPS)
            gdc = g + (((lam * g) * g) * (w - wb))
            w.sub_(LR * gdc)

    def pull(self) -> None:
        for w, wb in zip(self.w, self.wb):
            wb.copy_(w)


class Foreach(PieceBaseline):
    def apply(self) -> None:
        g, w = self.g, self.w
        torch._foreach_mul_(self.ms, MOMENTUM)
        torch._foreach_add_(self.ms, torch._foreach_mul(torch._foreach_mul(g, g), 1.0 - MOMENTUM))
        lam = torch._foreach_add(self.ms, EPS)
        torch._foreach_sqrt_(lam)
        torch._foreach_reciprocal_(lam)
        torch._foreach_mul_(lam, LAMBDA0)  # lambda0 / sqrt(ms + eps), up to rounding
        torch._foreach_mul_(lam, g)
        torch._foreach_mul_(lam, g)
        torch._foreach_mul_(lam, torch._foreach_sub(w, self.wb))
        torch._foreach_add_(lam, g)
        torch._foreach_add_(w, lam, alpha=-LR)

    def pull(self) -> None:
        torch._foreach_copy_(self.wb, self.w)


IMPLS = {"hvd_dc": ServerApply, "hvd_dc_torch_path": ServerApplyTorch, "naive_loop": NaiveLoop, "foreach": Foreach,
         "hvd_dc_dana": ServerApplyDana}
#: the implementations of the same update (DANA's is another one)
SAME_UPDATE = ("hvd_dc", "hvd_dc_torch_path", "naive_loop", "foreach")


def cross_check(n: int = 20_000) -> float:
    """The same sequence of applies and pulls on each implementation from the same start;
    max |difference| of the weights. Two applies between pulls make w != w_bak, so the
    compensation term is exercised (right after a pull it is zero with one worker)."""
    outs = {}
    for name in SAME_UPDATE:
        impl = IMPLS[name](n)
        for op in ("apply", "apply", "pull", "apply", "apply", "apply"):
            getattr(impl, op)()
        outs[name] = impl.weights().double()
    ref = outs["hvd_dc"]
    scale = float(ref.abs().max())
    diff = max(float((o - ref).abs().max()) for o in outs.values())
    if not diff <= 1e-5 * max(scale, 1e-12) + 1e-12:
        raise AssertionError(f"baselines disagree with hvd_dc's apply: max diff {diff} (scale {scale})")
    return diff


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(n: int, repeats: int) -> dict:
    """Round-robin over memcpy and the implementations, ``repeats`` rounds; medians.

    Interleaving makes a noisy neighbour hit every implementation and the memcpy baseline
    alike, instead of whichever happened to run while it was busy.
    """
    src = torch.from_numpy(np.random.default_rng(0).random(n, dtype=np.float32)).numpy()
    dst = np.empty_like(src)
    impls = {name: cls(n) for name, cls in IMPLS.items()}

    def apply_pull(impl):
        if hasattr(impl, "apply_and_pull"):
            impl.apply_and_pull()
        else:
            impl.apply()
            impl.pull()

    for impl in impls.values():  # warm-up: first touches of scratch and buffers
        impl.apply()
        impl.pull()
    np.copyto(dst, src)
    mem = []
    t_apply = {name: [] for name in impls}
    t_both = {name: [] for name in impls}
    for _ in range(repeats):
        mem.append(_timed(lambda: np.copyto(dst, src)))
        for name, impl in impls.items():
            t_apply[name].append(_timed(impl.apply))
            t_both[name].append(_timed(lambda: apply_pull(impl)))
    row = {"n": n, "repeats": repeats, "memcpy_GBps": 2 * 4 * n / statistics.median(mem) / 1e9,
           "hvd_dc_implementation": impls["hvd_dc"].describe()}
    for name in impls:
        ta, tb = statistics.median(t_apply[name]), statistics.median(t_both[name])
        b_apply, b_both = getattr(IMPLS[name], "BYTES", ServerApply.BYTES)
        row[name] = {
            "apply_s": ta,
            "apply_pull_s": tb,
            "updates_per_s": 1.0 / tb,
            "apply_GBps": b_apply * n / ta / 1e9,
            "apply_pull_GBps": b_both * n / tb / 1e9,
        }
        row[name]["apply_vs_memcpy"] = row[name]["apply_GBps"] / row["memcpy_GBps"]
        row[name]["apply_pull_vs_memcpy"] = row[name]["apply_pull_GBps"] / row["memcpy_GBps"]
    return row


def main() -> None:
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    torch.set_num_threads(1)  # "on one core"
    sizes = [100_000, 1_000_000] if args.quick else [1_000_000, 10_000_000, 50_000_000]
    diff = cross_check()
    rows = []
    for n in sizes:
        repeats = 5 if args.quick else max(5, min(30, int(3e8 // (n * 4 * 10))))
        rows.append(measure(n, repeats))
        print(f"n={n:,}: done", flush=True)
    headers = ["params", "memcpy GB/s", "impl", "updates/s", "apply GB/s", "apply / memcpy",
               "apply+pull GB/s", "apply+pull / memcpy"]
    table = []
    for r in rows:
        for name in IMPLS:
            x = r[name]
            table.append([f"{r['n']:,}", r["memcpy_GBps"], name, x["updates_per_s"], x["apply_GBps"],
                          x["apply_vs_memcpy"], x["apply_pull_GBps"], x["apply_pull_vs_memcpy"]])
    text = common.format_table(headers, table)
    print(text)
    print(f"target: hvd_dc apply / memcpy >= 0.5 on one core. hvd_dc implementation: {rows[0]['hvd_dc_implementation']}")
    print(f"cross-check: naive and foreach agree with hvd_dc's apply_push to {diff:.2e}")
    common.write_json(args.out, "apply_rate", {
        "quick": args.quick,
        "threads": torch.get_num_threads(),
        "bytes_model": {"apply": "24n (DANA: 40n)", "apply_pull": "32n (DANA: 44n)", "memcpy": "2 x buffer bytes"},
        "target": {"apply_vs_memcpy": 0.5},
        "cross_check_max_abs_diff": diff,
        "rows": rows,
        "table": text,
    })


if __name__ == "__main__":
    main()

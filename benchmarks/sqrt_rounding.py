"""How often torch's CPU sqrt differs from the correctly rounded square root.

hvd_dc.dc_math uses numpy's sqrt (correctly rounded, like the fused C kernels and CUDA's
default) instead of torch.sqrt on CPU tensors; this prints why, for the torch installed:

    python benchmarks/sqrt_rounding.py
"""

import numpy as np
import torch


def mismatch_fraction(dtype: torch.dtype, n: int = 1_000_000) -> float:
    torch.manual_seed(0)
    x = torch.rand(n, dtype=dtype) * 0.1 + 1e-7  # the range of MeanSquare + eps
    return float((torch.sqrt(x).numpy() != np.sqrt(x.numpy())).mean())


if __name__ == "__main__":
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    for dtype in (torch.float32, torch.float64):
        print(f"{dtype}: torch.sqrt differs from the correctly rounded sqrt for "
              f"{100 * mismatch_fraction(dtype):.1f}% of 1,000,000 inputs")

"""Functions that tests/test_harness.py runs on workers through hvd_dc.run."""

import torch

import hvd_dc as hvd


def rank_and_sum(scale):
    """Every worker: its rank and the sum of the ranks times ``scale`` (a collective)."""
    hvd.init()
    total = hvd.allreduce(torch.tensor([float(hvd.rank())]), op=hvd.Sum).item()
    return hvd.rank(), total * scale


def fails_on_worker_1():
    """Worker 1 raises; worker 0 returns."""
    hvd.init()
    if hvd.rank() == 1:
        raise ValueError("worker 1 broke on purpose")
    return "fine"

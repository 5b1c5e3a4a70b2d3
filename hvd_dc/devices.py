"""Which device each side computes on, and whether data is staged through host memory.

This module owns the device decisions and nothing else (no MPI, no copies):

* :func:`parse_server_device` checks the ``server_device`` option a worker passes
  (``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``); :func:`resolve_server_device` turns
  it into the device the parameter server keeps its master weights on, on the server's
  own hardware. ``"auto"`` means the server's current CUDA device when it has one, else
  the CPU.
* :func:`worker_device` finds the one device a worker's trained parameters live on
  (CPU or CUDA) and refuses anything else with a message that names the parameter.
* :func:`is_staged` says whether a worker's model is staged. The MPI windows always live
  in host memory (docs/DESIGN.md: GPU memory as window memory is not dependable), so CUDA
  parameters and a CUDA server are *staged*: the model lives in device buffers and is
  copied to and from the host buffers that MPI reads and writes. The ``HVD_DC_STAGING``
  setting ``"always"`` stages CPU parameters and a CPU server the same way, through
  separate CPU buffers; it exists so that the staging logic runs, and is tested, on
  machines without a GPU. The server follows the workers' setting (it travels in the
  model's spec).
"""

from __future__ import annotations

import re
from typing import Iterable, Optional, Tuple

import torch

__all__ = ["SERVER_DEVICE_CHOICES", "parse_server_device", "resolve_server_device", "worker_device", "is_staged"]

SERVER_DEVICE_CHOICES = "'auto', 'cpu', 'cuda' or 'cuda:N'"

_CUDA_INDEX = re.compile(r"cuda:(\d+)")


def is_staged(device: torch.device, staging: str) -> bool:
    """Whether a worker whose parameters live on ``device`` stages them (``staging``: the
    ``HVD_DC_STAGING`` setting, ``"auto"`` or ``"always"``)."""
    return device.type != "cpu" or staging == "always"


def parse_server_device(option) -> str:
    """The ``server_device`` option as its canonical string; ValueError if malformed.

    Accepts a string or a ``torch.device``. Nothing here asks whether the device exists:
    the server rank decides that on its own hardware (:func:`resolve_server_device`).
    """
    if isinstance(option, torch.device):
        option = str(option)
    if not isinstance(option, str):
        raise ValueError(f"server_device must be {SERVER_DEVICE_CHOICES}; got {option!r}")
    if option in ("auto", "cpu", "cuda") or _CUDA_INDEX.fullmatch(option):
        return option
    raise ValueError(f"server_device must be {SERVER_DEVICE_CHOICES}; got {option!r}")


def resolve_server_device(
    option: str,
    staging: str = "auto",
    cuda_available: Optional[bool] = None,
    device_count: Optional[int] = None,
    current_device: Optional[int] = None,
) -> Optional[torch.device]:
    """The device the server keeps its master weights on, or None for "in the window".

    None means the CPU with no staging: the server computes straight on window memory
    (its reply areas are the workers' backups). A ``torch.device`` means staged: master
    weights, backups and optimizer state live there and the window only carries copies.
    ``staging``: the workers' ``HVD_DC_STAGING`` (``"always"`` stages a CPU server too).
    The CUDA facts default to this process's; tests pass them in.
    """
    option = parse_server_device(option)
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if option == "auto":
        option = "cuda" if cuda_available else "cpu"
    if option == "cpu":
        return torch.device("cpu") if staging == "always" else None
    if not cuda_available:
        raise ValueError(
            f"server_device={option!r} but the parameter server (world rank 0) has no usable CUDA device "
            "(torch.cuda.is_available() is False there); use server_device='auto' or 'cpu'"
        )
    if device_count is None:
        device_count = torch.cuda.device_count()
    if option == "cuda":
        index = torch.cuda.current_device() if current_device is None else current_device
    else:
        index = int(_CUDA_INDEX.fullmatch(option).group(1))  # type: ignore[union-attr]
    if index >= device_count:
        raise ValueError(
            f"server_device={option!r} but the parameter server (world rank 0) sees {device_count} CUDA device(s)"
        )
    return torch.device("cuda", index)


def worker_device(named: Iterable[Tuple[str, torch.Tensor]]) -> torch.device:
    """The single device of a worker's trained parameters (CPU or one CUDA device)."""
    found = None
    first_name = None
    for name, p in named:
        dev = p.device
        if dev.type not in ("cpu", "cuda"):
            raise ValueError(
                f"hvd_dc trains parameters on the CPU or on CUDA devices; parameter {name!r} lives on {dev}"
            )
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        if found is None:
            found, first_name = dev, name
        elif dev != found:
            raise ValueError(
                f"hvd_dc needs all of a worker's trained parameters on one device; {first_name!r} is on {found} "
                f"but {name!r} is on {dev} (move the whole model with model.to(device) before wrapping)"
            )
    if found is None:
        raise ValueError("the optimizer has no parameter that requires grad; there is nothing to train")
    return found

"""Moving a worker's model between its device and the host buffers that MPI moves.

MPI windows live in host memory (docs/DESIGN.md: GPU memory as window memory is not
dependable), so a worker whose parameters live on a
CUDA device keeps two copies of the flat model: device buffers that the parameters'
``.data`` and ``.grad`` are views of, and the channel's pinned host areas that one ``Put``
and one ``Get`` move. :class:`DeviceStaging` owns the device buffers and the copies
between the two, and the ordering of those copies on the device; it knows nothing of MPI
or of the server.

Copies and how they overlap with compute:

* gradients, device to host, on a side CUDA stream. During the backward pass that ends
  an accumulation window, each parameter's gradient is copied as soon as autograd has
  accumulated it (:meth:`stage_parameter`, called from a post-accumulate-grad hook), so
  the copy of the last layers' gradients runs while the first layers' gradients are
  still being computed. ``step()`` then only waits for the copies to finish
  (:meth:`gradients_to_host`). The eager copy is used only if every parameter was
  staged and the gradient buffer's version counter has not moved since: any in-place
  edit torch tracks (``clip_grad_norm_``, ``p.grad.mul_``, a re-bound ``.grad``) makes
  ``step()`` copy the whole buffer again. Edits torch does not track (through
  ``p.grad.data``) must come after ``optimizer.synchronize()``, as Horovod also asks,
  which makes the next ``step()`` copy everything.
  With fp16 compression the float32 gradients are rounded to float16 on the device, so
  half as many bytes cross the bus.
* weights, host to device, on the side stream after the ``Get``; the compute stream waits
  for that copy on the device, not the host, so ``step()`` returns at once and the next
  forward pass queues behind the copy. The host area is not written again (by the next
  ``Get``) until that copy has finished.

On the CPU the same object does the same copies synchronously; ``HVD_DC_STAGING=always``
uses it for CPU parameters, so that this logic is tested on machines without a GPU.
"""

from __future__ import annotations

from typing import List, Optional

import torch

from .layout import FlatLayout

__all__ = ["DeviceStaging"]


class DeviceStaging:
    """Device-resident flat weights and gradients of one worker, and their copies to and
    from the host areas ``host_grad`` (wire layout) and ``host_weights`` (model layout)."""

    def __init__(
        self,
        layout: FlatLayout,
        device: torch.device,
        host_grad: torch.Tensor,
        host_weights: torch.Tensor,
        wire_fp16: bool,
    ) -> None:
        if host_grad.numel() != layout.wire_nbytes or host_weights.numel() != layout.nbytes:
            raise ValueError("host areas do not match the model layout")
        self.layout = layout
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.host_grad = host_grad
        self.host_weights = host_weights
        self.weights = torch.zeros(layout.nbytes, dtype=torch.uint8, device=self.device)
        self.grads = torch.zeros(layout.nbytes, dtype=torch.uint8, device=self.device)
        self.weight_views = layout.param_views(self.weights)
        self.grad_views = layout.param_views(self.grads)
        self._grad_segments = layout.segment_views(self.grads)
        self._host_grad_params = layout.param_views(host_grad, wire=True)
        self.wire: Optional[torch.Tensor] = None
        self._wire_params: List[Optional[torch.Tensor]] = [None] * len(layout.params)
        self._wire_segments: List[torch.Tensor] = []
        if wire_fp16:
            self.wire = torch.zeros(layout.wire_nbytes, dtype=torch.uint8, device=self.device)
            self._wire_params = list(layout.param_views(self.wire, wire=True))
            self._wire_segments = layout.segment_views(self.wire, wire=True)
        n = len(layout.params)
        self._staged = [False] * n
        self._staged_count = 0
        self._staged_version = -1
        self._eager_allowed = True
        if self.cuda:
            self.stream = torch.cuda.Stream(device=self.device)
            self._grads_on_host = torch.cuda.Event()
            self._weights_on_device = torch.cuda.Event()
            self._weights_pending = False
        # counters for stats(): how many pushes used the copies made during backward
        self.eager_pushes = 0
        self.full_pushes = 0

    # -- gradients: device -> host ---------------------------------------------------------

    def stage_parameter(self, index: int) -> bool:
        """Start copying parameter ``index``'s gradient to the host (it is final); return
        whether it was staged (not when edits were announced with ``synchronize``)."""
        if not self._eager_allowed:
            return False
        if self._staged[index]:
            return True
        src = self.grad_views[index]
        wire = self._wire_params[index]
        if self.cuda:
            compute = torch.cuda.current_stream(self.device)
            if wire is not None:
                wire.copy_(src)  # rounded on the compute stream, where src was produced
                src = wire
            self.stream.wait_stream(compute)
            with torch.cuda.stream(self.stream):
                self._host_grad_params[index].copy_(src, non_blocking=True)
        else:
            self._host_grad_params[index].copy_(src)
        self._staged[index] = True
        self._staged_count += 1
        self._staged_version = self.grads._version
        return True

    def eager_copy_valid(self) -> bool:
        """Every gradient was copied during backward and none changed since."""
        return (
            self._eager_allowed
            and self._staged_count == len(self._staged)
            and self.grads._version == self._staged_version
        )

    def gradients_to_host(self) -> None:
        """Make ``host_grad`` hold the current gradients; returns when it does."""
        if self.eager_copy_valid():
            self.eager_pushes += 1
        else:
            self.full_pushes += 1
            src = self.grads
            if self.wire is not None:
                for w, g in zip(self._wire_segments, self._grad_segments):
                    w.copy_(g)
                src = self.wire
            if self.cuda:
                self.stream.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(self.stream):
                    self.host_grad.copy_(src, non_blocking=True)
            else:
                self.host_grad.copy_(src)
        if self.cuda:
            self._grads_on_host.record(self.stream)
            self._grads_on_host.synchronize()
        self.reset_gradient_staging()

    def reset_gradient_staging(self) -> None:
        """Forget the copies made so far (after a push, ``zero_grad`` or ``synchronize``)."""
        if self._staged_count:
            self._staged = [False] * len(self._staged)
            self._staged_count = 0
        self._staged_version = -1
        self._eager_allowed = True

    def forbid_eager_copy(self) -> None:
        """The user may now edit gradients behind torch's back: copy them all at ``step()``."""
        self.reset_gradient_staging()
        self._eager_allowed = False

    # -- weights: host -> device -----------------------------------------------------------

    def before_host_weights_written(self) -> None:
        """Wait until the last host-to-device copy has read ``host_weights``."""
        if self.cuda and self._weights_pending:
            self._weights_on_device.synchronize()
            self._weights_pending = False

    def weights_to_device(self) -> None:
        """Copy ``host_weights`` (just fetched) into the device weights.

        On CUDA the copy runs on the side stream after every kernel already queued on the
        compute stream (they may still read the old weights), and the compute stream waits
        for it; the host does not.
        """
        if self.cuda:
            compute = torch.cuda.current_stream(self.device)
            self.stream.wait_stream(compute)
            with torch.cuda.stream(self.stream):
                self.weights.copy_(self.host_weights, non_blocking=True)
            self._weights_on_device.record(self.stream)
            self._weights_pending = True
            compute.wait_stream(self.stream)
        else:
            self.weights.copy_(self.host_weights)

    def synchronize(self) -> None:
        """Wait for every copy in flight (before the buffers are released)."""
        if self.cuda:
            self.stream.synchronize()
            self._weights_pending = False

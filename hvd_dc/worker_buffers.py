"""A worker's model in flat buffers: where gradients accumulate and weights land.

:class:`WorkerBuffers` owns the binding of the user's parameters to hvd_dc's memory and
the autograd hooks that watch the backward pass; it knows nothing of MPI or the server.

* **Weights.** Each trained parameter's ``.data`` is a view of one flat buffer: the
  channel's reply area (the weights arrive there with one ``Get``, straight into the
  model), or, when staged (CUDA parameters, ``HVD_DC_STAGING=always``), the device
  buffer of :class:`~hvd_dc.staging.DeviceStaging`, which copies the reply area in.
* **Gradients.** Each ``.grad`` is a view of one flat gradient buffer: the channel's
  push area (one ``Put`` sends it), or a full-precision buffer that is rounded into the
  push area when gradients travel as fp16, or the staging's device buffer. Autograd
  accumulates into those views in place; ``zero_grad`` clears the buffer in one call.
  A ``.grad`` re-pointed by user code (``model.zero_grad()``, an assignment) is copied
  back in before the push.
* **Hooks.** A post-accumulate-grad hook counts backward passes (more than
  ``backward_passes_per_step`` before ``step()`` is an error, as in Horovod); when staged,
  one per parameter starts that gradient's copy to the host as soon as autograd has
  finished it, overlapping the rest of the backward pass.
"""

from __future__ import annotations

import functools
import operator
from typing import Any, Dict, List, Optional

import torch

from .layout import FlatLayout
from .staging import DeviceStaging

__all__ = ["WorkerBuffers"]


class WorkerBuffers:
    """Binds ``params`` (in the layout's order) to flat buffers: ``grad_area`` and
    ``weights_area`` are the channel's push and reply areas (host memory)."""

    def __init__(
        self,
        layout: FlatLayout,
        params: List[torch.nn.Parameter],
        grad_area: torch.Tensor,
        weights_area: torch.Tensor,
        staging: Optional[DeviceStaging],
        wire_fp16: bool,
        backward_passes_per_step: int,
    ) -> None:
        self.layout = layout
        self.params = params
        self.staging = staging
        self.backward_passes_per_step = backward_passes_per_step
        self._wire_segments: Optional[List[torch.Tensor]] = None
        if staging is not None:
            # the staging owns the device buffers and rounds to the wire dtype itself
            staging.weights_to_device()  # the initial weights, just read into the reply area
            self.weight_views = staging.weight_views
            self.grad_buffer = staging.grads
            self.grad_views = staging.grad_views
        else:
            self.weight_views = layout.param_views(weights_area)
            self.grad_buffer = torch.zeros(layout.nbytes, dtype=torch.uint8) if wire_fp16 else grad_area
            self.grad_views = layout.param_views(self.grad_buffer)
            if wire_fp16:
                self._grad_segments = layout.segment_views(self.grad_buffer)
                self._wire_segments = layout.segment_views(grad_area, wire=True)
        with torch.no_grad():
            for p, view in zip(params, self.weight_views):
                p.data = view
        self.grad_buffer.zero_()
        with torch.no_grad():
            for p, view in zip(params, self.grad_views):
                if p.grad is not None:
                    view.copy_(p.grad.to_dense() if p.grad.is_sparse else p.grad)
                p.grad = view
        self._grad_getter = operator.attrgetter("grad")
        self._backward_passes = 0
        self._grad_passes = [0] * len(params)
        self._hooks = [params[0].register_post_accumulate_grad_hook(self._count_backward)]
        if staging is not None:
            for i, p in enumerate(params):
                self._hooks.append(p.register_post_accumulate_grad_hook(functools.partial(self._grad_ready, i)))

    # -- gradients leave ---------------------------------------------------------------------

    def gradients_to_push_area(self) -> None:
        """Make the push area hold this step's gradient, in the wire dtype."""
        if self._backward_passes > self.backward_passes_per_step:
            raise RuntimeError(
                f"gradients were accumulated over {self._backward_passes} backward passes but "
                f"backward_passes_per_step={self.backward_passes_per_step}; call step() every "
                f"{self.backward_passes_per_step} backward passes or raise backward_passes_per_step"
            )
        self._gather_loose_grads()
        if self.staging is not None:
            self.staging.gradients_to_host()
        elif self._wire_segments is not None:
            for wire, seg in zip(self._wire_segments, self._grad_segments):
                wire.copy_(seg)

    def _gather_loose_grads(self) -> None:
        """Copy in any ``.grad`` that is no longer a view of the flat buffer.

        The fast path is one identity check per parameter done in C (map/operator.is_):
        autograd accumulated into the bound views.
        """
        grads = list(map(self._grad_getter, self.params))
        if all(map(operator.is_, grads, self.grad_views)):
            return
        with torch.no_grad():
            for p, g, view in zip(self.params, grads, self.grad_views):
                if g is view:
                    continue
                if g is None:
                    view.zero_()
                else:
                    view.copy_(g.to_dense() if g.is_sparse else g)
                p.grad = view

    # -- weights arrive ----------------------------------------------------------------------

    def before_weights_arrive(self) -> None:
        """The reply area is about to be overwritten: wait until its last copy to the
        device has read it."""
        if self.staging is not None:
            self.staging.before_host_weights_written()

    def weights_arrived(self) -> None:
        """The reply area holds new weights: make them the model's (staged: copy them to
        the device) and tell autograd the parameters changed."""
        if self.staging is not None:
            self.staging.weights_to_device()
        torch.autograd.graph.increment_version(self.weight_views)

    # -- the optimizer's calls ---------------------------------------------------------------

    def zero_grad(self) -> None:
        """Clear the gradients in one fill; keep every ``.grad`` bound to the buffer."""
        self.grad_buffer.zero_()
        grads = list(map(self._grad_getter, self.params))
        if not all(map(operator.is_, grads, self.grad_views)):
            for p, view in zip(self.params, self.grad_views):
                p.grad = view
        self.reset_passes()

    def forbid_eager_copy(self) -> None:
        """Gradients may now be edited by any means: the next push copies them whole."""
        if self.staging is not None:
            self.staging.forbid_eager_copy()

    def reset_passes(self) -> None:
        self._backward_passes = 0
        if self.staging is not None:
            self._grad_passes = [0] * len(self._grad_passes)
            self.staging.reset_gradient_staging()

    def staging_stats(self) -> Dict[str, Any]:
        if self.staging is None:
            return {"staged": False}
        return {"staged": True, "pushes_copied_during_backward": self.staging.eager_pushes,
                "pushes_copied_at_step": self.staging.full_pushes}

    def close(self) -> None:
        """Remove the hooks and wait for copies in flight. The model keeps its weights:
        they live in the channel's local buffers (or the device), not in the window."""
        for handle in self._hooks:
            handle.remove()
        if self.staging is not None:
            self.staging.synchronize()

    # -- hooks -------------------------------------------------------------------------------

    def _count_backward(self, _param: torch.Tensor) -> None:
        self._backward_passes += 1

    def _grad_ready(self, index: int, param: torch.Tensor) -> None:
        """A staged parameter's gradient is final for this step: start its copy to host."""
        passes = self._grad_passes[index] + 1
        self._grad_passes[index] = passes
        if passes == self.backward_passes_per_step and param.grad is self.grad_views[index]:
            self.staging.stage_parameter(index)  # type: ignore[union-attr]

"""A worker's model in flat buffers: where gradients accumulate and weights land.

:class:`WorkerBuffers` owns the binding of the user's parameters to hvd_dc's memory and
the autograd hooks that watch the backward pass; it knows nothing of MPI or the server.

* **Weights.** Each trained parameter's ``.data`` is a view of a flat buffer: one of the
  channel's two weight buffers (replies are read into the other one while backward may
  still read these, then :meth:`swap_weights` re-points the parameters), or, when staged
  (CUDA parameters, ``HVD_DC_STAGING=always``), the device buffer of
  :class:`~hvd_dc.staging.DeviceStaging`, which copies the one host buffer in.
* **Gradients.** Each ``.grad`` is a view of one flat gradient buffer: the channel's
  gradient area (a pushed chunk is one ``Put`` from it), or a full-precision buffer that
  is rounded into that area chunk by chunk when gradients travel as fp16, or the staging's
  device buffer. Autograd accumulates into those views in place; ``zero_grad`` clears the
  buffer in one call. A ``.grad`` re-pointed by user code or by autograd (a sparse
  gradient, ``model.zero_grad()``) is copied back in when backward ends.
* **Hooks.** A post-accumulate-grad hook per parameter counts its backward passes; on the
  ``backward_passes_per_step``-th, the parameter's gradient is final and
  :meth:`chunk_ready` learns when all of a chunk's parameters are final. The first hook of
  a backward pass queues a callback for its end (:meth:`backward_ended`). A caller-given
  ``on_ready(chunk)`` / ``on_backward_end()`` pair is where the worker pushes.
"""

from __future__ import annotations

import functools
import operator
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from .chunks import ChunkPlan
from .staging import DeviceStaging

__all__ = ["WorkerBuffers"]


class WorkerBuffers:
    """Binds ``params`` (in the layout's order) to flat buffers: ``grad_area`` is the
    channel's gradient area (wire layout), ``weights`` its host weight buffers (model
    layout; two unless staged)."""

    def __init__(
        self,
        plan: ChunkPlan,
        params: List[torch.nn.Parameter],
        grad_area: torch.Tensor,
        weights: Sequence[torch.Tensor],
        staging: Optional[DeviceStaging],
        wire_fp16: bool,
        backward_passes_per_step: int,
    ) -> None:
        layout = plan.layout
        self.plan = plan
        self.layout = layout
        self.params = params
        self.staging = staging
        self.backward_passes_per_step = backward_passes_per_step
        self.wire_fp16 = wire_fp16 and staging is None
        self.current = 0  # which host weight buffer the parameters view (unstaged)
        if staging is not None:
            # the staging owns the device buffers and rounds to the wire dtype itself
            staging.weights_to_device()  # the initial weights, just read into the host buffer
            self._weight_views = [staging.weight_views]
            self.grad_buffer = staging.grads
            self.grad_views = staging.grad_views
        else:
            self._weight_views = [layout.param_views(w) for w in weights]
            self.grad_buffer = torch.zeros(layout.nbytes, dtype=torch.uint8) if wire_fp16 else grad_area
            self.grad_views = layout.param_views(self.grad_buffer)
        self._grad_bytes = self.grad_buffer
        self._wire_bytes = grad_area
        self._segments = layout.segments
        self._wire_segments = layout.wire_segments
        with torch.no_grad():
            for p, view in zip(params, self._weight_views[0]):
                p.data = view
        self.grad_buffer.zero_()
        with torch.no_grad():
            for p, view in zip(params, self.grad_views):
                if p.grad is not None:
                    view.copy_(p.grad.to_dense() if p.grad.is_sparse else p.grad)
                p.grad = view
        self._grad_getter = operator.attrgetter("grad")
        self._chunk_size = np.array([len(c.params) for c in plan.chunks], dtype=np.int64)
        self._param_chunks = [plan.of_param(i) for i in range(len(params))]
        self.on_ready: Optional[Callable[[int], None]] = None
        self.on_backward_end: Optional[Callable[[], None]] = None
        self._hooks = [p.register_post_accumulate_grad_hook(functools.partial(self._grad_final, i))
                       for i, p in enumerate(params)]
        self.reset_passes()

    # -- the backward pass -------------------------------------------------------------------

    def _grad_final(self, index: int, param: torch.Tensor) -> None:
        if not self._callback_queued:
            self._callback_queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._backward_ended)
        passes = self._grad_passes[index] + 1
        self._grad_passes[index] = passes
        if passes != self.backward_passes_per_step or param.grad is not self.grad_views[index]:
            return  # not final yet, or autograd replaced the view (copied in at the end)
        if self.staging is not None and not self.staging.stage_parameter(index):
            return  # edits announced: the gradient is copied whole at step()
        self._final[index] = True
        for c in self._param_chunks[index]:
            self._missing[c] -= 1
            if self._missing[c] == 0 and self.on_ready is not None:
                self.on_ready(c)

    def _backward_ended(self) -> None:
        self._callback_queued = False
        self.backward_passes += 1
        if self.backward_passes == self.backward_passes_per_step and self.on_backward_end is not None:
            self.on_backward_end()

    def chunk_ready(self, c: int) -> bool:
        """Every parameter of chunk ``c`` has its final gradient of this step in the buffer."""
        return bool(self._missing[c] == 0)

    def gather_loose_grads(self) -> None:
        """Copy in any ``.grad`` that is no longer a view of the flat buffer (a sparse
        gradient, ``model.zero_grad()``, an assignment) and bind it back.

        The fast path is one identity check per parameter done in C (map/operator.is_).
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

    def passes_error(self) -> Optional[str]:
        """What is wrong if more backward passes than ``backward_passes_per_step`` ran."""
        if self.backward_passes > self.backward_passes_per_step:
            return (
                f"gradients were accumulated over {self.backward_passes} backward passes but "
                f"backward_passes_per_step={self.backward_passes_per_step}; call step() every "
                f"{self.backward_passes_per_step} backward passes or raise backward_passes_per_step"
            )
        return None

    @property
    def grad_version(self) -> int:
        """Moves with every in-place change of any gradient (views share the counter)."""
        return self.grad_buffer._version

    # -- gradients leave ---------------------------------------------------------------------

    def chunk_to_wire(self, c: int) -> None:
        """Make the gradient area hold chunk ``c`` in the wire dtype (fp16 compression)."""
        if not self.wire_fp16:
            return
        chunk = self.plan.chunks[c]
        seg, wseg = self._segments[chunk.segment], self._wire_segments[chunk.segment]
        src = self._grad_bytes[seg.offset : seg.offset + seg.nbytes].view(seg.dtype)
        dst = self._wire_bytes[wseg.offset : wseg.offset + wseg.nbytes].view(wseg.dtype)
        dst[chunk.start : chunk.start + chunk.numel].copy_(src[chunk.start : chunk.start + chunk.numel])

    def gradients_to_host(self) -> None:
        """Staged: make the host gradient area hold the whole gradient (the copies made
        during backward when still valid); unstaged it already does."""
        if self.staging is not None:
            self.staging.gradients_to_host()

    # -- weights arrive ----------------------------------------------------------------------

    @property
    def reply_target(self) -> int:
        """The host weight buffer the next replies go to: the one the model does not use
        (staged: the only one)."""
        return 0 if self.staging is not None else 1 - self.current

    @property
    def host_weights(self) -> int:
        """The host weight buffer that holds the weights the model received last."""
        return 0 if self.staging is not None else self.current

    def before_weights_arrive(self) -> None:
        """The host buffer is about to be overwritten: wait until its last copy to the
        device has read it."""
        if self.staging is not None:
            self.staging.before_host_weights_written()

    def weights_arrived(self) -> None:
        """The reply target holds the new weights: make them the model's (re-point the
        parameters, or copy to the device) and tell autograd the parameters changed."""
        if self.staging is not None:
            self.staging.weights_to_device()
            views = self._weight_views[0]
        else:
            self.current = 1 - self.current
            views = self._weight_views[self.current]
            with torch.no_grad():
                for p, view in zip(self.params, views):
                    p.data = view
        torch.autograd.graph.increment_version(list(self.params))

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
        """A new step: no gradient is final, no backward pass counted."""
        self.backward_passes = 0
        self._callback_queued = False
        self._grad_passes = [0] * len(self.params)
        self._final = [False] * len(self.params)
        self._missing = self._chunk_size.copy()
        if self.staging is not None:
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

"""Replaying a sampler step as one CUDA graph, so the host launches one graph a step instead
of the thousand-odd kernels of a forward pass (at 8B shapes and a few prompts a step is bound
by those launches, not by the GPU)."""

from __future__ import annotations

import gc
from collections.abc import Callable

import torch


class GraphedCall:
    """Runs ``fn()`` by replaying the CUDA graph of its kernels on ``device``, captured on the
    first call.

    ``fn`` must take no arguments and work in place on tensors that stay allocated while this
    object lives: whatever it reads from Python (ints, slices, scalars) is frozen into the graph
    at capture, so inputs that change between calls have to be copied into tensors ``fn`` reads.
    It must not synchronise with the host (capture refuses it) and its kernels must already
    have been compiled and tuned by one eager call of the same shapes.

    Graphs made with the same ``pool`` (``torch.cuda.graph_pool_handle()``) share their
    memory, which is safe when only one of them is replayed at a time.
    """

    def __init__(self, fn: Callable[[], None], device: torch.device, pool=None):
        self.fn = fn
        self.device = device
        self.pool = pool
        self.graph: torch.cuda.CUDAGraph | None = None

    def __call__(self) -> None:
        # A graph is captured and replayed on the current device: make it the tensors' one.
        with torch.cuda.device(self.device):
            self._run()

    def _run(self) -> None:
        if self.graph is None:
            graph = torch.cuda.CUDAGraph()
            # A garbage collection during capture could free another graph or unload a Triton
            # module, which the capture does not allow.
            collecting = gc.isenabled()
            gc.disable()
            try:
                # Capture records the kernels without running them; the replay below runs them.
                with torch.cuda.graph(graph, pool=self.pool):
                    self.fn()
            finally:
                if collecting:
                    gc.enable()
            self.graph = graph
        self.graph.replay()

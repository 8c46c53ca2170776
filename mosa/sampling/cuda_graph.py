"""Replaying sampler steps as CUDA graphs, so the host launches one graph a step instead of
the thousand-odd kernels of a forward pass (at 8B shapes and a few prompts a step is bound by
those launches, not by the GPU), and keeping the graphs for later calls of the same shape.

Captured by hand rather than with ``torch.compile(mode="reduce-overhead")``: a step is
already a fixed sequence of Triton and ATen kernels over tensors that stay put, so capturing
it needs no tracing, keeps the step the same code on the CPU (where its eager twin is tested)
and costs no compile time per shape. Compile's fusions are not free here either: the kernels
that could fuse (RMSNorm, RoPE, SwiGLU) are a small share of a weight-bound step. Neither
choice has been measured against the other on a GPU yet.
"""

from __future__ import annotations

import gc
from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch

from mosa.models import DiffusionLM

CUDA_GRAPHS = ("auto", True, False)


def use_cuda_graphs(requested, *, device: torch.device, model, unmet: dict[str, bool]) -> bool:
    """Whether a sampler replays its steps as CUDA graphs.

    ``requested`` is ``"auto"`` (the default: graphs wherever they are supported), ``True``
    (graphs, or a ValueError naming each unmet condition) or ``False`` (always eager).
    ``unmet`` maps the sampler's own conditions (e.g. "temperature must be 0") to whether the
    call fails them; a CUDA device and a ``mosa`` model are always needed.
    """
    if requested not in CUDA_GRAPHS or not isinstance(requested, bool | str):
        raise ValueError(f"cuda_graphs must be 'auto', True or False, got {requested!r}")
    if requested is False:
        return False
    failed = {
        "prompt must be on a CUDA device": device.type != "cuda",
        "the model must be a mosa model (mosa.load_model)": not isinstance(model, DiffusionLM),
        **unmet,
    }
    reasons = [reason for reason, fails in failed.items() if fails]
    if requested == "auto":
        return not reasons
    if reasons:
        raise ValueError(f"cuda_graphs=True needs: {'; '.join(reasons)}; or pass cuda_graphs=False")
    return True


class GraphedCall:
    """Runs ``fn()`` by replaying the CUDA graph of its kernels on ``device``, captured on the
    first call.

    ``fn`` must take no arguments and work in place on tensors that stay allocated while this
    object lives: whatever it reads from Python (ints, slices, scalars) is frozen into the graph
    at capture, so inputs that change between calls have to be copied into tensors ``fn`` reads.
    It must not synchronise with the host (capture refuses it) and its kernels must already
    have been compiled and tuned by one eager call of the same shapes.

    Graphs made with the same ``pool`` (``torch.cuda.graph_pool_handle()``) share their
    memory, which is safe when only one of them runs at a time and none reads memory another
    allocated during its capture.
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


class GraphCache:
    """The step sets of the latest shapes a model was sampled at, least recently used first
    out once there are more than ``max_sets``.

    A set (``mosa.sampling.block_step.StepSet``) holds the tensors its steps read and write
    and the graphs captured over them; a later call of the same shape copies its inputs into
    those tensors and replays the graphs without capturing anything. ``captures`` counts the
    graphs captured so far.
    """

    def __init__(self, max_sets: int = 4):
        self.max_sets = max_sets
        self.sets: OrderedDict[Hashable, object] = OrderedDict()
        self.captures = 0
        self.fingerprint: tuple | None = None

    def follow(self, model) -> GraphCache:
        """Drops every set when ``model``'s parameters are other tensors (moved, cast,
        replaced, new adapter weights) or its adapters were switched, merged or disabled since
        the last call: a graph replays the tensors and branches it was captured with."""
        fingerprint = _fingerprint(model)
        if fingerprint != self.fingerprint:
            self.clear()
            self.fingerprint = fingerprint
        return self

    def get(self, key: Hashable, make: Callable[[], object]):
        """The set stored under ``key``, made by ``make()`` when there is none."""
        if key in self.sets:
            self.sets.move_to_end(key)
            return self.sets[key]
        made = self.sets[key] = make()
        while len(self.sets) > self.max_sets:
            self.sets.popitem(last=False)
        return made

    def __deepcopy__(self, memo) -> GraphCache:
        # A copied model has other tensors: the graphs captured on this one do not serve it.
        return GraphCache(self.max_sets)

    def clear(self) -> None:
        """Drops every set and its graphs (their memory returns to PyTorch's allocator)."""
        self.sets.clear()


def graph_cache(model) -> GraphCache:
    """The ``GraphCache`` kept on ``model`` (made on first use), emptied if the model's
    tensors or adapters changed since it was last used."""
    cache = model.__dict__.get("_sampler_graphs")
    if cache is None:
        cache = model.__dict__["_sampler_graphs"] = GraphCache()
    return cache.follow(model)


def _fingerprint(model) -> tuple:
    tensors = tuple((p.data_ptr(), p.dtype, p.device) for p in model.parameters())
    # peft's LoRA layers branch in Python on these: a graph keeps the branch it was captured in.
    adapters = tuple(
        (
            bool(getattr(module, "disable_adapters", False)),
            bool(getattr(module, "merged", False)),
            tuple(getattr(module, "active_adapters", ())),
        )
        for module in model.modules()
        if hasattr(module, "active_adapters")
    )
    return tensors, adapters


def clear_cuda_graphs(model) -> None:
    """Frees the CUDA graphs ``generate`` captured for ``model`` (e.g. before changing which
    tensors its parameters are: a graph reads the ones it was captured with)."""
    graph_cache(model).clear()

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

import contextlib
import gc
import math
import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator

import torch

from mosa.models import DiffusionLM

CUDA_GRAPHS = ("auto", True, False)
# By default the graph cache of a model keeps at most this share of the device memory that is
# free besides it (read when a set is made): a set holds a KV cache and a graph pool, ~21 GB at
# 8B shapes, batch 32, canvas 1024, so a count of sets alone does not bound it.
GRAPH_MEMORY_FRACTION = 0.5


def graphs_supported_on(device: torch.device) -> bool:
    """Whether ``device`` can capture CUDA graphs (the CPU twin of the tests says yes)."""
    return device.type == "cuda"


def use_cuda_graphs(requested, *, device: torch.device, model, unmet: dict[str, bool]) -> bool:
    """Whether a sampler replays its steps as CUDA graphs.

    ``requested`` is ``"auto"`` (the default: graphs wherever they are supported), ``True``
    (graphs, or a ValueError naming each unmet condition) or ``False`` (always eager).
    ``unmet`` maps the sampler's own conditions (e.g. "temperature must be 0") to whether the
    call fails them; a CUDA device, a ``mosa`` model and autocast off are always needed.
    """
    if requested not in CUDA_GRAPHS or not isinstance(requested, bool | str):
        raise ValueError(f"cuda_graphs must be 'auto', True or False, got {requested!r}")
    if requested is False:
        return False
    failed = {
        "prompt must be on a CUDA device": not graphs_supported_on(device),
        "the model must be a mosa model (mosa.load_model)": not isinstance(model, DiffusionLM),
        # A warm-up under autocast fills autocast's weight-cast cache, the capture reads it and
        # the cache is freed when the context exits: replays would read freed memory (torch's
        # make_graphed_callables refuses autocast for the same reason).
        "autocast must be off (call outside torch.autocast)": torch.is_autocast_enabled(
            device.type
        ),
        **unmet,
    }
    reasons = [reason for reason, fails in failed.items() if fails]
    if requested == "auto":
        return not reasons
    if reasons:
        raise ValueError(f"cuda_graphs=True needs: {'; '.join(reasons)}; or pass cuda_graphs=False")
    return True


class GraphCaptureError(RuntimeError):
    """A step set could not be made or captured: its capture failed (a forward that syncs
    with the host, as an int8 or offloaded model or an accelerate hook does; another thread
    using CUDA), or the device ran out of memory making it (``out_of_memory``)."""

    def __init__(self, cause: BaseException):
        self.out_of_memory = isinstance(cause, torch.cuda.OutOfMemoryError)
        super().__init__(
            f"CUDA graph capture failed ({type(cause).__name__}: {cause}); pass "
            "cuda_graphs='auto' to fall back to the eager sampler, or cuda_graphs=False"
        )


@contextlib.contextmanager
def _failures_as_capture_errors(every_error: bool) -> Iterator[None]:
    """Raises a ``GraphCaptureError`` for any error (``every_error``: a capture, which eager
    code never runs) or for running out of memory (an eager warm-up, which the set's memory
    may have caused; its other errors are the eager path's too)."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as error:
        raise GraphCaptureError(error) from error
    except Exception as error:
        if not every_error:
            raise
        raise GraphCaptureError(error) from error


@contextlib.contextmanager
def outside_inference_mode() -> Iterator[None]:
    """Gradients off, inference mode off: a step set outlives the call that made it, and a
    later call outside ``torch.inference_mode`` cannot write inference tensors in place (inside
    it, normal tensors may be written)."""
    with torch.inference_mode(False), torch.no_grad():
        yield


_CAPTURE_STREAMS: dict[int, torch.cuda.Stream] = {}


def capture_stream(device: torch.device) -> torch.cuda.Stream:
    """The side stream that warm-ups and captures on ``device`` run on, one per device (torch's
    default capture stream is made once, on whichever device was current)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    stream = _CAPTURE_STREAMS.get(index)
    if stream is None:
        stream = _CAPTURE_STREAMS[index] = torch.cuda.Stream(device=index)
    return stream


@contextlib.contextmanager
def _on_capture_stream(device: torch.device) -> Iterator[None]:
    """Runs the block on ``device``'s capture stream, ordered after and before the current
    stream's work (on the CPU: as is). A warm-up there lazily makes what is per stream (cuBLAS
    workspaces) before the capture on that stream needs it."""
    if device.type != "cuda":
        yield
        return
    stream, current = capture_stream(device), torch.cuda.current_stream(device)
    stream.wait_stream(current)
    with torch.cuda.stream(stream):
        yield
    current.wait_stream(stream)


def _reserved_bytes(device: torch.device) -> int:
    return torch.cuda.memory_reserved(device) if device.type == "cuda" else 0


class GraphedCall:
    """Runs ``fn()`` by replaying the CUDA graph of its kernels on ``device``, captured on the
    first call (on ``device``'s capture stream).

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
                with torch.cuda.graph(graph, pool=self.pool, stream=capture_stream(self.device)):
                    self.fn()
            finally:
                if collecting:
                    gc.enable()
            self.graph = graph
        self.graph.replay()


class GraphedStep:
    """A step of a set: run eagerly on its first call (which compiles and tunes its kernels,
    on the capture stream), captured as a CUDA graph (``GraphedCall``) on its second and
    replayed from then on; always outside inference mode (see ``outside_inference_mode``).

    A failed capture, or running out of memory in the warm-up, raises ``GraphCaptureError``.
    ``pool_bytes`` is the memory its capture added to the set's pool.
    """

    def __init__(self, fn: Callable[[], None], device: torch.device, pool, cache: GraphCache):
        self.fn, self.device, self.pool, self.cache = fn, device, pool, cache
        self.warm = False
        self.graphed: GraphedCall | None = None
        self.pool_bytes = 0

    def __call__(self) -> None:
        with outside_inference_mode():
            if self.graphed is not None:
                self.graphed()
            elif not self.warm:
                with _failures_as_capture_errors(every_error=False):
                    with _on_capture_stream(self.device):
                        self.fn()
                self.warm = True
            else:
                self._capture()

    def _capture(self) -> None:
        if self.device.type == "cuda":
            # What the capture adds to the pool shows as reserved memory once nothing else
            # is cached (torch.cuda.graph empties the cache before capturing too).
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
        before = _reserved_bytes(self.device)
        graphed = GraphedCall(self.fn, self.device, self.pool)
        with _failures_as_capture_errors(every_error=True):
            graphed()
        self.pool_bytes = max(_reserved_bytes(self.device) - before, 0)
        self.graphed = graphed
        self.cache.captures += 1


def tensor_memory(tensors: Iterable[torch.Tensor | None]) -> dict[Hashable, int]:
    """The bytes of the storages of ``tensors`` (None skipped), keyed by storage, so tensors
    that share one (a KV cache two sets hold) count once."""
    memory = {}
    for tensor in tensors:
        if tensor is not None:
            storage = tensor.untyped_storage()
            memory[("storage", tensor.device, storage.data_ptr())] = storage.nbytes()
    return memory


class GraphCache:
    """The step sets of the shapes a model was sampled at, least recently used first out
    once they hold more than ``max_bytes`` or number more than ``max_sets``.

    A set (``mosa.sampling.block_step.StepSet``, or Dream's) holds the tensors its steps read
    and write and the graphs captured over them; a later call of the same shape copies its
    inputs into those tensors and replays the graphs without capturing anything. A set has
    ``device`` and ``memory()``: its bytes keyed by what holds them (``tensor_memory``, plus
    its graph pool), so what two sets share counts once.

    ``max_bytes`` None (the default) is ``GRAPH_MEMORY_FRACTION`` of the device memory free
    besides the sets, read when a set is made (no limit off CUDA). ``captures`` counts the
    graphs captured so far; ``failed`` holds the keys whose sets could not be captured, which
    ``"auto"`` runs eagerly from then on (until the cache is cleared).
    """

    def __init__(self, max_sets: int = 4, max_bytes: int | None = None):
        self.max_sets = max_sets
        self.max_bytes = max_bytes
        self.limit = math.inf if max_bytes is None else max_bytes
        self.sets: OrderedDict[Hashable, object] = OrderedDict()
        self.failed: set[Hashable] = set()
        self.captures = 0
        self.fingerprint: tuple | None = None

    def follow(self, model) -> GraphCache:
        """Drops every set when ``model``'s parameters are other tensors (moved, cast,
        replaced, new adapter weights), its adapters were switched, merged, disabled or
        rescaled, a module switched between train and eval, or autocast was switched since the
        last call: a graph replays the tensors and branches it was captured with."""
        fingerprint = _fingerprint(model)
        if fingerprint != self.fingerprint:
            self.clear()
            self.fingerprint = fingerprint
        return self

    def get(self, key: Hashable, make: Callable[[], object]):
        """The set stored under ``key``, made by ``make()`` (outside inference mode) when there
        is none; running out of memory making it raises ``GraphCaptureError``."""
        if key in self.sets:
            self.sets.move_to_end(key)
            return self.sets[key]
        with outside_inference_mode(), _failures_as_capture_errors(every_error=False):
            made = make()
        self.limit = self._memory_limit(made.device)
        self.sets[key] = made
        while len(self.sets) > self.max_sets:
            self._evict()
        return made

    def kv_cache(self, batch: int, length: int, padded: bool):
        """A KV cache of ``batch`` rows of ``length`` slots (``padded``: with key validity) that
        a set holds, for another set to share; None when no set has one. Safe because the sets
        of a model run one at a time and every block's refresh refills the cache whole."""
        for steps in self.sets.values():
            cache = getattr(steps, "kv_cache", None)
            if (
                cache is not None
                and cache.batch_size == batch
                and cache.capacity == length
                and (cache.key_valid is not None) == padded
            ):
                return cache
        return None

    def held_bytes(self) -> int:
        """The bytes the sets hold, each storage and pool once."""
        memory = {}
        for steps in self.sets.values():
            memory.update(steps.memory())
        return sum(memory.values())

    def fit(self) -> None:
        """Evicts the least recently used sets until the rest hold at most the limit (the set
        just used too, when it alone holds more)."""
        while self.sets and self.held_bytes() > self.limit:
            self._evict()

    def discard(self, key: Hashable) -> None:
        """Drops the set under ``key``, if any, with its graphs and pool."""
        if self.sets.pop(key, None) is not None:
            _release_cached_memory()

    def _evict(self) -> None:
        self.sets.popitem(last=False)
        _release_cached_memory()

    def _memory_limit(self, device: torch.device) -> float:
        if self.max_bytes is not None:
            return self.max_bytes
        if device.type != "cuda":
            return math.inf
        free, _ = torch.cuda.mem_get_info(device)
        return GRAPH_MEMORY_FRACTION * (free + self.held_bytes())

    def __reduce__(self):
        # Saved, pickled or copied, the cache keeps nothing: a CUDA graph cannot be pickled,
        # and a copied model has other tensors, which the graphs captured here do not serve.
        return GraphCache, (self.max_sets, self.max_bytes)

    def clear(self) -> None:
        """Drops every set and its graphs (their memory returns to PyTorch's allocator)."""
        self.sets.clear()
        self.failed.clear()
        _release_cached_memory()


def _release_cached_memory() -> None:
    # An evicted set's pool stays reserved until the allocator's cache is emptied.
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def run_graphed(model, requested, key: Hashable, make: Callable, run: Callable):
    """``run(steps)``, ``steps`` the set under ``key`` in ``model``'s graph cache (made by
    ``make(cache)``); None when ``requested`` is ``"auto"`` and the set cannot be made or captured,
    for the caller to run the call eagerly instead.

    A set that fails (``GraphCaptureError``) is dropped with its pool. Out of memory, every
    other set is dropped too and the call retried once. Then ``requested=True`` raises, and
    ``"auto"`` warns, remembers the key (later calls of it run eagerly without trying) and
    returns None. After the call, sets are evicted to fit the cache's byte limit.
    """
    cache = graph_cache(model)
    if requested == "auto" and key in cache.failed:
        return None
    retried = False
    while True:
        try:
            result = run(cache.get(key, lambda: make(cache)))
        except GraphCaptureError as error:
            cache.discard(key)
            if error.out_of_memory and not retried and cache.sets:
                cache.clear()
                retried = True
                continue
            if requested is True:
                raise
            cache.failed.add(key)
            warnings.warn(f"{error}; running this call eagerly", RuntimeWarning, stacklevel=3)
            return None
        cache.fit()
        return result


def graph_cache(model) -> GraphCache:
    """The ``GraphCache`` kept on ``model`` (made on first use), emptied if the model's
    tensors, adapters, training mode or autocast changed since it was last used."""
    cache = model.__dict__.get("_sampler_graphs")
    if cache is None:
        cache = model.__dict__["_sampler_graphs"] = GraphCache()
    return cache.follow(model)


def limit_cuda_graph_memory(model, max_bytes: int | None) -> None:
    """Keeps the CUDA graphs (and their KV caches) that ``generate`` and ``diffusion_generate``
    hold on ``model`` between calls within ``max_bytes``, least recently used shapes dropped
    first; ``None`` restores the default, ``GRAPH_MEMORY_FRACTION`` of the device memory free
    besides them. A shape whose set alone needs more is captured anew at each call."""
    if max_bytes is not None and (
        isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0
    ):
        raise ValueError(f"max_bytes must be a non-negative int or None, got {max_bytes!r}")
    cache = graph_cache(model)
    cache.max_bytes = max_bytes
    if max_bytes is not None:
        cache.limit = max_bytes
        cache.fit()


def _fingerprint(model) -> tuple:
    tensors = tuple((p.data_ptr(), p.dtype, p.device) for p in model.parameters())
    modules = tuple(model.modules())
    # peft's LoRA layers branch in Python on these and multiply by ``scaling``; a module's
    # ``training`` can switch a branch (dropout, checkpointing): a graph keeps what it was
    # captured with.
    adapters = tuple(
        (
            bool(getattr(module, "disable_adapters", False)),
            bool(getattr(module, "merged", False)),
            tuple(getattr(module, "active_adapters", ())),
            tuple(sorted(getattr(module, "scaling", {}).items())),
        )
        for module in modules
        if hasattr(module, "active_adapters")
    )
    training = tuple(module.training for module in modules)
    device_types = sorted({p.device.type for p in model.parameters()})
    autocast = tuple(
        (torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind)) for kind in device_types
    )
    return tensors, adapters, training, autocast


def clear_cuda_graphs(model) -> None:
    """Frees the CUDA graphs ``generate`` captured for ``model`` (e.g. before changing which
    tensors its parameters are: a graph reads the ones it was captured with); shapes whose
    capture failed are tried again."""
    graph_cache(model).clear()

"""The step sets a model's samplers keep between calls (``GraphCache``, on the model), the
memory they may hold, what drops them, and the graph path's fallback when a set fails
(``run_graphed``); docs/DESIGN.md §6."""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable

import torch

from .cuda_graph import GraphCaptureError, failures_as_capture_errors, outside_inference_mode

# By default the graph cache of a model keeps at most this share of the device memory that is
# free besides it (read when a set is made): a set holds a KV cache and a graph pool, ~21 GB at
# 8B shapes, batch 32, canvas 1024, so a count of sets alone does not bound it.
GRAPH_MEMORY_FRACTION = 0.5


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
        with outside_inference_mode(), failures_as_capture_errors(every_error=False):
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

    def evict_all(self) -> None:
        """Drops every set and its graphs (their memory returns to the device)."""
        self.sets.clear()
        _release_cached_memory()

    def clear(self) -> None:
        """Drops every set, and forgets which keys failed (they are tried again)."""
        self.evict_all()
        self.failed.clear()


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
                cache.evict_all()
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

"""Replaying sampler steps as CUDA graphs, so the host launches one graph a step instead of
the thousand-odd kernels of a forward pass (at 8B shapes and a few prompts a step is bound by
those launches, not by the GPU): whether a call takes that path, and how a step is warmed up,
captured and replayed (``graph_sets`` keeps the graphs for later calls of the same shape).

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
from collections.abc import Callable, Iterator

import torch

from mosa.models import DiffusionLM

CUDA_GRAPHS = ("auto", True, False)


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
def failures_as_capture_errors(every_error: bool) -> Iterator[None]:
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
    ``cache`` (a ``GraphCache``) counts the capture; ``pool_bytes`` is the memory it added to
    the set's pool.
    """

    def __init__(self, fn: Callable[[], None], device: torch.device, pool, cache):
        self.fn, self.device, self.pool, self.cache = fn, device, pool, cache
        self.warm = False
        self.graphed: GraphedCall | None = None
        self.pool_bytes = 0

    def __call__(self) -> None:
        with outside_inference_mode():
            if self.graphed is not None:
                self.graphed()
            elif not self.warm:
                with failures_as_capture_errors(every_error=False):
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
        with failures_as_capture_errors(every_error=True):
            graphed()
        self.pool_bytes = max(_reserved_bytes(self.device) - before, 0)
        self.graphed = graphed
        self.cache.captures += 1

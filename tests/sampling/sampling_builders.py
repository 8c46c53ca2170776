"""Tiny random models, model wrappers and prompts shared by the sampler tests."""

from __future__ import annotations

import contextlib
import importlib
import sys
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from tiny_checkpoints import TINY_CONFIGS, random_weights  # noqa: E402

from mosa.models import build_model  # noqa: E402
from mosa.sampling import cuda_graph, dream, graph_sets, llada  # noqa: E402
from mosa.sampling.graph_sets import GraphCache  # noqa: E402

MASK_ID = 126  # both tiny configs
PAD_ID = 125  # != MASK_ID
PROMPT_VOCAB = 120  # real token ids the prompts use
LLADA_LAYERS = TINY_CONFIGS["llada"]["n_layers"]


@lru_cache
def llada_model(seed: int = 0, n_layers: int = LLADA_LAYERS, **overrides) -> nn.Module:
    """A tiny random LLaDA (fp32, CPU, eval); cached, the sampler never changes weights."""
    config = dict(TINY_CONFIGS["llada"], n_layers=n_layers, **overrides)
    model = build_model(config, device="cpu", dtype=torch.float32)
    model.load_state_dict(random_weights(model, seed))
    return model.eval()


@lru_cache
def dream_model(seed: int = 0) -> nn.Module:
    model = build_model(TINY_CONFIGS["dream"], device="cpu", dtype=torch.float32)
    model.load_state_dict(random_weights(model, seed))
    return model.eval()


class LogitsOnly(nn.Module):
    """A Hugging Face-style view of a mosa model: ``forward(...)`` returns only ``.logits``.

    The samplers take their generic (non-fused, uncached) path for it.
    """

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(
            logits=self.inner(input_ids, attention_mask, return_logits=True).logits
        )


class UnshiftedLogits(nn.Module):
    """Dream as Hugging Face's ``DreamModel`` returns it: the head at every position, unshifted
    (``hidden_states @ lm_head_weight.T``); Dream's sampler applies the shift itself."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None):
        hidden = self.inner(input_ids, attention_mask).hidden_states
        return SimpleNamespace(logits=hidden @ self.inner.lm_head_weight.T)


def random_prompt(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, PROMPT_VOCAB, (batch, length), generator=generator)


def padded_prompts(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random prompts of ``lengths``, left padded with ``PAD_ID``; ``(ids, attention_mask)``."""
    generator = torch.Generator().manual_seed(seed)
    total = max(lengths)
    ids = torch.full((len(lengths), total), PAD_ID)
    mask = torch.zeros(len(lengths), total, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, total - n :] = torch.randint(0, PROMPT_VOCAB, (n,), generator=generator)
        mask[row, total - n :] = 1
    return ids, mask


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# Ops that read a device value on the host (or, for masked_fill with a tensor value, do so
# inside their CUDA kernel): a CUDA graph capture raises on them, an eager replay would not.
HOST_READS = {
    torch.ops.aten._local_scalar_dense.default,  # .item(), bool(), int(), float()
    torch.ops.aten.is_nonzero.default,
    torch.ops.aten.nonzero.default,
    torch.ops.aten.masked_select.default,
    torch.ops.aten.masked_fill.Tensor,
    torch.ops.aten.masked_fill_.Tensor,
    torch.ops.aten.equal.default,
    # Their output's size is the number of distinct values.
    torch.ops.aten._unique2.default,
    torch.ops.aten.unique_dim.default,
    torch.ops.aten.unique_consecutive.default,
}
# Ops whose output size hangs on how many mask entries are True (read on the host) when one
# of their indices is a bool mask: x[mask], x[mask] = v.
MASK_INDEXED = {
    torch.ops.aten.index.Tensor,
    torch.ops.aten.index_put.default,
    torch.ops.aten.index_put_.default,
    torch.ops.aten._index_put_impl_.default,
}
# Ops that read their repeat counts on the host unless given ``output_size``.
SIZED_BY_VALUES = {torch.ops.aten.repeat_interleave.Tensor}
# Ops that copy between devices (on the twin: to one other than their input's).
COPIES = {torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default}
# Tensor methods that hand a device tensor to the host. On the twin every tensor is on the CPU,
# where they dispatch no op (``.cpu()`` returns the tensor itself), so they are caught by name.
TO_HOST_METHODS = {torch.Tensor.cpu, torch.Tensor.tolist, torch.Tensor.numpy}


def _host_read(func, args, kwargs) -> str | None:
    """Why the aten op ``func`` on ``args`` would synchronise with the host on CUDA, or None."""
    if func in HOST_READS:
        return "reads a device value on the host"
    if func is torch.ops.aten.lift_fresh.default and args[0].dim() > 0 and args[0].numel() > 0:
        # A tensor made from Python data (torch.tensor, as_tensor): a CUDA op takes it only
        # after a host-to-device copy. Not so a 0-d one (CUDA kernels take CPU scalars as
        # arguments: x[i] = 0.0 makes one) nor an empty one (no bytes to copy).
        return "is made from Python data (a host-to-device copy)"
    if func in MASK_INDEXED:
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        if any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices):
            return "indexes with a bool mask (its True count is read on the host)"
    if func in SIZED_BY_VALUES and kwargs.get("output_size") is None:  # keyword-only
        return "reads its repeat counts on the host (pass output_size)"
    if func in COPIES:
        source = args[0] if func is torch.ops.aten._to_copy.default else args[1]
        target = kwargs.get("device") if func is torch.ops.aten._to_copy.default else args[0]
        target_device = getattr(target, "device", target)
        if target_device is not None and torch.device(target_device) != source.device:
            return "copies between devices"
    return None


def _to_host(func, args, kwargs) -> bool:
    """Whether the Tensor method call ``func(*args, **kwargs)`` moves a tensor to the host."""
    if func in TO_HOST_METHODS:
        return True
    if func is torch.Tensor.to:
        # Only where it names the host: on the twin the step's own device is the CPU too, and
        # .to(that device) is a no-op on CUDA.
        named = [*args[1:2], kwargs.get("device")]
        return any(isinstance(d, str) and torch.device(d).type == "cpu" for d in named)
    return False


class _OpGuard(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        why = _host_read(func, args, kwargs)
        if why is not None:
            raise AssertionError(f"{func} {why} inside a graph step")
        return func(*args, **kwargs)


# The CPU backend's wrappers hand the C++ kernels host tensors; on CUDA Triton runs instead.
CPU_ONLY_MODULES = {"mosa_kernels.cpu_kernels"}


class _MethodGuard(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        caller = sys._getframe(1).f_globals.get("__name__")
        if caller not in CPU_ONLY_MODULES and _to_host(func, args, kwargs):
            raise AssertionError(f"Tensor.{func.__name__} copies to the host inside a graph step")
        return func(*args, **kwargs)


@contextlib.contextmanager
def no_host_reads():
    """Fails (AssertionError) on whatever would make a CUDA step wait for the device or copy
    to or from the host: a CUDA graph capture refuses it, an eager replay on the CPU would not."""
    with _MethodGuard(), _OpGuard():
        yield


class EagerReplay:
    """Stands in for ``GraphedCall``: calls the very zero-argument step a graph would capture,
    so everything that step freezes (window width, run length, the tensors it reads) is what
    the run uses too; and fails where the step reads a value on the host."""

    def __init__(self, fn, replays: list):
        self.fn, self.replays = fn, replays

    def __call__(self):
        self.replays.append(self.fn)
        with no_host_reads():
            self.fn()


class GraphTwin:
    """What ``replay_graphs_eagerly`` records: the replayed steps, and a graph cache per model
    for this test alone (the tiny models are shared between tests)."""

    def __init__(self):
        self.replays: list = []
        self.caches: dict[int, GraphCache] = {}

    def cache(self, model) -> GraphCache:
        return self.caches.setdefault(id(model), GraphCache()).follow(model)

    @property
    def captures(self) -> int:
        return sum(cache.captures for cache in self.caches.values())


def replay_graphs_eagerly(monkeypatch, auto: bool = False, graphed_call=None) -> GraphTwin:
    """From now on ``generate`` / ``diffusion_generate`` with ``cuda_graphs=True`` run their
    graph path (on any device, with every other condition of ``use_cuda_graphs`` checked) with
    each would-be graph replay run eagerly; ``cuda_graphs="auto"`` stays eager on the CPU
    unless ``auto``. ``graphed_call(fn, replays)`` replaces ``EagerReplay`` (e.g. one that
    fails to capture)."""
    twin = GraphTwin()
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: None)
    monkeypatch.setattr(cuda_graph, "graphs_supported_on", lambda device: True)
    monkeypatch.setattr(graph_sets, "graph_cache", twin.cache)

    def decide(requested, **kw):
        takes_graphs = requested is True or (auto and requested == "auto")
        return takes_graphs and cuda_graph.use_cuda_graphs(requested, **kw)

    # mosa.sampling.block_generate is the function there; the module is looked up by name.
    for sampler in (llada, dream, importlib.import_module("mosa.sampling.block_generate")):
        monkeypatch.setattr(sampler, "use_cuda_graphs", decide)
    replay = graphed_call or EagerReplay
    monkeypatch.setattr(
        cuda_graph, "GraphedCall", lambda fn, device, pool: replay(fn, twin.replays)
    )
    return twin


@lru_cache
def block_model(seed: int = 0) -> nn.Module:
    """The tiny random LLaDA2 (block diffusion; fp32, CPU, eval); cached."""
    model = build_model(TINY_CONFIGS["llada2"], device="cpu", dtype=torch.float32)
    model.load_state_dict(random_weights(model, seed))
    with torch.no_grad():
        # A sharper head, so that confidences cross the published thresholds (0.9, 0.95) as a
        # trained model's do; logit 0 for the mask token, which a trained model hardly picks.
        model.lm_head_weight.mul_(5)
        model.lm_head_weight[MASK_ID] = 0
    return model.eval()

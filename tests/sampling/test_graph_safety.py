"""The CUDA-graph path is safe for every user call (issue 29; docs/DESIGN.md §6): under and
after ``torch.inference_mode``, under autocast, after ``model.train()`` or a LoRA rescale,
after a failed capture, with ``torch.save`` / ``pickle``, and within its byte budget.

On the CPU twin (``replay_graphs_eagerly``): each would-be replay runs the captured step
eagerly, so the graph path's sets, cache and fallbacks are the real ones.
"""

from __future__ import annotations

import copy
import io
import pickle
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from sampling_builders import (
    MASK_ID,
    EagerReplay,
    dream_model,
    llada_model,
    padded_prompts,
    random_prompt,
    replay_graphs_eagerly,
)

from mosa.sampling import (
    GraphCaptureError,
    diffusion_generate,
    generate,
    graph_sets,
    limit_cuda_graph_memory,
)
from mosa.sampling.graph_sets import GraphCache, tensor_memory

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from tiny_checkpoints import lora_model  # noqa: E402

LLADA_KW = dict(mask_id=MASK_ID, cache="dual", gen_length=16, block_length=8, steps=8)
DREAM_KW = dict(max_new_tokens=8, steps=4, alg="maskgit_plus", mask_token_id=MASK_ID)


def llada_eager(model, ids, mask=None, **kw):
    return generate(model, ids, mask, cuda_graphs=False, **{**LLADA_KW, **kw})


def llada_graphed(model, ids, mask=None, cuda_graphs=True, **kw):
    kw = {**LLADA_KW, **kw}
    return generate(model, ids, mask, cuda_graphs=cuda_graphs, prompt_bucket=1, **kw)


def dream_eager(ids, mask=None):
    return diffusion_generate(dream_model(), ids, mask, cuda_graphs=False, **DREAM_KW)


def dream_graphed(ids, mask=None, cuda_graphs=True):
    return diffusion_generate(
        dream_model(), ids, mask, cuda_graphs=cuda_graphs, prompt_bucket=1, **DREAM_KW
    )


def the_cache(twin) -> GraphCache:
    (cache,) = twin.caches.values()
    return cache


# 1. inference_mode ------------------------------------------------------------------------------


@pytest.mark.parametrize("cache", [None, "prefix", "dual"])
def test_a_call_under_inference_mode_then_a_normal_call(monkeypatch, cache):
    """The set made under ``inference_mode`` holds no inference tensors, so the next call
    outside it can write them in place; both give the eager tokens."""
    twin = replay_graphs_eagerly(monkeypatch)
    model, ids = llada_model(), random_prompt(2, 5, seed=41)
    with torch.inference_mode():
        first = llada_graphed(model, ids, cache=cache)
    second = llada_graphed(model, ids, cache=cache)
    with torch.inference_mode():
        third = llada_graphed(model, ids, cache=cache)
    assert twin.captures > 0 and len(the_cache(twin).sets) == 1
    eager = llada_eager(model, ids, cache=cache)
    for out in (first, second, third):
        assert torch.equal(out, eager)


def test_dream_under_inference_mode_then_a_normal_call(monkeypatch):
    replay_graphs_eagerly(monkeypatch)
    ids, mask = padded_prompts([4, 6], seed=42)
    with torch.inference_mode():
        first = dream_graphed(ids, mask)
    second = dream_graphed(ids, mask)
    eager = dream_eager(ids, mask)
    assert torch.equal(first, eager) and torch.equal(second, eager)


# 2. a failed capture ----------------------------------------------------------------------------


class FailingCapture(EagerReplay):
    """A ``GraphedCall`` whose capture raises (as a forward that syncs with the host does)."""

    attempts = 0

    def __call__(self):
        FailingCapture.attempts += 1
        raise RuntimeError("operation not permitted when stream is capturing")


@pytest.fixture
def failing_twin(monkeypatch):
    FailingCapture.attempts = 0
    return replay_graphs_eagerly(monkeypatch, auto=True, graphed_call=FailingCapture)


def test_auto_falls_back_to_eager_when_a_capture_fails(failing_twin):
    """ "auto": the set is dropped, one warning, the eager tokens; the next call of the shape
    runs eagerly at once (no capture tried, no warning)."""
    model, ids = llada_model(), random_prompt(2, 5, seed=43)
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed.*running this call"):
        out = llada_graphed(model, ids, cuda_graphs="auto")
    eager = llada_eager(model, ids)
    assert torch.equal(out, eager)
    cache = the_cache(failing_twin)
    assert not cache.sets and len(cache.failed) == 1 and FailingCapture.attempts == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(llada_graphed(model, ids, cuda_graphs="auto"), eager)
    assert FailingCapture.attempts == 1


def test_cuda_graphs_true_raises_a_failed_capture_and_keeps_nothing(failing_twin):
    with pytest.raises(GraphCaptureError, match="capture failed.*cuda_graphs='auto'"):
        llada_graphed(llada_model(), random_prompt(2, 5, seed=44))
    cache = the_cache(failing_twin)
    assert not cache.sets and not cache.failed


def test_dream_falls_back_or_raises_when_a_capture_fails(failing_twin):
    ids, mask = padded_prompts([4, 6], seed=45)
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed"):
        out = dream_graphed(ids, mask, cuda_graphs="auto")
    assert torch.equal(out, dream_eager(ids, mask))
    assert not the_cache(failing_twin).sets
    other_ids, other_mask = padded_prompts([3, 5], seed=46)  # another shape: tried again
    with pytest.raises(GraphCaptureError):
        dream_graphed(other_ids, other_mask, cuda_graphs=True)
    assert not the_cache(failing_twin).sets


def test_out_of_memory_in_a_capture_evicts_every_set_and_retries_once(monkeypatch):
    class OutOfMemoryOnce(EagerReplay):
        armed = False

        def __call__(self):
            if OutOfMemoryOnce.armed:
                OutOfMemoryOnce.armed = False
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
            super().__call__()

    twin = replay_graphs_eagerly(monkeypatch, graphed_call=OutOfMemoryOnce)
    model = llada_model()
    llada_graphed(model, random_prompt(2, 5, seed=47))
    cache = the_cache(twin)
    (old,) = cache.sets
    OutOfMemoryOnce.armed = True
    ids = random_prompt(3, 5, seed=48)
    assert torch.equal(llada_graphed(model, ids), llada_eager(model, ids))
    assert old not in cache.sets and len(cache.sets) == 1


# 3. the byte budget -----------------------------------------------------------------------------


def fake_set(nbytes: int, shared: dict | None = None):
    """A stand-in set holding ``nbytes`` of its own (plus ``shared``, counted once)."""
    own = object()
    return SimpleNamespace(
        device=torch.device("cpu"), memory=lambda: {("pool", id(own)): nbytes, **(shared or {})}
    )


def test_the_cache_evicts_least_recently_used_sets_to_fit_its_bytes():
    cache = GraphCache(max_bytes=100)
    for key in "abc":
        cache.get(key, lambda: fake_set(40))
    cache.get("a", lambda: pytest.fail("a is kept"))  # used last: b is the oldest now
    cache.fit()
    assert list(cache.sets) == ["c", "a"] and cache.held_bytes() == 80
    cache.get("big", lambda: fake_set(150))
    cache.fit()  # alone over the limit: dropped too, after its call
    assert not cache.sets


def test_storage_two_sets_share_counts_once():
    kv = torch.empty(10, dtype=torch.float32)
    shared = tensor_memory([kv, kv[2:]])
    assert shared == {("storage", kv.device, kv.untyped_storage().data_ptr()): 40}
    cache = GraphCache(max_bytes=100)
    cache.get("a", lambda: fake_set(30, shared))
    cache.get("b", lambda: fake_set(30, shared))
    cache.fit()
    assert list(cache.sets) == ["a", "b"] and cache.held_bytes() == 100


def test_the_default_limit_off_cuda_is_none():
    cache = GraphCache()
    cache.get("a", lambda: fake_set(10**15))
    cache.fit()
    assert list(cache.sets) == ["a"]


def test_generate_keeps_its_sets_within_the_memory_limit(monkeypatch):
    twin = replay_graphs_eagerly(monkeypatch)
    model = llada_model()
    llada_graphed(model, random_prompt(2, 5, seed=50))
    cache = the_cache(twin)
    one_set = cache.held_bytes()
    limit_cuda_graph_memory(model, int(2.5 * one_set))
    for length in (6, 7, 8):  # sets a little larger each: two fit, not three
        ids = random_prompt(2, length, seed=length)
        assert torch.equal(llada_graphed(model, ids), llada_eager(model, ids))
        assert cache.held_bytes() <= 2.5 * one_set
    assert [key[2] for key in cache.sets] == [7 + 16, 8 + 16]
    with pytest.raises(ValueError, match="max_bytes must be a non-negative int or None"):
        limit_cuda_graph_memory(model, -1)


def test_sets_of_one_batch_shape_share_their_kv_cache(monkeypatch):
    """A dual- and a prefix-cache set of the same rows and length fill one KV cache (each
    block's refresh refills it whole), and both still give the eager tokens."""
    twin = replay_graphs_eagerly(monkeypatch)
    model, ids = llada_model(), random_prompt(2, 5, seed=51)
    results = {mode: llada_graphed(model, ids, cache=mode) for mode in ("dual", "prefix")}
    cache_mode = 2  # in SamplerSettings.graph_key, the first part of a set's key
    sets = {key[0][cache_mode]: steps for key, steps in the_cache(twin).sets.items()}
    dual, prefix = sets["dual"], sets["prefix"]
    assert dual.kv_cache is prefix.kv_cache is not None
    separate = sum(sum(steps.memory().values()) for steps in (dual, prefix))
    assert the_cache(twin).held_bytes() < separate
    for mode, out in results.items():
        assert torch.equal(out, llada_eager(model, ids, cache=mode))


# 4. autocast ------------------------------------------------------------------------------------


def test_autocast_keeps_the_sampler_eager(monkeypatch):
    """Under autocast "auto" runs eagerly (no capture) and gives the eager tokens, and
    ``cuda_graphs=True`` names the condition. (bf16 weights: the mosa attention wants q, k
    and v in one dtype, which autocast over fp32 weights does not give.)"""
    twin = replay_graphs_eagerly(monkeypatch, auto=True)
    model = copy.deepcopy(llada_model()).to(torch.bfloat16)
    ids = random_prompt(2, 5, seed=52)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = llada_graphed(model, ids, cuda_graphs="auto")
        assert twin.captures == 0
        assert torch.equal(out, llada_eager(model, ids))
        with pytest.raises(ValueError, match="autocast must be off"):
            llada_graphed(model, ids, cuda_graphs=True)
        with pytest.raises(ValueError, match="autocast must be off"):
            dream_graphed(ids, cuda_graphs=True)


# 6. saving --------------------------------------------------------------------------------------


def model_holding_graphs(monkeypatch):
    """A copy of the tiny LLaDA with sets in its own graph cache (as on a GPU)."""
    kept = graph_sets.graph_cache
    replay_graphs_eagerly(monkeypatch)
    monkeypatch.setattr(graph_sets, "graph_cache", kept)
    model, ids = copy.deepcopy(llada_model()), random_prompt(2, 5, seed=53)
    llada_graphed(model, ids)
    assert model.__dict__["_sampler_graphs"].sets
    return model, ids


def test_pickle_and_torch_save_keep_no_graphs(monkeypatch):
    model, ids = model_holding_graphs(monkeypatch)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for restored in (pickle.loads(pickle.dumps(model)), torch.load(buffer, weights_only=False)):
        assert not restored.__dict__["_sampler_graphs"].sets
        assert torch.equal(llada_graphed(restored, ids), llada_eager(model, ids))


# 7. what drops the graphs -----------------------------------------------------------------------


def test_train_mode_recaptures_and_gives_the_eager_tokens(monkeypatch):
    twin = replay_graphs_eagerly(monkeypatch)
    model, ids = copy.deepcopy(llada_model()), random_prompt(2, 5, seed=54)
    llada_graphed(model, ids)
    captures = twin.captures
    model.train()
    out = llada_graphed(model, ids)
    assert twin.captures == 2 * captures
    assert torch.equal(out, llada_eager(model, ids))


def test_a_lora_rescale_recaptures_and_gives_the_eager_tokens(monkeypatch):
    twin = replay_graphs_eagerly(monkeypatch)
    base, _ = lora_model("llada")
    ids = random_prompt(2, 5, seed=55)
    before = llada_graphed(base, ids)
    captures = twin.captures
    for module in base.modules():
        if hasattr(module, "set_scale"):
            module.set_scale("default", 0.25)
    after = llada_graphed(base, ids)
    assert twin.captures == 2 * captures
    assert torch.equal(after, llada_eager(base, ids))
    assert not torch.equal(after, before)

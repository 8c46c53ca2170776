"""``generate``'s CUDA-graph path on a GPU: replaying the captured graphs gives what running the
same steps eagerly gives, bit for bit; each step shape is captured once; the default ("auto")
takes it; it stays close to the eager sampler.

Skipped without CUDA (on the CPU, ``tests/sampling/test_generate.py`` checks the graph path's
steps against the reference loop under a host-read guard); ``benchmarks/gpu_check.sh`` runs it.
"""

from __future__ import annotations

import copy

import pytest
import torch
from sampling_builders import MASK_ID, dream_model, llada_model, padded_prompts, random_prompt
from sampling_builders import replay_graphs_eagerly as eager_twin

import mosa
import mosa.tiny
from mosa.sampling import (
    clear_cuda_graphs,
    cuda_graph,
    diffusion_generate,
    generate,
    limit_cuda_graph_memory,
)
from mosa.sampling.cuda_graph import GraphedCall, capture_stream
from mosa.sampling.graph_sets import graph_cache

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def cuda_model(dtype=torch.float32):
    """The tiny random LLaDA on the GPU (a copy: the CPU one is shared)."""
    return copy.deepcopy(llada_model()).to("cuda", dtype)


def graphs_and_eager_twin(monkeypatch, ids, mask, dtype=torch.float32, device="cuda", **kw):
    """``generate`` with CUDA graphs, then with the same steps run eagerly instead of replayed."""
    model, ids = cuda_model(dtype).to(device), ids.to(device)
    mask = None if mask is None else mask.to(device)
    kw = dict(mask_id=MASK_ID, return_trace=True, cuda_graphs=True, fill_prompt_masks=True, **kw)
    made = []

    def recorded(*args):
        made.append(GraphedCall(*args))
        return made[-1]

    monkeypatch.setattr(cuda_graph, "GraphedCall", recorded)
    graphed = generate(model, ids, mask, **kw)
    assert any(call.graph is not None for call in made), "no graph was captured"
    eager_twin(monkeypatch)
    twin = generate(model, ids, mask, **kw)
    return graphed, twin


def assert_same(graphed, twin):
    assert torch.equal(graphed.sequences, twin.sequences)
    assert torch.equal(graphed.commit_step, twin.commit_step)
    assert graphed.steps == twin.steps


@pytest.mark.parametrize("cache", [None, "prefix", "dual"])
@pytest.mark.parametrize("cfg_scale", [0.0, 1.5], ids=["no-cfg", "cfg"])
@pytest.mark.parametrize("rule", [{}, {"threshold": 0.1}], ids=["fixed", "threshold"])
def test_cuda_graphs_replay_the_eager_steps(monkeypatch, rule, cfg_scale, cache):
    ids, mask = padded_prompts([4, 6, 5], seed=15)
    ids[2, 3] = MASK_ID  # a prompt mask: a window left of the block, another step shape
    graphed, twin = graphs_and_eager_twin(
        monkeypatch, ids, mask, cfg_scale=cfg_scale, cache=cache, **rule,
        gen_length=24, block_length=8, steps=24,
    )  # fmt: skip
    assert_same(graphed, twin)


@pytest.mark.parametrize("cache", [None, "prefix", "dual"])
@pytest.mark.parametrize("batch", [1, 8, 32])
def test_several_blocks_of_one_shape_replay_one_graph(monkeypatch, batch, cache):
    """The failure the earlier tests missed: no prompt mask and no padding, so every block has
    the same step shape and a graph is replayed (it was captured anew into a memory pool whose
    graphs had all been freed, which PyTorch's allocator asserts on)."""
    ids = random_prompt(batch, 16, seed=batch)
    graphed, twin = graphs_and_eager_twin(
        monkeypatch, ids, None, cache=cache, gen_length=32, block_length=8, steps=32
    )
    assert_same(graphed, twin)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("batch", [1, 64])
def test_cuda_graphs_at_the_batch_size_limits(monkeypatch, batch, dtype):
    """bf16 also takes the autotuned attention launcher (tuned before capture, at the refresh)."""
    ids, mask = padded_prompts([3 + row % 5 for row in range(batch)], seed=batch)
    graphed, twin = graphs_and_eager_twin(
        monkeypatch, ids, mask, dtype, cache="dual", gen_length=16, block_length=8, steps=16
    )
    assert_same(graphed, twin)


@pytest.mark.parametrize("cache", [None, "dual"])
def test_the_default_captures_each_shape_once(cache):
    """``cuda_graphs`` left at "auto" on CUDA: graphs are captured on the first call and the
    second call (same shape, other prompts) captures none."""
    model = cuda_model()
    kw = dict(mask_id=MASK_ID, cache=cache, gen_length=32, block_length=8, steps=32)
    generate(model, random_prompt(2, 9, seed=1).cuda(), **kw)
    captures = graph_cache(model).captures
    assert captures == (1 if cache is None else 2)
    generate(model, random_prompt(2, 11, seed=2).cuda(), **kw)  # the same 16-token bucket
    assert graph_cache(model).captures == captures


@pytest.mark.parametrize(
    ("dtype", "bound"), [(torch.float32, 1.0), (torch.bfloat16, 0.99)], ids=["fp32", "bf16"]
)
def test_graphs_agree_with_the_eager_sampler_on_the_tiny_model(dtype, bound):
    """On the trained tiny model: fp32 tokens identical to the eager sampler's, bf16 >= 99 %
    (the eager path runs the head on masked positions only, so its matmuls round otherwise)."""
    model = mosa.load_model(mosa.tiny.path(), device="cuda", dtype=dtype)
    ids = torch.randint(
        5, model.config.vocab_size - 5, (8, 12), generator=torch.Generator().manual_seed(3)
    )
    ids = ids.cuda()
    kw = dict(cache="dual", gen_length=40, block_length=8, steps=40)
    graphed = generate(model, ids, cuda_graphs=True, prompt_bucket=1, **kw)
    eager = generate(model, ids, cuda_graphs=False, **kw)
    agree = (graphed[:, ids.shape[1] :] == eager[:, ids.shape[1] :]).float().mean().item()
    assert agree >= bound


@pytest.mark.parametrize("alg", ["maskgit_plus", "entropy"])
def test_dream_graph_replays_the_eager_steps(monkeypatch, alg):
    model = copy.deepcopy(dream_model()).to("cuda")
    ids, mask = padded_prompts([4, 7, 5], seed=40)
    ids, mask = ids.cuda(), mask.cuda()
    kw = dict(max_new_tokens=16, steps=8, alg=alg, mask_token_id=MASK_ID)
    kw["return_dict_in_generate"] = True
    graphed = diffusion_generate(model, ids, mask, **kw)
    assert graph_cache(model).captures == 1
    eager_twin(monkeypatch)
    twin = diffusion_generate(model, ids, mask, cuda_graphs=True, **kw)
    assert_same(graphed, twin)


def test_the_graph_cache_keeps_reserved_memory_within_its_byte_cap():
    """Six shapes (prompt buckets of one batch) under a cap of 2.5 times the memory the first
    set reserves: after each call, with the allocator's free blocks released, the memory
    reserved beyond the model's stays within the cap (four sets, the count limit, would not)."""
    model = copy.deepcopy(
        llada_model(n_layers=4, d_model=256, n_heads=4, n_kv_heads=4, max_sequence_length=1024)
    ).to("cuda")
    kw = dict(mask_id=MASK_ID, cache="dual", gen_length=512, block_length=64, steps=64)

    def reserved() -> int:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        return torch.cuda.memory_reserved()

    # A first call makes what stays for the process (cuBLAS workspaces of both streams).
    generate(model, random_prompt(8, 16, seed=59).cuda(), **kw)
    clear_cuda_graphs(model)
    baseline = reserved()
    generate(model, random_prompt(8, 16, seed=60).cuda(), **kw)
    cap = int(2.5 * (reserved() - baseline))
    clear_cuda_graphs(model)
    limit_cuda_graph_memory(model, cap)
    for bucket in range(1, 7):
        generate(model, random_prompt(8, 16 * bucket, seed=60 + bucket).cuda(), **kw)
        assert graph_cache(model).held_bytes() <= cap
        assert reserved() - baseline <= cap
    assert len(graph_cache(model).sets) >= 1
    clear_cuda_graphs(model)
    assert reserved() <= baseline


@pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="needs two CUDA devices (captures on cuda:1)"
)
def test_graphs_on_a_second_device_capture_on_its_own_stream(monkeypatch):
    """With cuda:0 current, a model on cuda:1 warms up and captures on cuda:1's side stream
    and replays what the eager twin computes."""
    assert capture_stream(torch.device("cuda:1")).device == torch.device("cuda:1")
    assert capture_stream(torch.device("cuda:0")).device == torch.device("cuda:0")
    ids, mask = padded_prompts([4, 6, 5], seed=61)
    with torch.cuda.device(0):
        graphed, twin = graphs_and_eager_twin(
            monkeypatch, ids, mask, device="cuda:1", cache="dual", gen_length=16,
            block_length=8, steps=16,
        )  # fmt: skip
    assert graphed.sequences.device == torch.device("cuda:1")
    assert_same(graphed, twin)

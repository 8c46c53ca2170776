"""``generate(..., cuda_graphs=True)`` on a GPU: replaying captured graphs gives what running the
same steps eagerly gives, bit for bit, and stays close to the default eager sampler.

Skipped without CUDA (on the CPU, ``test_graph_path_matches_reference`` checks the graph path's
steps against the reference loop); ``benchmarks/gpu_check.sh`` runs it.
"""

from __future__ import annotations

import copy

import pytest
import torch
from sampling_builders import MASK_ID, llada_model, padded_prompts, replay_graphs_eagerly

from mosa.sampling import generate, llada
from mosa.sampling.cuda_graph import GraphedCall

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def cuda_model(dtype=torch.float32):
    """The tiny random LLaDA on the GPU (a copy: the CPU one is shared)."""
    return copy.deepcopy(llada_model()).to("cuda", dtype)


def graphs_and_eager_twin(monkeypatch, ids, mask, dtype=torch.float32, **kw):
    """``generate`` with CUDA graphs, then with the same steps run eagerly instead of replayed."""
    model, ids, mask = cuda_model(dtype), ids.cuda(), mask.cuda()
    kw = dict(mask_id=MASK_ID, return_trace=True, cuda_graphs=True, **kw)
    made = []

    def recorded(*args):
        made.append(GraphedCall(*args))
        return made[-1]

    monkeypatch.setattr(llada, "GraphedCall", recorded)
    graphed = generate(model, ids, mask, **kw)
    assert any(call.graph is not None for call in made), "no graph was captured"
    replay_graphs_eagerly(monkeypatch)
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("batch", [1, 64])
def test_cuda_graphs_at_the_batch_size_limits(monkeypatch, batch, dtype):
    """bf16 also takes the autotuned attention launcher (tuned before capture, at the refresh)."""
    ids, mask = padded_prompts([3 + row % 5 for row in range(batch)], seed=batch)
    graphed, twin = graphs_and_eager_twin(
        monkeypatch, ids, mask, dtype, cache="dual", gen_length=16, block_length=8, steps=16
    )
    assert_same(graphed, twin)


def test_cuda_graphs_agree_with_the_default_sampler():
    """The default path samples masked positions only, so its head matmuls have other shapes
    and may round differently: near ties aside, the same tokens."""
    ids, mask = padded_prompts([4, 6, 5], seed=16)
    model, ids, mask = cuda_model(), ids.cuda(), mask.cuda()
    kw = dict(mask_id=MASK_ID, cache="dual", gen_length=24, block_length=8, steps=24)
    graphed = generate(model, ids, mask, cuda_graphs=True, **kw)
    default = generate(model, ids, mask, **kw)
    response = slice(ids.shape[1], None)
    assert (graphed[:, response] == default[:, response]).float().mean().item() >= 0.95

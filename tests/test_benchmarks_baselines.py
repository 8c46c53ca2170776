"""The LLaDA2 benchmark's baseline, the published ``generate`` loop re-implemented
(``benchmarks.baselines.llada2_reference_generate``), decodes what ``block_generate`` does (whose
tests hold it to the published semantics): token for token at temperature 0 with and without
the prefix cache, prompts shorter than, a multiple of and longer than a block, thresholds that
pass and one that never does, rows stopped at an EOS, and the same step counts."""

from __future__ import annotations

import pytest
import torch

from benchmarks.baselines import llada2_reference_generate
from benchmarks.sampler import HEAD_SCALE
from mosa.models import LLADA2_MINI, build_model
from mosa.sampling.block_generate import block_generate

pytestmark = pytest.mark.tiny_model

TINY = dict(
    LLADA2_MINI, hidden_size=16, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
    num_hidden_layers=2, intermediate_size=24, num_experts=4, num_experts_per_tok=2, n_group=2,
    topk_group=1, moe_intermediate_size=8, vocab_size=40, mask_token_id=39, eos_token_id=38,
    pad_token_id=37,
)  # fmt: skip
SETTINGS = [
    dict(prompt_length=3, gen_length=10, block_length=4, steps=2, threshold=0.9),
    dict(prompt_length=8, gen_length=8, block_length=4, steps=4, threshold=2.0),
    dict(prompt_length=6, gen_length=9, block_length=4, steps=3, threshold=0.5),
    dict(prompt_length=5, gen_length=16, block_length=8, steps=8, threshold=0.3),
]


@pytest.fixture(scope="module")
def model():
    model = build_model(TINY, device="cpu", dtype=torch.float32, seed=3).eval()
    with torch.no_grad():
        model.lm_head_weight.mul_(HEAD_SCALE / 8)  # confident, yet not always above threshold
    return model


@pytest.mark.parametrize(
    "setting", SETTINGS, ids=lambda s: f"P{s['prompt_length']}-t{s['threshold']}"
)
def test_the_published_loop_decodes_what_block_generate_does(model, setting):
    setting = dict(setting)
    prompt_length = setting.pop("prompt_length")
    prompts = torch.randint(0, 36, (3, prompt_length), generator=torch.Generator().manual_seed(1))
    out, row_steps = llada2_reference_generate(model, prompts, mask_id=39, eos_id=38, **setting)
    assert out.shape == (3, prompt_length + setting["gen_length"])
    assert torch.equal(out[:, :prompt_length], prompts)
    for cache in (None, "prefix"):
        ours = block_generate(model, prompts, cache=cache, **setting)
        assert torch.equal(out, ours), cache
    for row in range(3):
        alone = block_generate(model, prompts[row : row + 1], return_trace=True, **setting)
        assert alone.steps == row_steps[row]


def test_rows_stop_after_a_block_holding_eos_as_published(model):
    prompts = torch.randint(0, 36, (4, 5), generator=torch.Generator().manual_seed(2))
    setting = dict(gen_length=24, block_length=4, steps=2, threshold=0.9)
    free, free_steps = llada2_reference_generate(model, prompts, mask_id=39, eos_id=38, **setting)
    eos = int(free[0, 5 + 6])  # a token the model emits in the second decoded block
    out, row_steps = llada2_reference_generate(model, prompts, mask_id=39, eos_id=eos, **setting)
    assert (out[0, 5 + 6 :] == eos).all()  # cut after the first EOS, written as EOS
    assert torch.equal(out, block_generate(model, prompts, eos_id=eos, **setting))
    # Row 0 stopped after its second block: fewer steps than decoding every block took.
    assert row_steps[0] < free_steps[0]
    assert all(ours <= theirs for ours, theirs in zip(row_steps, free_steps, strict=True))

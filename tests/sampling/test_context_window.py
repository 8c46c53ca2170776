"""A prompt that with the response exceeds the model's sequence limit: refused by default,
cut on the left with ``truncate='left'`` (both samplers; the limit's name differs)."""

from __future__ import annotations

import warnings

import pytest
import torch
from sampling_builders import MASK_ID, dream_model, llada_model, padded_prompts, random_prompt

from mosa.sampling import diffusion_generate, generate

LIMIT = 64  # both tiny configs
SAMPLERS = {
    "llada": (llada_model, "max_sequence_length"),
    "dream": (dream_model, "max_position_embeddings"),
}


def sample(family: str, prompt, attention_mask=None, gen_length: int = 8, **kw):
    """Greedy: the same inputs give the same tokens."""
    model = SAMPLERS[family][0]()
    if family == "llada":
        return generate(
            model, prompt, attention_mask, steps=gen_length, gen_length=gen_length,
            block_length=gen_length, mask_id=MASK_ID, **kw,
        )  # fmt: skip
    return diffusion_generate(
        model, prompt, attention_mask, max_new_tokens=gen_length, steps=gen_length,
        alg="maskgit_plus", **kw,
    )  # fmt: skip


@pytest.fixture
def forward_calls():
    """How many module forwards have run since the test started."""
    calls = []
    hook = torch.nn.modules.module.register_module_forward_pre_hook(lambda *_: calls.append(1))
    yield calls
    hook.remove()


@pytest.mark.parametrize("family", SAMPLERS)
def test_a_prompt_past_the_limit_is_refused_before_the_model_runs(family, forward_calls):
    name = SAMPLERS[family][1]
    message = (
        rf"the prompt \(60 tokens\) and gen_length \(8\) need 68 positions, more than the "
        rf"model's {name} \({LIMIT}\); .* truncate='left'"
    )
    with pytest.raises(ValueError, match=message):
        sample(family, random_prompt(2, 60))
    assert not forward_calls
    sample(family, random_prompt(2, LIMIT - 8))  # exactly the limit runs
    assert forward_calls


@pytest.mark.parametrize("family", SAMPLERS)
def test_truncate_left_keeps_the_last_tokens_of_each_row(family):
    ids, mask = padded_prompts([60, 30])
    with pytest.warns(UserWarning, match="prompt of 60 tokens truncated to its last 56"):
        out = sample(family, ids, mask, truncate="left")
    assert torch.equal(out, sample(family, ids[:, -56:], mask[:, -56:]))


@pytest.mark.parametrize("family", SAMPLERS)
def test_a_prompt_that_fits_is_left_alone(family):
    prompt = random_prompt(2, LIMIT - 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = sample(family, prompt, truncate="left")
    assert torch.equal(out[:, : prompt.shape[1]], prompt)


@pytest.mark.parametrize("family", SAMPLERS)
@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"gen_length": LIMIT, "truncate": "left"}, r"gen_length \(64\) leaves no room"),
        ({"truncate": "right"}, "truncate must be None .* or 'left'"),
    ],
)
def test_bad_lengths_and_truncate_values_are_refused(family, kw, message):
    with pytest.raises(ValueError, match=message):
        sample(family, random_prompt(1, 4), **kw)

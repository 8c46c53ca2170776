"""GCG on the embedded tiny model: the suffix search lowers the target's loss at the start and
in the middle of the response, scores what the sampler will see, repeats with its seed, and
refuses settings that cannot work."""

from __future__ import annotations

import pytest
import torch

from mosa.eval import GCGResult, gcg_search
from mosa.text.prompts import encode_prompts
from mosa.tiny import corpus

G = 40
SEARCH = {"gen_length": G, "suffix_length": 6, "top_k": 16, "candidates": 32}


@pytest.fixture
def prompt(held_out_harmful):
    return held_out_harmful[0]


def target_loss(model, tokenizer, prompt: str, target: str, position: int) -> float:
    """-sum log p(target) at its response positions, from full logits of the chat-templated
    prompt as the sampler encodes it, followed by a fully masked canvas."""
    ids, _ = encode_prompts(tokenizer, [prompt], chat_template=True, device="cpu")
    canvas = torch.full((1, G), model.mask_token_id)
    with torch.no_grad():
        logits = model(torch.cat([ids, canvas], dim=1), return_logits=True).logits[0]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    start = ids.shape[1] + position
    logp = logits[start : start + len(target_ids)].log_softmax(-1)
    return -logp[torch.arange(len(target_ids)), target_ids].sum().item()


@pytest.mark.parametrize(
    ("target", "position"),
    [(corpus.AFFIRMATIVE_PREFIX, 0), ("step 1 : gather the materials .", 10)],
    ids=["start", "middle"],
)
def test_search_lowers_the_target_loss(model, tokenizer, prompt, target, position):
    result = gcg_search(model, tokenizer, prompt, target, position=position, steps=12, **SEARCH)
    assert isinstance(result, GCGResult)
    assert len(result.losses) == 13
    assert all(b <= a for a, b in zip(result.losses, result.losses[1:], strict=False))
    first, last = result.losses[0], result.losses[-1]
    assert last < 0.5 * first and first - last > 10, result.losses
    # The loss is that of the prompt the sampler gets: the suffix text re-tokenizes to itself.
    assert result.prompt_with_suffix == f"{prompt} {result.suffix_text}"
    assert tokenizer(result.suffix_text, add_special_tokens=False)["input_ids"] == result.suffix_ids
    direct = target_loss(model, tokenizer, result.prompt_with_suffix, target, position)
    assert direct == pytest.approx(last, rel=1e-4, abs=1e-4)
    assert len(result.suffix_ids) == 6
    assert not set(result.suffix_ids) & set(tokenizer.all_special_ids)
    attacked = result.attacked_prompt()
    assert attacked.prompt == result.prompt_with_suffix and attacked.fixed == []


def test_same_seed_same_search(model, tokenizer, prompt):
    def run(seed):
        return gcg_search(
            model, tokenizer, prompt, "step 1 :", position=5, steps=3, seed=seed, **SEARCH
        )

    first, again = run(0), run(0)
    assert first.suffix_ids == again.suffix_ids and first.losses == again.losses
    assert run(1).losses != first.losses


def test_bad_settings_are_refused(model, tokenizer, prompt):
    def search(target="sure ,", **overrides):
        options = {**SEARCH, "position": 0, "steps": 1, **overrides}
        return gcg_search(model, tokenizer, prompt, target, **options)

    with pytest.raises(ValueError, match="target must be a non-empty phrase"):
        search(" ")
    with pytest.raises(ValueError, match="does not know"):
        search("sure , xyzzy")
    with pytest.raises(ValueError, match="overflows the canvas of gen_length=40"):
        search(corpus.AFFIRMATIVE_PREFIX, position=36)
    with pytest.raises(ValueError, match="suffix_length must be an int >= 1"):
        search(suffix_length=0)
    with pytest.raises(ValueError, match="prompt must be a non-empty string"):
        gcg_search(model, tokenizer, "", "sure", position=0, gen_length=G)
    with pytest.raises(TypeError, match="needs a mosa model"):
        gcg_search(torch.nn.Linear(2, 2), tokenizer, prompt, "sure", position=0, gen_length=G)

"""Values no sampler can use: non-finite settings, ids outside the vocabulary, a model with a
NaN weight, a prompt holding the mask id. Each is refused with an error naming it."""

from __future__ import annotations

import pytest
import torch
from sampling_builders import (
    MASK_ID,
    TINY_CONFIGS,
    build_model,
    random_prompt,
    random_weights,
    replay_graphs_eagerly,
)

from mosa.sampling import diffusion_generate, generate

SCHEDULE = dict(gen_length=8, block_length=4, steps=4)


def nan_model(family: str):
    """A tiny random model with one NaN weight in its last matrix (the LM head or the last
    layer): every position's logits hold NaN, so no row has a token to choose."""
    model = build_model(TINY_CONFIGS[family], device="cpu", dtype=torch.float32)
    model.load_state_dict(random_weights(model, 0))
    with torch.no_grad():
        matrices = [p for p in model.parameters() if p.dim() == 2]
        matrices[-1][7, 3] = float("nan")
    return model.eval()


@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graph-twin"])
def test_a_nan_weight_names_the_rows_instead_of_returning_invalid_ids(monkeypatch, graphs):
    if graphs:
        twin = replay_graphs_eagerly(monkeypatch)  # steps replayed under the host-read guard
    with pytest.raises(ValueError, match=r"NaN or infinite logits for batch rows \[0, 1\]"):
        generate(
            nan_model("llada"), random_prompt(2, 5), mask_id=MASK_ID, cuda_graphs=graphs,
            **SCHEDULE,
        )  # fmt: skip
    if graphs:
        assert twin.replays


@pytest.mark.parametrize("alg", ["origin", "maskgit_plus"])
def test_a_nan_weight_is_named_by_diffusion_generate(alg):
    with pytest.raises(ValueError, match=r"NaN or infinite logits for batch rows \[0, 1\]"):
        diffusion_generate(
            nan_model("dream"), random_prompt(2, 5), max_new_tokens=6, steps=3, alg=alg,
            mask_token_id=MASK_ID,
        )  # fmt: skip


@pytest.mark.parametrize(
    "kw, error, match",
    [
        (dict(cfg_scale=float("inf")), ValueError, "cfg_scale must be a finite number >= 0"),
        (dict(cfg_scale=float("nan")), ValueError, "cfg_scale must be a finite number >= 0"),
        (dict(temperature=float("nan")), ValueError, "temperature must be a finite"),
        (dict(mask_id=9999), ValueError, r"mask_id=9999 is outside the model's vocabulary"),
        (dict(generator=1), TypeError, "generator must be a torch.Generator"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_generate_refuses(kw, error, match):
    from sampling_builders import llada_model

    kw = dict(dict(mask_id=MASK_ID, **SCHEDULE), **kw)
    with pytest.raises(error, match=match):
        generate(llada_model(), random_prompt(2, 5), **kw)


@pytest.mark.parametrize(
    "kw, error, match",
    [
        (dict(alg_temp=float("nan")), ValueError, "alg_temp must be a finite number >= 0"),
        (dict(alg_temp=float("inf")), ValueError, "alg_temp must be a finite number >= 0"),
        (dict(temperature=float("nan")), ValueError, "temperature must be a finite"),
        (dict(mask_token_id=9999), ValueError, r"mask_token_id=9999 is outside"),
        (dict(generator=1), TypeError, "generator must be a torch.Generator"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_diffusion_generate_refuses(kw, error, match):
    from sampling_builders import dream_model

    kw = dict(dict(mask_token_id=MASK_ID, max_new_tokens=6, steps=3, alg="maskgit_plus"), **kw)
    with pytest.raises(error, match=match):
        diffusion_generate(dream_model(), random_prompt(2, 5), **kw)


def test_a_prompt_holding_the_mask_id_is_refused_unless_asked_for():
    from sampling_builders import dream_model, llada_model

    prompt = random_prompt(2, 5)
    prompt[1, 2] = MASK_ID
    match = rf"the prompt holds the mask id {MASK_ID}.*response=.*fill_prompt_masks=True"
    with pytest.raises(ValueError, match=match):
        generate(llada_model(), prompt, mask_id=MASK_ID, **SCHEDULE)
    with pytest.raises(ValueError, match=match):
        diffusion_generate(dream_model(), prompt, max_new_tokens=6, steps=3, mask_token_id=MASK_ID)
    out = generate(llada_model(), prompt, mask_id=MASK_ID, fill_prompt_masks=True, **SCHEDULE)
    assert out.shape == (2, 5 + SCHEDULE["gen_length"])

"""Every attack of the eval runner on a block-diffusion model (LLaDA2, ``block_generate``;
docs/DESIGN.md §8 "Attacks on block diffusion").

The model is a small random LLaDA2 over the tiny tokenizer's vocabulary (its head sharpened
so that the published threshold is crossed, as in ``tests/sampling``): the responses are
noise, but where every fixed piece sits, what each sampler call decodes and what the GCG
loss scores are exact.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from test_dllm_attacks import PROMPT, TINY_DIJA, SamplerSpy, ids_of

from mosa.demo import ATTACKS as DEMO_ATTACKS
from mosa.eval.analysis import gcg_positions, prefill_sweep
from mosa.eval.attacked import build_response_canvas
from mosa.eval.attacks import apply_attack
from mosa.eval.gcg import _Layout, _Scorer, gcg_search
from mosa.eval.runner import respond, run_attacks
from mosa.eval.trajhijack import Hijack, hijacked_canvas, refusal_span
from mosa.models import build_model
from mosa.sampling import block_generate
from mosa.sampling.diffuguard import DiffuGuard
from mosa.text.prompts import encode_prompts
from mosa.tiny.evaluate import HarmJudge

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from tiny_checkpoints import config_over, random_weights  # noqa: E402

# block_generate's own terms: steps per block, blocks counted from the sequence's start.
SAMPLER = {"gen_length": 40, "block_length": 8, "steps": 8, "threshold": 0.95}
PLAIN_ATTACKS = ("none", "prefill", "middle_prefill", "template", "mask_interleave", "pad")


@pytest.fixture(scope="module")
def llada2(tokenizer):
    """A small random LLaDA2 over the tiny tokenizer (its ids, special tokens and template)."""
    model = build_model(config_over("llada2", tokenizer), device="cpu", dtype=torch.float32)
    model.load_state_dict(random_weights(model, 3))
    with torch.no_grad():
        model.lm_head_weight.mul_(5)
        model.lm_head_weight[tokenizer.mask_token_id] = 0
    return model.eval()


def attack_of(name: str, prompt: str = PROMPT):
    options = dict(DEMO_ATTACKS[name])
    if name == "template":
        options["template"] = 0
    return apply_attack(name, prompt, **options)


def direct(model, tokenizer, attacked, **sampler):
    """``block_generate`` on the rows' prompts and response canvases: ``(responses, canvas)``."""
    ids, mask = encode_prompts(
        tokenizer, [a.prompt for a in attacked], chat_template=True, device="cpu"
    )
    gen_length, mask_id = SAMPLER["gen_length"], tokenizer.mask_token_id
    canvas = torch.stack(
        [build_response_canvas(tokenizer, a.fixed, gen_length, mask_id) for a in attacked]
    )
    options = {**SAMPLER, **sampler}
    out = block_generate(model, ids, mask, response=canvas, cuda_graphs=False, **options)
    return out[:, -gen_length:], canvas


def test_every_plain_attack_is_block_generate_over_its_canvas(llada2, tokenizer, monkeypatch):
    spy = SamplerSpy(monkeypatch, "llada2")
    attacked = [attack_of(name) for name in PLAIN_ATTACKS]
    texts = respond(llada2, tokenizer, attacked, **SAMPLER, stop_at_eos=False)
    (call,) = spy.calls
    assert call["options"]["block_length"] == 8 and call["options"]["steps"] == 8
    response, canvas = direct(llada2, tokenizer, attacked, stop_at_eos=False)
    assert texts == tokenizer.batch_decode(response, skip_special_tokens=True)
    fixed = canvas != tokenizer.mask_token_id
    assert fixed.any(dim=1).tolist() == [bool(a.fixed) for a in attacked]
    assert torch.equal(response[fixed], canvas[fixed]) and not (response == canvas).all()
    for row, attack in enumerate(attacked):
        for position, piece in attack.fixed:
            ids = ids_of(tokenizer, piece)
            assert response[row, position : position + len(ids)].tolist() == ids


def test_a_stop_at_eos_cuts_fixed_pieces_after_the_first_eos_only(llada2, tokenizer):
    """The default (published) stop: everything after a row's first EOS is EOS, anchors of
    blocks decoding never reached included; before it every fixed piece is in place."""
    attacked = [attack_of(name) for name in PLAIN_ATTACKS]
    texts = respond(llada2, tokenizer, attacked, **SAMPLER)
    response, canvas = direct(llada2, tokenizer, attacked)
    assert texts == tokenizer.batch_decode(response, skip_special_tokens=True)
    eos = response == tokenizer.eos_token_id
    first = torch.where(eos.any(dim=1), eos.int().argmax(dim=1), response.shape[1])
    before = torch.arange(response.shape[1])[None] < first[:, None]
    fixed = (canvas != tokenizer.mask_token_id) & before
    assert torch.equal(response[fixed], canvas[fixed])


def test_return_trace_marks_fixed_tokens_and_counts_steps_per_row(llada2, tokenizer):
    attacked = [attack_of("pad"), attack_of("none")]
    _, traces = respond(llada2, tokenizer, attacked, return_trace=True, **SAMPLER)
    _, canvas = direct(llada2, tokenizer, attacked)
    fixed = canvas != tokenizer.mask_token_id
    trace = torch.stack(traces)
    assert (trace[fixed] == -1).all() and (trace[~fixed] >= 0).any()
    # Blocks decode in order: each block's steps come after the block before's.
    ids, _ = encode_prompts(
        tokenizer, [a.prompt for a in attacked], chat_template=True, device="cpu"
    )
    for row, steps in enumerate(trace):
        start = int((ids[row] != tokenizer.pad_token_id).sum())  # left padding
        block = (start + torch.arange(len(steps))) // 8
        spans = [steps[(block == b) & (steps >= 0)] for b in block.unique().tolist()]
        spans = [s for s in spans if len(s)]
        assert all(a.max() < b.min() for a, b in zip(spans, spans[1:], strict=False))


def test_dija_decodes_the_turn_and_the_response_as_one_block_canvas(
    llada2, tokenizer, monkeypatch, held_out_harmful
):
    spy = SamplerSpy(monkeypatch, "llada2")
    prompts = held_out_harmful[:2]
    attacked = [apply_attack("dija", p, dija_template=TINY_DIJA) for p in prompts]
    texts = respond(llada2, tokenizer, attacked, **SAMPLER)
    (call,) = spy.calls
    # 20 tail tokens (three slots of 4, two headers of 3, end of turn, assistant) + 40, not
    # lengthened: blocks count from the head's first token; steps stay per block.
    assert call["options"]["gen_length"] == 60 and call["options"]["steps"] == 8
    canvas = call["options"]["response"]
    assert canvas.shape == (2, 60)
    filled = call["out"][:, -60:]
    slots = canvas == tokenizer.mask_token_id
    assert not (filled[:, :20][slots[:, :20]] == tokenizer.mask_token_id).any()
    assert torch.equal(filled[~slots], canvas[~slots])
    for row, text in enumerate(texts):
        assert text == tokenizer.decode(filled[row], skip_special_tokens=True)
        assert "step 2 :" in text and text.index("step 2 :") < text.index("step 3 :")


def test_trajhijack_resumes_inside_the_block_that_completed_the_refusal(
    llada2, tokenizer, monkeypatch
):
    spy = SamplerSpy(monkeypatch, "llada2")
    (plain,) = respond(llada2, tokenizer, [apply_attack("none", PROMPT)], **SAMPLER)
    phrase = " ".join(plain.split()[10:12])  # the model's own words stand in for a refusal
    spy.calls.clear()
    hijack = apply_attack("trajhijack", PROMPT, hijack_prefix="sure ,", refusals=(phrase,))
    (text,) = respond(llada2, tokenizer, [hijack], **SAMPLER)
    assert len(spy.calls) == 2 and all(c["options"]["return_trace"] for c in spy.calls)
    first, again = spy.calls
    resumed = again["options"]["response"][0]
    response = first["out"].sequences[0, -40:]
    trace = first["out"].commit_step[0]
    span = refusal_span(tokenizer, response.tolist(), (phrase,))
    done = int(trace[span[0] : span[1]].max())
    # The canvas resumed from: the prefix fixed at 0, the refusal masked, and the rest as
    # committed up to the step that completed it: earlier blocks whole, the refusal's block
    # in part, later blocks not at all.
    prefix = ids_of(tokenizer, "sure ,")
    assert resumed[: len(prefix)].tolist() == prefix
    rest = torch.arange(40) >= len(prefix)
    kept = (trace >= 0) & (trace <= done) & rest
    kept[span[0] : span[1]] = False
    assert torch.equal(resumed[rest] != tokenizer.mask_token_id, kept[rest])
    assert torch.equal(resumed[kept], response[kept])
    start = first["ids"].shape[1]
    block = (start + torch.arange(40)) // 8
    refusal_block = int(block[span[1] - 1])
    assert kept[(block < refusal_block) & rest & (trace >= 0)].all()
    assert not kept[block > refusal_block].any()
    assert text.startswith("sure ,") and text != plain


def test_hijacked_canvas_drops_what_a_stopped_row_filled_after_its_eos(llada2, tokenizer):
    """block_generate writes EOS after a row's first EOS with no commit step: those are not
    fixed tokens, so the resumed canvas masks them again."""
    attacked = [attack_of("none")]
    ids, mask = encode_prompts(
        tokenizer, [a.prompt for a in attacked], chat_template=True, device="cpu"
    )
    out = block_generate(llada2, ids, mask, return_trace=True, cuda_graphs=False, **SAMPLER)
    response = out.sequences[0, -40:].tolist()
    # An EOS id of this row's own response, first met late (decoding depends on no EOS id
    # until a row stops), and a phrase before it.
    eos_id = next(t for t in response[8:] if response.index(t) >= 8)
    phrase = tokenizer.decode(response[2:4])
    assert refusal_span(tokenizer, response, (phrase,)) is not None
    stopped = block_generate(
        llada2, ids, mask, return_trace=True, cuda_graphs=False, eos_id=eos_id, **SAMPLER
    )
    response, trace = stopped.sequences[0, -40:], stopped.commit_step[0]
    tail = (response == eos_id) & (trace < 0)
    assert tail.any()
    hijack = Hijack("sure ,", (phrase,))
    fixed = torch.zeros_like(tail)
    canvas = hijacked_canvas(tokenizer, response, trace, hijack, tokenizer.mask_token_id, (), fixed)
    assert canvas is not None and (canvas[tail] == tokenizer.mask_token_id).all()
    old = hijacked_canvas(tokenizer, response, trace, hijack, tokenizer.mask_token_id)
    assert (old[tail] == eos_id).all()  # without the fixed flags they would be kept


def test_run_attacks_and_the_prefill_sweep_run_on_block_diffusion(llada2, tokenizer):
    attacks = {name: DEMO_ATTACKS[name] for name in ("prefill", "pad", "trajhijack")}
    outcomes = run_attacks(llada2, tokenizer, [PROMPT], attacks, HarmJudge(), **SAMPLER)
    assert set(outcomes) == set(attacks)
    assert outcomes["prefill"].responses[0].startswith(DEMO_ATTACKS["prefill"]["prefill"])
    rates = prefill_sweep(
        llada2, tokenizer, [PROMPT], "step 1 :", [0, 12, 30], HarmJudge(), **SAMPLER
    )
    assert set(rates) == {0, 12, 30}


# -- GCG on the block layout --------------------------------------------------------------------


def scorer(model, tokenizer, position: int, block_length: int | None):
    layout = _Layout(tokenizer, PROMPT)
    target = torch.tensor(ids_of(tokenizer, "sure , here is"))
    first = len(layout.prefix_ids) + 5 + len(layout.after_ids) + position
    rows = torch.arange(len(target)) + first
    return _Scorer(model, layout, 40, rows, target, 5, block_length), layout, target, first


def plain_losses(model, ids: torch.Tensor, first: int, target, block_length) -> torch.Tensor:
    """float64 ``-sum log softmax`` of the full logits at the target's rows."""
    logits = model(ids, block_length=block_length, return_logits=True).logits.double()
    picked = logits[:, first : first + len(target)].log_softmax(-1)
    return -picked.gather(2, target.expand(len(ids), -1)[..., None])[..., 0].sum(1)


@pytest.mark.parametrize("position", [0, 13, 30])
def test_gcg_scores_the_block_layout_block_causally(llada2, tokenizer, position):
    score, layout, target, first = scorer(llada2, tokenizer, position, 8)
    suffixes = torch.randint(10, 200, (3, 5), generator=torch.Generator().manual_seed(position))
    ids = torch.cat([score.prefix.expand(3, -1), suffixes, score.after.expand(3, -1)], dim=1)
    # block_generate's canvas: whole blocks of 8 from the first token, masks after the prompt.
    prompt_length = len(layout.prefix_ids) + 5 + len(layout.after_ids)
    assert ids.shape[1] == -(-(prompt_length + 40) // 8) * 8 > prompt_length + 40
    assert (ids[:, prompt_length:] == tokenizer.mask_token_id).all()
    expected = plain_losses(llada2, ids, first, target, 8)
    torch.testing.assert_close(score.losses(suffixes).double(), expected, rtol=1e-5, atol=1e-4)
    # The gradient is that of the same loss (a finite check against autograd on full logits).
    one = suffixes[0]
    gradient = score.gradient(one)
    embedding = llada2.get_input_embeddings().weight
    one_hot = torch.nn.functional.one_hot(one, len(embedding)).float().requires_grad_()
    embeds = torch.cat([embedding[score.prefix], one_hot @ embedding, embedding[score.after]])
    with torch.enable_grad():
        logits = llada2(inputs_embeds=embeds[None], block_length=8, return_logits=True).logits
        logp = logits[0, first : first + len(target)].double().log_softmax(-1)
        loss = -logp.gather(1, target[:, None]).sum()
        (reference,) = torch.autograd.grad(loss, one_hot)
    torch.testing.assert_close(gradient, reference.float(), rtol=1e-4, atol=1e-4)
    # Block-causal: the bidirectional forward scores differently (later blocks seen).
    bidirectional = plain_losses(llada2, ids, first, target, None)
    assert not torch.allclose(expected, bidirectional, rtol=1e-3)


def test_first_step_gcg_scores_block_generate_s_first_step(llada2, tokenizer):
    """At position 0 the target sits in the first decoded blocks: its log-probability is
    that of the canvas cut after the target's last block (later blocks are not seen), the
    forward block_generate's first step runs on its first block."""
    score, _, target, first = scorer(llada2, tokenizer, 0, 8)
    suffix = torch.randint(10, 200, (1, 5), generator=torch.Generator().manual_seed(1))
    ids = torch.cat([score.prefix[None], suffix, score.after[None]], dim=1)
    cut = -(-(first + len(target)) // 8) * 8
    assert cut < ids.shape[1]
    expected = plain_losses(llada2, ids[:, :cut], first, target, 8)
    torch.testing.assert_close(score.losses(suffix).double(), expected, rtol=1e-5, atol=1e-4)


def test_gcg_search_needs_the_block_length_of_a_block_diffusion_model(llada2, tokenizer):
    with pytest.raises(ValueError, match="pass block_length="):
        gcg_search(llada2, tokenizer, PROMPT, "sure ,", position=0, gen_length=40, steps=0)


def test_gcg_positions_run_on_block_diffusion(llada2, tokenizer):
    outcomes = gcg_positions(
        llada2, tokenizer, [PROMPT], "sure ,", [0, 12], HarmJudge(),
        gcg={"steps": 2, "suffix_length": 3, "candidates": 8}, **SAMPLER,
    )  # fmt: skip
    for outcome in outcomes.values():
        losses = outcome.searches[0].losses
        assert len(losses) == 3 and losses == sorted(losses, reverse=True)
        assert len(outcome.responses) == 1


# -- DiffuGuard ---------------------------------------------------------------------------------


def test_a_greedy_guard_answers_every_attack_as_block_generate_does(llada2, tokenizer):
    attacked = [attack_of(name) for name in (*PLAIN_ATTACKS, "dija", "trajhijack")]
    guard = DiffuGuard(alpha=0.0)
    assert respond(llada2, tokenizer, attacked, guard=guard, **SAMPLER) == respond(
        llada2, tokenizer, attacked, **SAMPLER
    )


def test_calibrate_and_guard_a_block_diffusion_model(llada2, tokenizer, held_out_harmful):
    benign = ["name three colors .", "what is two plus two ?"]
    guard = DiffuGuard.calibrate(
        llada2, tokenizer, held_out_harmful[:2], benign, alpha=0.5, max_repairs=1, **SAMPLER
    )
    assert guard.audit.width == llada2.lm_head_weight.shape[1] and guard.alpha == 0.5
    attacked = [attack_of("prefill"), attack_of("none")]
    texts = respond(llada2, tokenizer, attacked, guard=guard, **SAMPLER)
    assert texts[0].startswith(DEMO_ATTACKS["prefill"]["prefill"])
    assert respond(llada2, tokenizer, attacked, guard=guard, **SAMPLER) == texts
    with pytest.raises(ValueError, match=r"drop \['top_k'\]"):
        respond(llada2, tokenizer, attacked, guard=guard, top_k=5, **SAMPLER)

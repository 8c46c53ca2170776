"""MOSA step throughput: the fused objective against the straightforward one, in one run.

Same LoRA model, same batch, same sentences. One step is the policy and reference forwards,
the objective, the backward and an AdamW update. The straightforward objective
(``mosa.align.reference_terms``) takes full ``[B, L, V]`` logits from both passes, an explicit
``log_softmax``, a loop over offsets and the full-vocabulary KL; the fused one
(``mosa.align.mosa_terms``) takes hidden states and scores with ``token_logprobs`` /
``token_kl``. Rows give prompts/s, peak extra memory and the ratios (docs/DESIGN.md §10: >= 2x
prompts/s, <= 1/2 memory), and the minutes 3,000 prompts would take at that rate (the paper's
run: 12 minutes on 2 A100s).

The CPU model is the sampler benchmark's (LLaDA vocabulary 126464, d 512, 6 layers); with
``--gpu-scale`` on a GPU it has the LLaDA-8B shapes (random weights, bf16, gradient
checkpointing); ``--smoke``: the sampler's tiny smoke model, 2 prompts of 8 tokens, canvas 32.
``--family llada2``: the LLaDA2 case, the sampler benchmark's LLaDA2 models
(``benchmarks/sampler_llada2.py``: d 512, 4 layers, 32 experts top-4, vocab 157184 on the CPU;
LLaDA2-mini's shapes with ``--gpu-scale``), both objectives on ``block_generate``'s canvas under
block-causal attention (block 32, the trainer's default for the family).
Usage: ``python -m benchmarks.align [--family llada|llada2] [--quick] [--smoke] [--gpu-scale]
[--batch N] [--prompt-length P]`` (``benchmarks/memory_plan.py`` predicts the fused row's
peak memory, LLaDA only).
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks import memory_plan, sampler_llada2
from benchmarks.common import (
    SMOKE_HELP,
    format_table,
    machine_name,
    median_seconds,
    peak_bytes,
    publish,
)
from benchmarks.sampler import build, model_config
from mosa.align import AlignBatch, mosa_terms, reference_terms
from mosa.align.objective import IGNORE, lay_out_blocks
from mosa.align.trainer import block_length_for
from mosa.models import LLADA2_MINI

FAMILIES = ("llada", "llada2")

PAPER_PROMPTS = 3000
SENTENCE_TOKENS = 12


def _lora(model, r: int):
    import peft

    config = peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=model.lora_target_modules)
    return peft.get_peft_model(model, config)


def _family_config(family: str, gpu_scale: bool, smoke: bool) -> dict:
    """The benchmark model's config: the sampler benchmark's model of ``family``."""
    if family == "llada":
        return model_config(gpu_scale, smoke)
    if smoke:
        return sampler_llada2.SMOKE_MODEL
    return dict(LLADA2_MINI) if gpu_scale else sampler_llada2.CPU_MODEL


def _batch(model, batch: int, prompt_length: int, gen_length: int, device) -> AlignBatch:
    """Random prompts then masks, laid out as the trainer lays them out for ``model`` (a block
    model: ``block_generate``'s canvas at the family's default block length)."""
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 126000, (batch, prompt_length), generator=generator)
    ids = torch.cat([prompt, torch.full((batch, gen_length), model.mask_token_id)], dim=1)
    sentences = torch.randint(0, 126000, (2, batch, SENTENCE_TOKENS), generator=generator)
    sentences[0, :, 9:] = IGNORE  # refusals of 9 tokens, continuations of 12
    step_batch = AlignBatch(ids, None, gen_length, sentences[0], sentences[1])
    block_length = block_length_for(model, None)
    if block_length is not None:
        pad_id = model.pad_token_id
        step_batch = lay_out_blocks(step_batch, block_length, model.mask_token_id, pad_id)
    return step_batch.to(device)


def _step_functions(model, base, batch: AlignBatch, window, beta: float, device):
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-6)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def reference_forward(logits: bool):
        def run(ids, mask, **block):
            with model.disable_adapter():
                out = model(ids, mask, return_logits=logits, **block)
            return out.logits if logits else out.hidden_states

        return run

    def policy_forward(logits: bool):
        def run(ids, mask, **block):
            out = model(ids, mask, return_logits=logits, **block)
            return out.logits if logits else out.hidden_states

        return run

    def finish(terms):
        terms.loss(beta).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return terms.reward.detach()

    def fused():
        with autocast:
            terms = mosa_terms(
                policy_forward(False), reference_forward(False),
                (base.lm_head_weight, base.lm_head_bias), base.logits_shift, batch, window,
            )  # fmt: skip
        return finish(terms)

    def straightforward():
        with autocast:
            terms = reference_terms(policy_forward(True), reference_forward(True), batch, window)
        return finish(terms)

    return {"straightforward objective": straightforward, "fused objective": fused}


def run(
    device, *, batch, prompt_length, gen_length, window, repeats, gpu_scale, smoke=False,
    family="llada",
):  # fmt: skip
    base = build(device, _family_config(family, gpu_scale, smoke))
    if gpu_scale:
        base.gradient_checkpointing_enable()
    model = _lora(base, r=32)
    model.train()
    step_batch = _batch(base, batch, prompt_length, gen_length, device)
    steps = _step_functions(model, base, step_batch, window, beta=0.05, device=device)
    rows = []
    for name, step in steps.items():
        step()  # warm-up, so both rows start from allocated optimizer state
        peak = peak_bytes(step, device)
        # Timed apart from the memory measurement, which first hands freed pages back to the
        # system and so makes the measured step fault its working set in again.
        seconds = median_seconds(step, device, repeats=repeats, warmup=0)
        rows.append(
            {
                "objective": name,
                "prompts/s": batch / seconds,
                "seconds/step": seconds,
                "peak_MiB": peak / 2**20,
                "minutes for 3000 prompts": PAPER_PROMPTS / (batch / seconds) / 60,
            }
        )
    for row in rows:
        row["speedup"] = row["prompts/s"] / rows[0]["prompts/s"]
        row["memory ratio"] = row["peak_MiB"] / rows[0]["peak_MiB"]
    return rows


def measure(
    device: torch.device,
    *,
    quick: bool,
    gpu_scale: bool = False,
    batch: int | None = None,
    prompt_length: int = 32,
    smoke: bool = False,
    family: str = "llada",
) -> tuple[list, dict]:
    """Both rows; ``gpu_scale``: LLaDA-8B (``family`` llada2: LLaDA2-mini) shapes, 8 prompts
    a step unless ``batch`` says; ``smoke``: a tiny model and batch, one repeat."""
    if smoke:
        gpu_scale, batch = False, 2
        settings = dict(prompt_length=8, gen_length=32, window=(4, 12))
    else:
        batch = batch or (8 if gpu_scale else 4)
        settings = dict(prompt_length=prompt_length, gen_length=128, window=(20, 60))
    repeats = 1 if quick or smoke else 3
    rows = run(
        device, batch=batch, repeats=repeats, gpu_scale=gpu_scale, smoke=smoke, family=family,
        **settings,
    )  # fmt: skip
    if gpu_scale and family == "llada":
        planned_step_extra(rows, batch, **settings)
    if family == "llada2":
        kind = "smoke" if smoke else "gpu" if gpu_scale else "cpu"
        shape = sampler_llada2.MODEL_NAMES[kind] + ", block-causal, block 32"
    elif gpu_scale:
        shape = "LLaDA-8B shapes, bf16, LoRA r 32"
    else:
        shape = "d 64, 2 layers, vocab 126464" if smoke else "d 512, 6 layers, vocab 126464"
    meta = {"family": family, "model": shape, "batch": batch, "gpu_scale": gpu_scale}
    return rows, {**meta, **settings}


def planned_step_extra(rows: list[dict], batch: int, **settings) -> None:
    """Puts beside the fused row's measured peak what ``memory_plan.py`` predicts for it at
    LLaDA-8B shapes ("step extra"), and their ratio."""
    shapes = memory_plan.llada_8b_shapes(longest_sentence=SENTENCE_TOKENS, **settings)
    planned = memory_plan.plan(shapes, batches=(batch,))[0]["step extra MiB"]
    for row in rows:
        if row["objective"] == "fused objective":
            row["planned_MiB"] = planned
            row["measured / planned"] = row["peak_MiB"] / planned


def report(rows: list[dict], meta: dict, device: torch.device) -> str:
    """The table ``main`` prints."""
    columns = [
        "objective", "prompts/s", "speedup", "peak_MiB", "memory ratio", "minutes for 3000 prompts"
    ]  # fmt: skip
    notes = "ratios are against the straightforward objective in this run"
    if any("planned_MiB" in row for row in rows):
        columns += ["planned_MiB", "measured / planned"]
        notes += "; planned_MiB: benchmarks/memory_plan.py's step extra for these shapes"
    return (
        f"## MOSA step on {machine_name(device)} ({meta['model']}, batch {meta['batch']}, "
        f"prompt {meta['prompt_length']}, canvas {meta['gen_length']})\n\n"
        + format_table(rows, columns)
        + f"\n\n{notes}"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one timed step per row")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    parser.add_argument("--gpu-scale", action="store_true", help="LLaDA-8B shapes (GPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="prompts per step")
    parser.add_argument("--prompt-length", type=int, default=32, help="prompt tokens")
    parser.add_argument("--family", choices=FAMILIES, default="llada", help="model family")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows, meta = measure(
        device,
        quick=args.quick,
        gpu_scale=args.gpu_scale,
        batch=args.batch,
        prompt_length=args.prompt_length,
        smoke=args.smoke,
        family=args.family,
    )
    name = "align" if args.family == "llada" else f"align-{args.family}"
    publish(name, device, rows, meta, report(rows, meta, device), write=not args.smoke)
    return 0


if __name__ == "__main__":
    sys.exit(main())

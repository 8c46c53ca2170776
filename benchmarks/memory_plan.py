"""Memory of one MOSA LoRA step at LLaDA-8B shapes on one 80 GB GPU, component by component.

The trainer's set-up (docs/DESIGN.md §7): bf16 weights; LoRA r = 32 on every block projection, its
weights in fp32 (peft upcasts adapters); AdamW; bf16 autocast; gradient checkpointing per block;
the fused head ops (``token_logprobs``, ``token_kl``); the reference forward without gradient.
A prompt is P prompt tokens plus a canvas of G masks, T = P + G tokens. In bytes, with d the
width, w the key/value width, h the MLP width, L blocks, V the vocabulary, r the LoRA rank,
Σin the input widths of one block's LoRA'd projections (n of them), S the response positions
the window reaches (window start to window end + longest sentence), B prompts a step:

- weights: 2 per parameter.
- LoRA state: fp32 weights 4 + AdamW moments 8 per LoRA parameter (held between steps);
  gradients 4 + the bf16 weight copies autocast keeps during the step 2.
- checkpoints: L·T·d·2 a prompt (each block's bf16 input).
- block recompute, the larger of:
  backward of one block: its activations again, T·(8d + 4d + 4w + 6h + 2·Σin + 2·n·r) (two
  RMSNorm inputs in fp32; q, k, v and the output saved by the attention kernel; gate,
  silu(gate) and up; each LoRA keeps a bf16 copy of its input and its rank-r activation — the
  frozen base projections keep nothing), plus about T·(4d + 8h) of their gradients;
  a forward inside a block (the policy's, checkpointed, or the reference's): about T·(6d + 12h)
  (gate, up, silu(gate), their product and a LoRA's fp32 copy of it).
- hidden states and head ops: T·8d (the final norm's fp32 input, the policy's and the
  reference's hidden states while the head ops run) + S·6d (``token_logprobs``: the hidden rows
  and fp32 E_p[W]) + G·8d (``token_kl``: both models' rows and the fp32 d KL / d hidden).
- head-op chunk: the larger of ``token_logprobs``' logits, min(B·S, 64 MiB / 2V rows)·V·2, and
  ``token_kl``'s two, 2·min(B·G, 32 MiB / 2V rows)·V·2 — no [B, T, V] tensor exists.

"step extra" (all but the weights and the held LoRA state) is what ``benchmarks/align.py``'s
``peak_MiB`` measures for the fused objective (``--gpu-scale --prompt-length 64 --batch B``).
The CUDA context (about 0.5 GB) and allocator slack come on top of ``total``.

Usage: ``python -m benchmarks.memory_plan [--prompt-length 64] [--gen-length 128] [--smoke]``
(``--smoke``: print the plan, write nothing).
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass

from torch import nn

from benchmarks.common import RESULTS_DIR, SMOKE_HELP, format_table
from mosa.models import LLADA_8B, build_model
from mosa.models.files import write_file_atomic

GPU_BYTES = 80e9
GB = 1e9
BATCHES = (1, 2, 4, 8, 12, 16, 24, 32)
LOGPROB_CHUNK_BYTES = 64 << 20  # mosa_kernels' token_logprobs budget for one chunk's logits
KL_CHUNK_BYTES = 32 << 20  # token_kl's, for each of its two logits chunks


@dataclass(frozen=True)
class Shapes:
    """What the plan needs from the model and the step."""

    parameters: int
    lora_parameters: int
    lora_inputs: int  # Σin: input widths of one block's LoRA'd projections
    lora_count: int  # n: LoRA'd projections in one block
    d: int
    w: int
    h: int
    layers: int
    vocab: int
    lora_r: int
    prompt_length: int
    gen_length: int
    window: tuple[int, int]
    longest_sentence: int

    @property
    def tokens(self) -> int:
        return self.prompt_length + self.gen_length

    @property
    def span(self) -> int:
        """S: response positions some sentence token can reach from the window."""
        first, last = self.window
        return min(last + self.longest_sentence, self.gen_length) - first


def llada_8b_shapes(
    *,
    lora_r: int = 32,
    prompt_length: int = 64,
    gen_length: int = 128,
    window: tuple[int, int] = (20, 60),
    longest_sentence: int = 12,
) -> Shapes:
    """The shapes of LLaDA-8B (counted on a weightless meta-device model) and of the step."""
    model = build_model(LLADA_8B, device="meta")
    config = model.config
    lora = [
        module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and re.fullmatch(model.lora_target_modules, name)
    ]
    return Shapes(
        parameters=sum(p.numel() for p in model.parameters()),
        lora_parameters=sum(lora_r * (m.in_features + m.out_features) for m in lora),
        lora_inputs=sum(m.in_features for m in lora) // config.n_layers,
        lora_count=len(lora) // config.n_layers,
        d=config.d_model,
        w=config.kv_heads * config.head_dim,
        h=config.mlp_hidden,
        layers=config.n_layers,
        vocab=config.logits_size,
        lora_r=lora_r,
        prompt_length=prompt_length,
        gen_length=gen_length,
        window=window,
        longest_sentence=longest_sentence,
    )


def components(s: Shapes, batch: int) -> dict[str, float]:
    """Bytes of each component of the step's peak at ``batch`` prompts (module docstring)."""
    t, d, h = s.tokens, s.d, s.h
    block_backward = t * (
        8 * d + 4 * d + 4 * s.w + 6 * h + 2 * s.lora_inputs + 2 * s.lora_count * s.lora_r
    ) + t * (4 * d + 8 * h)
    block_forward = t * (6 * d + 12 * h)
    logprob_rows = min(batch * s.span, max(1, LOGPROB_CHUNK_BYTES // (2 * s.vocab)))
    kl_rows = min(batch * s.gen_length, max(1, KL_CHUNK_BYTES // (2 * s.vocab)))
    return {
        "weights (bf16)": 2 * s.parameters,
        "LoRA weights + AdamW moments (fp32)": 12 * s.lora_parameters,
        "LoRA gradients (fp32) + autocast copies (bf16)": 6 * s.lora_parameters,
        "checkpoints": batch * s.layers * t * d * 2,
        "block recompute": batch * max(block_backward, block_forward),
        "hidden states + head ops' saved tensors": batch
        * (t * 8 * d + s.span * 6 * d + s.gen_length * 8 * d),
        "head-op logits chunk": max(logprob_rows * s.vocab * 2, 2 * kl_rows * s.vocab * 2),
    }


HELD = ("weights (bf16)", "LoRA weights + AdamW moments (fp32)")
"""Components allocated before a step starts; the rest is the step's extra memory."""


def plan(s: Shapes, batches=BATCHES) -> list[dict]:
    """One row per batch size: the step's components, its extra, the total, what is left."""
    rows = []
    for batch in batches:
        parts = components(s, batch)
        total = sum(parts.values())
        extra = total - sum(parts[name] for name in HELD)
        rows.append(
            {
                "batch": batch,
                "checkpoints GB": parts["checkpoints"] / GB,
                "block recompute GB": parts["block recompute"] / GB,
                "hidden + head GB": parts["hidden states + head ops' saved tensors"] / GB,
                "logits chunk GB": parts["head-op logits chunk"] / GB,
                "step extra MiB": extra / 2**20,
                "total GB": total / GB,
                "left of 80 GB": (GPU_BYTES - total) / GB,
            }
        )
    return rows


def largest_batch(s: Shapes) -> int:
    """The most prompts a step whose total fits in 80 GB (the CUDA context not counted)."""

    def fits(batch: int) -> bool:
        return sum(components(s, batch).values()) <= GPU_BYTES

    if not fits(1):
        return 0
    low = 1
    while fits(low * 2):
        low *= 2
    high = low * 2  # fits(low) and not fits(high): bisect between them
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def report(s: Shapes) -> str:
    """The component list at batch 1, the table against batch size, and the largest batch."""
    one = components(s, 1)
    rows = plan(s)
    lines = [
        f"# MOSA step memory plan: LLaDA-8B, LoRA r {s.lora_r}, one 80 GB GPU",
        "",
        f"Prompt {s.prompt_length} + canvas {s.gen_length} tokens, window {s.window}, "
        f"sentences up to {s.longest_sentence} tokens; {s.parameters / 1e9:.2f} B parameters, "
        f"{s.lora_parameters / 1e6:.1f} M LoRA parameters. Formulae: "
        "`benchmarks/memory_plan.py`. GB = 10^9 bytes.",
        "",
        format_table(
            [
                {"component (batch 1)": name, "GB": f"{value / GB:.3f}"}
                for name, value in one.items()
            ],
            ["component (batch 1)", "GB"],
        ),
        "",
        format_table(rows, list(rows[0])),
        "",
        f"Largest batch whose total fits in 80 GB: {largest_batch(s)} prompts (before the CUDA "
        "context and allocator slack). step extra is what the align benchmark's peak_MiB "
        "measures for the fused objective.",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt-length", type=int, default=64, help="prompt tokens")
    parser.add_argument("--gen-length", type=int, default=128, help="canvas tokens")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args(argv)
    shapes = llada_8b_shapes(prompt_length=args.prompt_length, gen_length=args.gen_length)
    text = report(shapes)
    print(text)
    if args.smoke:
        print("\nsmoke run: nothing written")
        return 0
    name = "memory-plan-llada-8b"
    if (args.prompt_length, args.gen_length) != (64, 128):
        name += f"-p{args.prompt_length}-g{args.gen_length}"
    path = write_file_atomic(RESULTS_DIR / f"{name}.md", text + "\n")
    print(f"\nwritten to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

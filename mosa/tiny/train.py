"""Trains the embedded tiny dLLMs with their family's masked-diffusion SFT objective.

``python -m mosa.tiny.train --out FOLDER [--family llada] [--seed 0] [--steps N]`` writes a
checkpoint folder in the family's published layout (``config.json`` + ``model.safetensors``),
the tokenizer files and ``train_log.jsonl`` (loss and learning rate per step). The run is
deterministic from the seed: the corpus, the model's initial weights, the batches and the
noise all derive from it. Both families share the corpus, the tokenizer and the response
length; ``FAMILIES`` holds what differs (architecture, objective, run length).

``llada`` (LLaDA SFT, ``sft_loss``): the prompt is never masked; each sample draws ``t ~
U(eps, 1]``, masks each response token (EOS padding included) with probability ``t``, and the
loss is the sum of the masked tokens' cross-entropy divided by ``t``, normalised by the
response length.

``llada2`` (block-diffusion SFT, ``block_sft_loss``): a sample's sequence (prompt, then the
EOS-padded response) is counted in blocks of ``BLOCK_LENGTH`` from its position 0. Each sample
draws one block uniformly among those the sampler decodes, the blocks holding response
positions up to the one holding the response's first EOS (``block_generate`` stops a row
after that block), and ``t ~ U(eps, 1]``; the block's
response tokens are masked with probability ``t`` (its prompt tokens never), earlier blocks
stay clean, and the model runs block-causally (``block_length=BLOCK_LENGTH``), so later blocks
are invisible and the sequence is cut at the chosen block's end. The loss is the sum of the
masked tokens' cross-entropy divided by ``t``, normalised by ``batch * BLOCK_LENGTH``. Rows
are left-padded by multiples of the block, so every row's blocks are the batch's.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mosa.models import LLADA2_MINI, LLADA_8B, build_model
from mosa.text.prompts import left_pad

from . import corpus
from .tokenizer import build_tokenizer, save_tokenizer

RESPONSE_LENGTH = 40
BLOCK_LENGTH = 8
EPS = 1e-3
ARCHITECTURE = dict(
    d_model=256, n_heads=4, n_kv_heads=4, n_layers=4, mlp_hidden_size=512,
    max_sequence_length=128, rope_theta=10000.0,
)  # fmt: skip
BLOCK_ARCHITECTURE = dict(
    hidden_size=256, num_attention_heads=4, num_key_value_heads=4, head_dim=64,
    num_hidden_layers=4, first_k_dense_replace=1, intermediate_size=512,
    num_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2, moe_intermediate_size=64,
    num_shared_experts=1, max_position_embeddings=128, rope_theta=10000.0,
)  # fmt: skip
"""LLaDA2.0-mini's layout at the dense tiny model's width and depth: layer 0 dense, then 8
routed experts (top 2 of 2 groups of the 4) and one shared expert."""


def encode_examples(tokenizer, examples) -> tuple[list[list[int]], torch.Tensor]:
    """Chat-templated prompt ids (ragged) and responses ``[N, RESPONSE_LENGTH]`` padded with EOS."""
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": e.prompt}], add_generation_prompt=True, tokenize=False
        )
        for e in examples
    ]
    prompts = tokenizer(texts, add_special_tokens=False)["input_ids"]
    responses = torch.full((len(examples), RESPONSE_LENGTH), tokenizer.eos_token_id)
    encoded = tokenizer([e.response for e in examples], add_special_tokens=False)["input_ids"]
    for row, ids in enumerate(encoded):
        if len(ids) >= RESPONSE_LENGTH:
            raise ValueError(f"response longer than {RESPONSE_LENGTH - 1} tokens: {ids}")
        responses[row, : len(ids)] = torch.tensor(ids)
    return prompts, responses


def sft_loss(model, tokenizer, prompts, response, generator) -> torch.Tensor:
    """LLaDA's SFT loss on one batch (``prompts`` ragged ids, ``response [B, L]``): masked
    response tokens' CE / t, per response token."""
    prompt, prompt_mask = left_pad(prompts, tokenizer.pad_token_id)
    mask_id = tokenizer.mask_token_id
    batch, length = response.shape
    t = (1 - EPS) * torch.rand(batch, 1, generator=generator) + EPS
    masked = torch.rand(batch, length, generator=generator) < t
    noisy = torch.where(masked, mask_id, response)
    ids = torch.cat([prompt, noisy], dim=1)
    attention = torch.cat([prompt_mask, torch.ones_like(response)], dim=1)
    logits = model(ids, attention, return_logits=True).logits[:, prompt.shape[1] :]
    ce = F.cross_entropy(logits[masked], response[masked], reduction="none")
    return (ce / t.expand(-1, length)[masked]).sum() / (batch * length)


@dataclass(frozen=True)
class BlockDraw:
    """The noise of one block-diffusion SFT batch: ``t [B, 1]``, the chosen block ``int64[B]``
    (counted from each row's position 0) and ``uniform [B, BLOCK_LENGTH]`` (a position of the
    block is masked where it is below ``t`` and holds a response token)."""

    t: torch.Tensor
    block: torch.Tensor
    uniform: torch.Tensor

    @classmethod
    def draw(cls, prompt_lengths: torch.Tensor, eos_at: torch.Tensor, generator) -> BlockDraw:
        """Draws for rows of ``prompt_lengths`` real prompt tokens whose responses hold their
        first EOS at ``eos_at``: a block uniformly among those from the one holding the first
        response position to the one holding that EOS."""
        batch = prompt_lengths.shape[0]
        t = (1 - EPS) * torch.rand(batch, 1, generator=generator) + EPS
        first = prompt_lengths // BLOCK_LENGTH
        count = (prompt_lengths + eos_at) // BLOCK_LENGTH - first + 1
        block = first + (torch.rand(batch, generator=generator) * count).long()
        uniform = torch.rand(batch, BLOCK_LENGTH, generator=generator)
        return cls(t, block, uniform)


def block_batch(tokenizer, prompts, response, draw: BlockDraw):
    """The cut, noised sequences of a block-diffusion SFT batch, left-padded by whole blocks:
    ``(ids, attention_mask, targets, masked)``, the last two ``[B, BLOCK_LENGTH]`` (the clean
    chosen block and where it is masked)."""
    fill = [tokenizer.eos_token_id] * BLOCK_LENGTH
    rows, masked = [], []
    offsets = torch.arange(BLOCK_LENGTH)
    for i, prompt in enumerate(prompts):
        end = (int(draw.block[i]) + 1) * BLOCK_LENGTH
        rows.append(torch.tensor([*prompt, *response[i].tolist(), *fill][:end]))
        is_response = end - BLOCK_LENGTH + offsets >= len(prompt)
        masked.append(is_response & (draw.uniform[i] < draw.t[i]))
    ids, attention = left_pad(rows, tokenizer.pad_token_id)
    targets = ids[:, -BLOCK_LENGTH:].clone()
    masked = torch.stack(masked)
    ids[:, -BLOCK_LENGTH:] = torch.where(masked, tokenizer.mask_token_id, targets)
    return ids, attention, targets, masked


def first_eos(response: torch.Tensor, eos_id: int) -> torch.Tensor:
    """``int64[B]``: the index of each response row's first EOS (a row without one is a
    ValueError: ``encode_examples`` pads every response with at least one)."""
    is_eos = response == eos_id
    if not bool(is_eos.any(dim=1).all()):
        raise ValueError("every response must end with EOS padding; encode it with encode_examples")
    return is_eos.int().argmax(dim=1)


def block_sft_loss(model, tokenizer, prompts, response, generator) -> torch.Tensor:
    """The block-diffusion SFT loss on one batch (module docstring): the chosen blocks' masked
    response tokens' CE / t, per block position."""
    lengths = torch.tensor([len(p) for p in prompts])
    draw = BlockDraw.draw(lengths, first_eos(response, tokenizer.eos_token_id), generator)
    ids, attention, targets, masked = block_batch(tokenizer, prompts, response, draw)
    logits = model(ids, attention, return_logits=True, block_length=BLOCK_LENGTH).logits
    logits = logits[:, -BLOCK_LENGTH:]
    ce = F.cross_entropy(logits[masked], targets[masked], reduction="none")
    t = draw.t.expand(-1, BLOCK_LENGTH)[masked]
    return (ce / t).sum() / (len(prompts) * BLOCK_LENGTH)


@dataclass(frozen=True)
class TinyFamily:
    """What a tiny model of one family is: its ``config.json`` (the published preset with the
    tiny shapes), its SFT objective and its default run."""

    preset: dict
    architecture: dict
    vocab_keys: tuple[str, ...]
    loss: Callable
    steps: int
    batch_size: int
    lr: float

    def config(self, tokenizer) -> dict:
        """The ``config.json`` dict of the tiny model for ``tokenizer``'s vocabulary."""
        ids = dict(
            mask_token_id=tokenizer.mask_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        sizes = {key: len(tokenizer) for key in self.vocab_keys}
        return dict(self.preset, **self.architecture, **ids, **sizes)


FAMILIES = {
    "llada": TinyFamily(
        LLADA_8B,
        ARCHITECTURE,
        ("vocab_size", "embedding_size"),
        sft_loss,
        steps=2400,
        batch_size=64,
        lr=1.5e-3,
    ),
    "llada2": TinyFamily(
        LLADA2_MINI,
        BLOCK_ARCHITECTURE,
        ("vocab_size",),
        block_sft_loss,
        steps=1500,
        batch_size=64,
        lr=1.5e-3,
    ),
}


def model_config(tokenizer, family: str = "llada") -> dict:
    """The ``config.json`` dict of the tiny ``family`` model for ``tokenizer``'s vocabulary."""
    return tiny_family(family).config(tokenizer)


def tiny_family(name: str) -> TinyFamily:
    """The ``FAMILIES`` entry ``name``; an unknown one is a ValueError naming the known ones."""
    if name not in FAMILIES:
        raise ValueError(f"unknown tiny model family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up to ``peak``, then cosine decay to a tenth of it."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(
    out: Path,
    *,
    seed: int,
    steps: int,
    batch_size: int,
    lr: float,
    family: str = "llada",
    save_every: int = 0,
    progress: bool = True,
):
    """Builds the corpus and tokenizer, trains the tiny ``family`` model, and writes the
    checkpoint folder ``out`` (also every ``save_every`` steps when it is positive, so a long
    run can be inspected)."""
    entry = tiny_family(family)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(corpus.all_texts(seed))
    examples = corpus.training_examples(steps * batch_size, seed)
    prompts, responses = encode_examples(tokenizer, examples)
    model = build_model(entry.config(tokenizer), device="cpu", dtype=torch.float32, seed=seed)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    save_tokenizer(tokenizer, out)
    log_path = out / "train_log.jsonl"
    log_path.write_text("")
    start_time = time.perf_counter()
    bar = tqdm(range(steps), desc=f"tiny {family} SFT", unit="step", disable=not progress)
    for step in bar:
        rows = slice(step * batch_size, (step + 1) * batch_size)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, lr, warmup=min(100, steps // 10 + 1))
        loss = entry.loss(model, tokenizer, prompts[rows], responses[rows], generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        record = {
            "step": step,
            "loss": round(loss.item(), 6),
            "grad_norm": round(grad_norm.item(), 6),
            "lr": optimizer.param_groups[0]["lr"],
            "elapsed_s": round(time.perf_counter() - start_time, 2),
        }
        optimizer.step()
        # Reopened each step: save_pretrained replaces the folder (carrying this file over).
        with open(log_path, "a") as log:
            log.write(json.dumps(record) + "\n")
        bar.set_postfix(loss=f"{record['loss']:.3f}")
        if save_every > 0 and (step + 1) % save_every == 0 and step + 1 < steps:
            model.save_pretrained(out)
    model.eval()
    model.save_pretrained(out)
    return model, tokenizer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    parser.add_argument("--family", choices=tuple(FAMILIES), default="llada")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, help="default: the family's")
    parser.add_argument("--batch-size", type=int, help="default: the family's")
    parser.add_argument("--lr", type=float, help="default: the family's")
    parser.add_argument("--save-every", type=int, default=0, help="also save every N steps")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (results depend on it)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    entry = FAMILIES[args.family]
    train(
        args.out,
        seed=args.seed,
        steps=entry.steps if args.steps is None else args.steps,
        batch_size=entry.batch_size if args.batch_size is None else args.batch_size,
        lr=entry.lr if args.lr is None else args.lr,
        family=args.family,
        save_every=args.save_every,
    )


if __name__ == "__main__":
    main()

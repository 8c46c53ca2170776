"""Trains the embedded tiny dLLM with LLaDA's masked-diffusion SFT objective.

``python -m mosa.tiny.train --out FOLDER [--seed 0] [--steps N]`` writes a checkpoint folder
in the published LLaDA layout (``config.json`` + ``model.safetensors``), the tokenizer files
and ``train_log.jsonl`` (loss and learning rate per step). The run is deterministic from the
seed: the corpus, the model's initial weights, the batches and the noise all derive from it.

The objective (LLaDA SFT): the prompt is never masked; each sample draws ``t ~ U(eps, 1]``,
masks each response token (EOS padding included) with probability ``t``, and the loss is the
sum of the masked tokens' cross-entropy divided by ``t``, normalised by the response length.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mosa.models import LLADA_8B, build_model
from mosa.text.prompts import left_pad

from . import corpus
from .tokenizer import build_tokenizer, save_tokenizer

RESPONSE_LENGTH = 40
EPS = 1e-3
ARCHITECTURE = dict(
    d_model=256, n_heads=4, n_kv_heads=4, n_layers=4, mlp_hidden_size=512,
    max_sequence_length=128, rope_theta=10000.0,
)  # fmt: skip


def model_config(tokenizer) -> dict:
    """The LLaDA ``config.json`` dict of the tiny model for ``tokenizer``'s vocabulary."""
    return dict(
        LLADA_8B,
        **ARCHITECTURE,
        vocab_size=len(tokenizer),
        embedding_size=len(tokenizer),
        mask_token_id=tokenizer.mask_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


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


def sft_loss(model, prompt, prompt_mask, response, mask_id: int, generator) -> torch.Tensor:
    """LLaDA's SFT loss on one batch: masked response tokens' CE / t, per response token."""
    batch, length = response.shape
    t = (1 - EPS) * torch.rand(batch, 1, generator=generator) + EPS
    masked = torch.rand(batch, length, generator=generator) < t
    noisy = torch.where(masked, mask_id, response)
    ids = torch.cat([prompt, noisy], dim=1)
    attention = torch.cat([prompt_mask, torch.ones_like(response)], dim=1)
    logits = model(ids, attention, return_logits=True).logits[:, prompt.shape[1] :]
    ce = F.cross_entropy(logits[masked], response[masked], reduction="none")
    return (ce / t.expand(-1, length)[masked]).sum() / (batch * length)


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
    save_every: int = 0,
    progress: bool = True,
):
    """Builds the corpus and tokenizer, trains, and writes the checkpoint folder ``out``
    (also every ``save_every`` steps when it is positive, so a long run can be inspected)."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(corpus.all_texts(seed))
    examples = corpus.training_examples(steps * batch_size, seed)
    prompts, responses = encode_examples(tokenizer, examples)
    model = build_model(model_config(tokenizer), device="cpu", dtype=torch.float32, seed=seed)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    save_tokenizer(tokenizer, out)
    log_path = out / "train_log.jsonl"
    log_path.write_text("")
    start_time = time.perf_counter()
    bar = tqdm(range(steps), desc="tiny SFT", unit="step", disable=not progress)
    for step in bar:
        rows = slice(step * batch_size, (step + 1) * batch_size)
        prompt, prompt_mask = left_pad(prompts[rows], tokenizer.pad_token_id)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, lr, warmup=min(100, steps // 10 + 1))
        loss = sft_loss(
            model, prompt, prompt_mask, responses[rows], tokenizer.mask_token_id, generator
        )
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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--save-every", type=int, default=0, help="also save every N steps")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (results depend on it)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    train(
        args.out,
        seed=args.seed,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        save_every=args.save_every,
    )


if __name__ == "__main__":
    main()

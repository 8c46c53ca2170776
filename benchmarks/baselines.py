"""Faithful re-implementations of the reference algorithms the benchmarks compare against.

Written from the published semantics (docs/DESIGN.md §6, §10), kept deliberately plain: full-vocabulary
softmax, full-sequence logits, Python loops over rows where the reference has them.
"""

from __future__ import annotations

import torch


def llada_reference_step(logits, mask_index, block_end, num_transfer):
    """One step of LLaDA's generate() at temperature 0 with low-confidence remasking.

    Returns the argmax tokens ``[B, L]`` and the bool commit mask ``[B, L]``. The probability
    of each argmax token comes from a float64 softmax over the whole vocabulary (as the
    published code does when it adds Gumbel noise), and each row picks its top-k with
    ``torch.topk`` in a Python loop.
    """
    x0 = torch.argmax(logits, dim=-1)
    p = torch.softmax(logits.to(torch.float64), dim=-1)
    x0_p = torch.gather(p, dim=-1, index=x0[..., None])[..., 0]
    x0_p[:, block_end:] = float("-inf")
    confidence = torch.where(mask_index, x0_p, float("-inf"))
    transfer = torch.zeros_like(x0, dtype=torch.bool)
    for j in range(confidence.shape[0]):
        _, select_index = torch.topk(confidence[j], k=int(num_transfer[j]))
        transfer[j, select_index] = True
    return x0, transfer


@torch.no_grad()
def llada_reference_generate(model, prompt, *, steps, gen_length, block_length, mask_id):
    """LLaDA's generate() loop at temperature 0: the model's full logits every step."""
    x = torch.full(
        (prompt.shape[0], prompt.shape[1] + gen_length),
        mask_id,
        dtype=torch.long,
        device=prompt.device,
    )
    x[:, : prompt.shape[1]] = prompt
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    for block in range(num_blocks):
        block_end = prompt.shape[1] + (block + 1) * block_length
        block_masked = x[:, block_end - block_length : block_end] == mask_id
        counts = block_masked.sum(dim=1, keepdim=True)
        schedule = (
            torch.zeros(x.shape[0], steps_per_block, dtype=torch.long, device=x.device)
            + counts // steps_per_block
        )
        for row in range(x.shape[0]):
            schedule[row, : int(counts[row] % steps_per_block)] += 1
        for i in range(steps_per_block):
            mask_index = x == mask_id
            logits = model(x, return_logits=True).logits
            x0, transfer = llada_reference_step(logits, mask_index, block_end, schedule[:, i])
            x[transfer] = x0[transfer]
    return x


def _even_counts(block_length: int, steps: int) -> torch.Tensor:
    """LLaDA2.0's commits per step of a block: ``block_length`` split evenly over ``steps``."""
    counts = torch.full((steps,), block_length // steps, dtype=torch.int64)
    counts[: block_length % steps] += 1
    return counts


@torch.no_grad()
def llada2_reference_row(model, prompt, *, steps, gen_length, block_length, threshold,
                         mask_id, eos_id, minimal_topk=1):  # fmt: skip
    """LLaDA2.0's published ``generate`` on one prompt ``[1, P]`` at temperature 0.

    As published: the canvas is whole blocks counted from position 0; block by block from
    the one holding the prompt's end, every step runs the window up to the block's end
    through the model under the block-causal mask, takes an fp32 softmax over the whole
    vocabulary of the block's logits, commits every masked position above ``threshold`` when
    at least the schedule's count are, else that many of the most confident (``torch.topk``),
    with the counts read on the host (``.item()``); it stops after a block whose response
    holds an EOS. Returns ``(sequence [1, P + gen_length], steps run)``, the positions after
    the first EOS written as EOS (where the published code cuts, and what ``block_generate``
    writes there).
    """
    steps = min(steps, gen_length // minimal_topk)
    prompt_length = prompt.shape[1]
    num_blocks = -(-(prompt_length + gen_length) // block_length)
    x = torch.full((1, num_blocks * block_length), mask_id, dtype=torch.long, device=prompt.device)
    x[:, :prompt_length] = prompt
    counts = _even_counts(block_length, steps)
    taken = 0
    for block in range(prompt_length // block_length, num_blocks):
        window = x[:, : (block + 1) * block_length]  # a view: commits land in x
        for step in range(steps):
            masked = window[:, -block_length:] == mask_id
            if masked.sum() == 0:
                break
            logits = model(window, block_length=block_length, return_logits=True).logits
            probs = torch.softmax(logits[:, -block_length:].float(), dim=-1)
            token = probs.argmax(dim=-1)
            confidence = torch.where(masked, probs.gather(-1, token[..., None])[..., 0], -torch.inf)
            wanted = counts[step].item()
            confident = confidence[0] > threshold
            transfer = torch.zeros_like(masked)
            if confident.sum().item() >= wanted:
                transfer[0] = confident
            else:
                top = torch.topk(confidence[0], k=min(wanted, masked.sum().item())).indices
                transfer[0, top] = True
            window[:, -block_length:][transfer] = token[transfer]
            taken += 1
        if (window[0, prompt_length:] == eos_id).any():
            break
    out = x[:, : prompt_length + gen_length]
    response = out[0, prompt_length:]
    eos = (response == eos_id).nonzero()
    if len(eos) > 0:
        response[eos[0].item() + 1 :] = eos_id
    return out, taken


def llada2_reference_generate(model, prompts, **settings):
    """The published ``generate`` over a batch ``[B, P]`` of unpadded prompts: it decodes
    batch 1, so each row runs alone, as a user of the published code must. Returns the
    sequences ``[B, P + gen_length]`` and each row's steps."""
    rows = [llada2_reference_row(model, prompt[None], **settings) for prompt in prompts]
    return torch.cat([out for out, _ in rows]), [taken for _, taken in rows]

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

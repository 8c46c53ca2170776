"""The canvas ``block_generate`` decodes: every row shifted so that its blocks are the canvas's.

A block-diffusion model counts blocks from each sequence's position 0, so a row decodes its
first block at ``p // block_length`` (``p`` its real prompt length), and rows of different
``p`` start in different blocks. Each row is therefore moved right by a multiple of the block
length, ``(first - p // block_length) * block_length`` slots, so that every row's first
decoded block is the canvas block ``first``; the slots left of a row are padding (never
attended to), and its rotary positions count its own tokens (``cumsum(valid) - 1``, the
model's numbering under an attention mask), so each row sees what it would alone
(docs/DESIGN.md §6).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mosa.text.canvas import Canvas


@dataclass
class BlockCanvas:
    """The aligned canvas of one ``block_generate`` call.

    Attributes:
        x: ``int64[B, L]``, ``L`` a multiple of ``block_length``: padding, prompt, masks.
        key_valid: ``bool[B, L]`` (False at each row's leading slots), or None when no row
            is shifted.
        row_start: ``int64[B]``, the slot of each row's first prompt token.
        response_start: ``int64[B]``, the slot of each row's first response position.
        first_block: the canvas block every row decodes first.
        end_blocks: ``int64[B]``, one past each row's last block (its own canvas
            ``ceil((p + gen_length) / block_length)`` blocks, shifted).
        num_blocks: the last block any row decodes, plus one (``L // block_length``).
        block_length, gen_length: as given.
    """

    x: torch.Tensor
    key_valid: torch.Tensor | None
    row_start: torch.Tensor
    response_start: torch.Tensor
    first_block: int
    end_blocks: torch.Tensor
    num_blocks: int
    block_length: int
    gen_length: int

    @classmethod
    def lay_out(cls, prompts: Canvas, block_length: int, mask_id: int, pad_id: int) -> BlockCanvas:
        """The aligned canvas of ``prompts`` (``build_canvas``'s: left-padded prompts, then
        ``gen_length`` masks); reads the prompt lengths on the host once. ``pad_id`` fills
        the slots left of each row, ``mask_id`` those right of its input."""
        x_in, valid_in, width = prompts.x, prompts.attention_mask, prompts.prompt_length
        gen_length = x_in.shape[1] - width
        batch, device = x_in.shape[0], x_in.device
        if valid_in is None:
            lengths = torch.full((batch,), width, dtype=torch.long, device=device)
        else:
            valid = valid_in[:, :width]
            if bool((valid[:, 1:] < valid[:, :-1]).any()):
                raise ValueError(
                    "attention_mask must be left padding (each row's zeros before its ones): "
                    "block_generate moves every row to its own block alignment from its first "
                    "real token; pad prompts on the left (tokenizer.padding_side = 'left')"
                )
            lengths = valid.sum(dim=1)
        lengths_host = lengths.tolist()
        first_blocks = [p // block_length for p in lengths_host]
        first = max(first_blocks)
        shifts = [(first - b) * block_length for b in first_blocks]
        ends = [
            (s + p + gen_length + block_length - 1) // block_length
            for s, p in zip(shifts, lengths_host, strict=True)
        ]
        num_blocks = max(ends)
        length = num_blocks * block_length

        row_start = torch.tensor(shifts, dtype=torch.long, device=device)
        slots = torch.arange(length, device=device)[None]
        # Row b's slot j holds its token j - row_start[b]: in the input, column
        # (width - p_b) + (j - row_start[b]), the prompt and then the response's masks.
        source = slots - row_start[:, None] + (width - lengths)[:, None]
        inside = (slots >= row_start[:, None]) & (source < x_in.shape[1])
        x = torch.where(
            inside,
            x_in.gather(1, source.clamp(0, x_in.shape[1] - 1)),
            torch.where(slots >= row_start[:, None], mask_id, pad_id),
        )
        key_valid = None
        if any(shifts):
            key_valid = slots >= row_start[:, None]
        return cls(
            x=x,
            key_valid=key_valid,
            row_start=row_start,
            response_start=row_start + lengths,
            first_block=first,
            end_blocks=torch.tensor(ends, dtype=torch.long, device=device),
            num_blocks=num_blocks,
            block_length=block_length,
            gen_length=gen_length,
        )

    @property
    def response_slots(self) -> torch.Tensor:
        """``int64[B, G]``: the canvas slot of each row's response position."""
        offsets = torch.arange(self.gen_length, device=self.x.device)[None]
        return self.response_start[:, None] + offsets

    def responses(self, values: torch.Tensor) -> torch.Tensor:
        """``values [B, L]`` (the canvas, its trace) at each row's response, ``[B, G]``."""
        return values.gather(1, self.response_slots)

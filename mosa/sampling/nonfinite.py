"""Rows whose logits are NaN or inf inside a sampler's steps, found without a host read.

``sample_tokens(..., nonfinite='mark')`` gives such a row token -1 (docs/DESIGN.md §4.2). A
step must not read the host (a CUDA graph's cannot), so it keeps those positions masked and
sets the row's flag; the sampler reads the flags where it reads the host anyway (at the end of
a block) and raises before an invalid id reaches the canvas or the caller.
"""

from __future__ import annotations

import torch


def keep_masked_where_nonfinite(
    token: torch.Tensor, is_masked: torch.Tensor, flags: torch.Tensor, mask_id: int
) -> torch.Tensor:
    """``token [B, W]`` with the masked positions that have no token (-1) set to ``mask_id``,
    so committing them changes nothing; ORs each row's "has one" into ``flags [B]``."""
    invalid = (token < 0) & is_masked
    flags |= invalid.any(dim=1)
    return torch.where(invalid, mask_id, token)


def raise_on_nonfinite(flags: torch.Tensor, rows: torch.Tensor | None = None) -> None:
    """A ValueError naming the batch rows (``rows[i]`` for flag ``i``) whose logits were not
    finite; reads ``flags`` on the host once."""
    if not bool(flags.any()):
        return
    bad = flags.nonzero()[:, 0]
    named = (bad if rows is None else rows[bad]).tolist()
    raise ValueError(
        f"the model gave NaN or infinite logits for batch rows {named}, so no token can be "
        "chosen there; check the model's weights and inputs for NaN/inf (e.g. "
        "torch.isfinite(p).all() for each parameter)"
    )

"""Runs a model for a window of positions and hands ``sample_tokens`` what it needs.

Two kinds of model: the package's own (``mosa.models.DiffusionLM``: hidden states of the
window only, the LM head applied inside the fused op, optional K/V caching), and any
Hugging Face-style model whose forward returns ``.logits`` (full logits, no cache).
"""

from __future__ import annotations

import torch

from mosa.models import DiffusionLM

CACHE_MODES = (None, "prefix", "dual")


def model_token_id(model, name: str, default: int | None) -> int | None:
    """``model.config.<name>`` (the first id when it is a list), else ``default``."""
    config = getattr(model, "config", None)
    value = getattr(config, name, None)
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    return default if value is None else int(value)


class Predictor:
    """Gives, for positions ``[start, end)``, the rows to sample from.

    ``rows(...)`` returns ``(rows, rows_uncond)``: hidden states ``[B, W, d]`` for the fused
    head (``weight``) or logits ``[B, W, V]``; ``rows_uncond`` is the classifier-free-guidance
    half (prompt masked) or None.

    Caching (package models only), as in Fast-dLLM: a ``refresh`` call runs the whole sequence
    and stores every layer's keys/values; later calls run a slice against them: ``'prefix'``
    the window and everything right of it, ``'dual'`` the window alone.
    """

    def __init__(
        self, model, *, mask_id: int, cfg_scale: float, cache: str | None, shift_logits: bool
    ):
        if cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {CACHE_MODES}, got {cache!r}")
        self.model = model
        self.fused = isinstance(model, DiffusionLM)
        if cache is not None and not self.fused:
            raise ValueError(
                f"cache={cache!r} needs a mosa model (mosa.load_model); {type(model).__name__} "
                "is run on the full sequence every step — pass cache=None"
            )
        self.shift = model.logits_shift if self.fused else int(shift_logits)
        self.weight = model.lm_head_weight if self.fused else None
        self.bias = model.lm_head_bias if self.fused else None
        self.mask_id = mask_id
        self.cfg = cfg_scale > 0
        self.cache_mode = cache
        self._cache = None

    def _inputs(self, x, attention_mask, given):
        if not self.cfg:
            return x, attention_mask
        # As LLaDA's reference: the unconditional copy masks every position that was not a
        # mask at the start (the prompt, and fixed response tokens).
        uncond = x.masked_fill(given, self.mask_id)
        both_masks = None if attention_mask is None else torch.cat([attention_mask, attention_mask])
        return torch.cat([x, uncond]), both_masks

    def _run_full(self, x_in, attention_mask):
        if self.fused:
            out = self.model(x_in, attention_mask, return_cache=self.cache_mode is not None)
            self._cache = out.cache
            return out.hidden_states
        out = self.model(x_in, attention_mask=attention_mask)
        logits = out.logits if hasattr(out, "logits") else out[0]
        return logits

    def cached_span(self, start: int, end: int, length: int) -> tuple[int, int]:
        """The positions ``[first, stop)`` a cached call for ``[start, end)`` runs; ``length``
        is the sequence's (without a cache every call runs all of it)."""
        if self.cache_mode is None:
            return 0, length
        first = max(start - self.shift, 0)
        return first, length if self.cache_mode == "prefix" else end

    def vocab_size(self, rows: torch.Tensor) -> int:
        """Width of the distributions ``rows`` (as ``rows(...)`` returned them) stand for."""
        return self.weight.shape[0] if self.fused else rows.shape[-1]

    def rows(self, x, attention_mask, given, start, end, refresh):
        """Rows for positions ``[start, end)`` of ``x``; ``given`` is ``x != mask_id`` at the
        start of sampling (what classifier-free guidance hides); ``refresh`` reruns the whole
        sequence (and refills the cache)."""
        x_in, mask_in = self._inputs(x, attention_mask, given)
        # Position p is predicted by row p - shift (Dream); position 0 keeps its own row.
        sources = (torch.arange(start, end, device=x.device) - self.shift).clamp(min=0)
        if self.cache_mode is None or refresh:
            full = self._run_full(x_in, mask_in)
            picked = full[:, sources]
        else:
            first, stop = self.cached_span(start, end, x.shape[1])
            out = self.model(x_in[:, first:stop], cache=self._cache, start=first)
            picked = out.hidden_states[:, sources - first]
        if not self.cfg:
            return picked, None
        cond, uncond = picked.chunk(2)
        return cond, uncond

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
        if not self.fused:
            out = self.model(x_in, attention_mask=attention_mask)
            return out.logits if hasattr(out, "logits") else out[0]
        if self.cache_mode is None:
            return self.model(x_in, attention_mask).hidden_states
        if self._cache is None:
            out = self.model(x_in, attention_mask, return_cache=True)
            self._cache = out.cache
            return out.hidden_states
        # Refilled in place, so a step captured as a CUDA graph keeps reading the same slots.
        return self.model(x_in, cache=self._cache, start=0).hidden_states

    @property
    def kv_cache(self):
        """The ``KVCache`` the refreshes fill (None before the first, or without a cache)."""
        return self._cache

    def share_cache(self, cache) -> None:
        """Fills ``cache`` (another predictor's, of this batch's shape) instead of making one:
        the first refresh then refills it in place as every later one does."""
        self._cache = cache

    def reuse(self, attention_mask: torch.Tensor | None) -> None:
        """Readies the cache for a new batch of the same shape: its padding (and the rotary
        positions that follow from it) are copied in place; keys and values are refilled by
        the next refresh."""
        if self._cache is None or attention_mask is None:
            return
        key_valid = attention_mask if not self.cfg else torch.cat([attention_mask] * 2)
        self._cache.key_valid.copy_(key_valid)
        positions = self.model.rotary_positions(key_valid, key_valid.shape[1])
        self._cache.position_ids.copy_(positions)

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

    def rows(self, x, attention_mask, given, start, width, refresh, run_length=None):
        """Rows for positions ``[start, start + width)`` of ``x``; ``given`` is ``x != mask_id``
        at the start of sampling (what classifier-free guidance hides); ``refresh`` reruns the
        whole sequence (and refills the cache).

        ``start`` is an int, or a 0-d device tensor (a step replayed as a CUDA graph reads
        where its window is); then a cached call needs ``run_length``, the number of positions
        it runs (``stop - first`` of ``cached_span``), which the host knows.
        """
        x_in, mask_in = self._inputs(x, attention_mask, given)
        positions = window_positions(start, width, x.device)
        # Position p is predicted by row p - shift (Dream); position 0 keeps its own row.
        sources = (positions - self.shift).clamp(min=0)
        if self.cache_mode is None or refresh:
            picked = self._run_full(x_in, mask_in).index_select(1, sources)
        else:
            if isinstance(start, torch.Tensor):
                first = (start - self.shift).clamp(min=0)
            else:
                first, stop = self.cached_span(start, start + width, x.shape[1])
                run_length = stop - first
            slots = window_positions(first, run_length, x.device)
            out = self.model(x_in.index_select(1, slots), cache=self._cache, start=first)
            picked = out.hidden_states.index_select(1, sources - first)
        if not self.cfg:
            return picked, None
        cond, uncond = picked.chunk(2)
        return cond, uncond


def window_positions(start: int | torch.Tensor, width: int, device) -> torch.Tensor:
    """``int64[width]``: ``start, start + 1, ...``, with ``start`` an int or a 0-d tensor."""
    if isinstance(start, torch.Tensor):
        return start + torch.arange(width, device=device)
    return torch.arange(start, start + width, device=device)

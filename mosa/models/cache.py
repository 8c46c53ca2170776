"""The key/value cache the sampler uses for prefix and dual caching (DESIGN §6).

One ``KVCache`` holds, for every layer, the keys (after RoPE) and values of a whole sequence,
plus what the sequence's later slices need: which keys are valid (padding) and the rotary
position of every slot. The model fills it from a full forward pass
(``model(x, attention_mask, return_cache=True)``) and then runs slices of the sequence as
queries against it (``model(x[:, s:e], cache=cache, start=s)``): the slice's fresh keys and
values overwrite slots ``[s, e)`` and the slice attends to slots ``[0, cache.length)``.

- Dual cache: run the current block ``[s, e)``; the prefix and the suffix come from the cache.
- Prefix cache (Fast-dLLM): run ``[s, L)``, the block and everything right of it; only the
  prefix ``[0, s)`` comes from the cache.
- Prefix only, no suffix: ``cache.truncate(s)`` first, then run the block ``[s, e)``; it
  attends to the prefix and to itself.

The cache is written in place and is meant for inference (``torch.no_grad()``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class KVCache:
    """Per-layer keys and values of one batch of sequences.

    Attributes:
        keys, values: one ``[B, capacity, Hkv, D]`` tensor per layer (keys after RoPE).
        key_valid: ``bool[B, capacity]``, False at padding; None when nothing is padded.
        position_ids: ``int64[1 or B, capacity]``, the rotary position of every slot.
        length: slots ``[0, length)`` hold keys and values and are attended to.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    key_valid: torch.Tensor | None
    position_ids: torch.Tensor
    length: int

    @classmethod
    def allocate(
        cls,
        num_layers: int,
        shape: tuple[int, int, int, int],
        dtype: torch.dtype,
        key_valid: torch.Tensor | None,
        position_ids: torch.Tensor,
    ) -> KVCache:
        """An empty cache (``length`` 0) of ``num_layers`` layers of ``[B, L, Hkv, D]`` slots."""
        device = position_ids.device
        return cls(
            keys=[torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)],
            values=[torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)],
            key_valid=key_valid,
            position_ids=position_ids,
            length=0,
        )

    @property
    def capacity(self) -> int:
        return self.position_ids.shape[1]

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    def truncate(self, length: int) -> None:
        """Attends to slots ``[0, length)`` only from now on; the capacity stays."""
        if not 0 <= length <= self.capacity:
            raise ValueError(f"truncate length must lie in [0, {self.capacity}], got {length}")
        self.length = length

    def store(
        self, layer: int, start: int | torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Writes one layer's fresh slice at ``start`` and returns its keys/values ``[0, length)``.

        ``start`` may also be the slice's slots as an ``int64[L]`` device tensor, so a step
        replayed as a CUDA graph can move along the sequence."""
        if isinstance(start, torch.Tensor):
            self.keys[layer].index_copy_(1, start, keys)
            self.values[layer].index_copy_(1, start, values)
        else:
            end = start + keys.shape[1]
            self.keys[layer][:, start:end] = keys
            self.values[layer][:, start:end] = values
        return self.keys[layer][:, : self.length], self.values[layer][:, : self.length]

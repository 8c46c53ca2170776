"""``block_generate``'s options, checked, with the values that follow from them."""

from __future__ import annotations

from dataclasses import dataclass

from mosa_kernels.ops._checks import check_nonnegative, check_positive_int

from .arguments import check_mask_id
from .predictor import model_token_id

# The published LLaDA2.x checkpoints' ids, the published ``generate``'s defaults.
LLADA2_MASK_ID = 156895
LLADA2_EOS_ID = 156892
BLOCK_CACHE_MODES = (None, "prefix")


def _check_threshold(name: str, value) -> None:
    """A confidence bound compared with ``>``: any number >= 0; above 1 it never passes."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not value >= 0:  # NaN fails too
        raise ValueError(
            f"{name} must be >= 0 (a confidence is compared with it; above 1 nothing passes), "
            f"got {value!r}"
        )


def _check_eos_id(model, eos_id) -> None:
    if isinstance(eos_id, bool) or not isinstance(eos_id, int):
        raise TypeError(f"eos_id must be an int token id, got {eos_id!r}")
    vocabulary = getattr(model, "vocab_size", None)
    if eos_id < 0 or (vocabulary is not None and eos_id >= vocabulary):
        raise ValueError(
            f"eos_id={eos_id} is outside the model's vocabulary [0, {vocabulary}); leave it "
            "unset to use the model's eos_token_id, or give the tokenizer's EOS id"
        )


@dataclass(frozen=True)
class BlockSettings:
    """What one ``block_generate`` call decodes with (docs/DESIGN.md §6).

    ``steps`` is the published effective count, ``min(steps, gen_length // minimal_topk)``;
    ``editing_threshold`` None is LLaDA2.0's decoding, a number LLaDA2.1's.
    """

    mask_id: int
    eos_id: int
    gen_length: int
    block_length: int
    steps: int
    temperature: float
    top_p: float | None
    top_k: int | None
    threshold: float
    editing_threshold: float | None
    max_post_steps: int
    num_to_transfer: int
    eos_early_stop: bool
    stop_at_eos: bool
    cache: str | None

    @classmethod
    def check(cls, model, *, minimal_topk, mask_id, eos_id, **options) -> BlockSettings:
        """Raises a TypeError / ValueError naming the bad option and the fix."""
        mask_id = (
            model_token_id(model, "mask_token_id", LLADA2_MASK_ID) if mask_id is None else mask_id
        )
        eos_id = model_token_id(model, "eos_token_id", LLADA2_EOS_ID) if eos_id is None else eos_id
        check_mask_id(model, mask_id)
        _check_eos_id(model, eos_id)
        if eos_id == mask_id:
            raise ValueError(f"eos_id and mask_id are both {mask_id}; give the tokenizer's ids")
        for name in ("gen_length", "block_length", "steps", "num_to_transfer"):
            check_positive_int(name, options[name])
        check_positive_int("minimal_topk", minimal_topk)
        max_post_steps = options["max_post_steps"]
        if isinstance(max_post_steps, bool) or not isinstance(max_post_steps, int):
            raise TypeError(f"max_post_steps must be an int >= 0, got {max_post_steps!r}")
        if max_post_steps < 0:
            raise ValueError(f"max_post_steps must be an int >= 0, got {max_post_steps!r}")
        steps = min(options.pop("steps"), options["gen_length"] // minimal_topk)
        if steps < 1:
            raise ValueError(
                f"minimal_topk ({minimal_topk}) exceeds gen_length ({options['gen_length']}), "
                "which leaves no denoising step (steps = min(steps, gen_length // "
                "minimal_topk)); use a smaller minimal_topk"
            )
        check_nonnegative("temperature", options["temperature"])
        _check_threshold("threshold", options["threshold"])
        if options["editing_threshold"] is not None:
            _check_threshold("editing_threshold", options["editing_threshold"])
        top_p, top_k = options["top_p"], options["top_k"]
        if top_p is not None and (
            isinstance(top_p, bool) or not isinstance(top_p, int | float) or not 0 < top_p <= 1
        ):
            raise ValueError(f"top_p must lie in (0, 1], got {top_p!r}")
        if top_k is not None:
            check_positive_int("top_k", top_k, expected="a positive int or None")
        if options["cache"] not in BLOCK_CACHE_MODES:
            raise ValueError(
                f"cache must be 'prefix' (exact for block-causal attention) or None, got "
                f"{options['cache']!r}; a block never attends to later blocks, so there is no "
                "suffix to cache ('dual')"
            )
        for name in ("eos_early_stop", "stop_at_eos"):
            if not isinstance(options[name], bool):
                raise TypeError(f"{name} must be True or False, got {options[name]!r}")
        if options["eos_early_stop"] and not options["stop_at_eos"]:
            raise ValueError(
                "eos_early_stop=True stops a row at its first EOS, which stop_at_eos=False "
                "asks not to do; pass stop_at_eos=True (the default) or eos_early_stop=False"
            )
        return cls(mask_id=mask_id, eos_id=eos_id, steps=steps, **options)

    @property
    def editing(self) -> bool:
        """LLaDA2.1's loop (token editing) rather than LLaDA2.0's schedule."""
        return self.editing_threshold is not None

    @property
    def filtered(self) -> bool:
        """Whether a step filters the logits (top-k / top-p, only at temperature > 0)."""
        if self.temperature == 0:
            return False
        return self.top_k is not None or (self.top_p is not None and self.top_p < 1)

    @property
    def max_block_steps(self) -> int:
        """The most steps a block runs: ``steps`` (LLaDA2.0), or for LLaDA2.1's loop a bound
        that only a model predicting the mask token itself reaches (each step with masks
        left commits at least one other token, then at most ``max_post_steps + 1`` follow)."""
        if not self.editing:
            return self.steps
        return 4 * (self.block_length + self.max_post_steps + 1)

    @property
    def graph_key(self) -> tuple:
        """Everything a captured step freezes besides its shapes."""
        return (self.mask_id, self.eos_id, self.block_length, self.steps, self.threshold,
                self.editing_threshold, self.max_post_steps, self.num_to_transfer,
                self.eos_early_stop, self.cache)  # fmt: skip

"""What the generative judges share: a causal LM loaded from a local folder (offline, never
remote code), batches with a progress bar, the verdict cache, and next-token logits of
left-padded batches."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from .base import Judge, Verdict, VerdictCache, judge_pairs


def check_model_folder(path: str | os.PathLike, judge: str, model_types, expected: str) -> Path:
    """``path`` as a ``Path`` once it is a model folder whose ``config.json`` names one of
    ``model_types``; a ValueError naming ``judge`` and ``expected`` otherwise. Reads only
    the config, so a wrong folder is refused before any weights are loaded."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{judge}: {path} is not a folder; give the local folder of {expected}")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{judge}: cannot read {path / 'config.json'} ({err}); give the local folder of "
            f"{expected}"
        ) from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in model_types:
        raise ValueError(
            f"{judge}: {path} holds a {model_type!r} model, not {' or '.join(model_types)}; "
            f"give the local folder of {expected}"
        )
    return path


def load_causal_lm(path: Path, device=None, dtype=None, adapter: Path | None = None):
    """``(model, tokenizer)`` from a local folder: bf16 on a GPU (fp32 on the CPU) unless
    ``dtype`` says otherwise, in eval mode, with ``adapter`` (a peft LoRA folder) merged in;
    the tokenizer pads on the left, so every row's last token is its prompt's last."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mosa.models.files import require_safetensors

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    offline = {"local_files_only": True, "trust_remote_code": False}
    # An adapter folder usually ships the tokenizer it was trained with; else the base's.
    has_own = adapter is not None and (adapter / "tokenizer_config.json").is_file()
    source = adapter if has_own else path
    tokenizer = AutoTokenizer.from_pretrained(str(source), padding_side="left", **offline)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    # Safetensors only: a folder's pickles are never opened (README "Security").
    require_safetensors(path, ("model.safetensors", "model.safetensors.index.json"))
    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=dtype, use_safetensors=True, **offline
    )
    if adapter is not None:
        from peft import PeftModel

        require_safetensors(adapter, ("adapter_model.safetensors",))
        model = PeftModel.from_pretrained(model, str(adapter), local_files_only=True)
        model = model.merge_and_unload()
    return model.to(device).eval(), tokenizer


def next_token_logits(model, tokenizer, texts: Sequence[str], *, add_special_tokens=True):
    """``float32[len(texts), vocab]``: the logits of each text's next token. Positions are
    counted from each row's first real token (as ``generate`` does), so a left-padded row
    sees the same rotary positions as it would alone."""
    import torch

    encoded = tokenizer(
        list(texts), padding=True, return_tensors="pt", add_special_tokens=add_special_tokens
    ).to(model.device)
    positions = (encoded["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(
            input_ids=encoded["input_ids"],
            attention_mask=encoded["attention_mask"],
            position_ids=positions,
            logits_to_keep=1,
        )
    return out.logits[:, -1].float()


def single_token_id(tokenizer, text: str, judge: str) -> int:
    """The id of ``text`` when the tokenizer writes it as one token (e.g. "Yes", "3")."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(
            f"{judge}: the tokenizer writes {text!r} as {len(ids)} tokens, not one; is this "
            "the judge's own tokenizer?"
        )
    return ids[0]


def clip_tokens(tokenizer, text: str, max_tokens: int, *, keep: str) -> str:
    """``text`` cut to ``max_tokens`` of the judge's tokens: the first ones (``keep="start"``)
    or the last ones (``"end"``); unchanged when it fits."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) <= max_tokens:
        return text
    ids = ids[:max_tokens] if keep == "start" else ids[-max_tokens:]
    return tokenizer.decode(ids, skip_special_tokens=True)


class LocalModelJudge(Judge):
    """Base of the judges that run a local model: ``judge_many`` takes cached verdicts from
    the cache, judges the rest ``batch_size`` at a time (``_judge_batch``) with a progress
    bar, and stores what it judged. A batch that fails (e.g. out of memory) gives error
    verdicts for its items."""

    name = "local"

    def __init__(self, identity: Sequence[str], batch_size: int, cache_path):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.batch_size = batch_size
        self._cache = VerdictCache(cache_path, [self.name, *identity])

    def judge(self, prompt: str, response: str) -> Verdict:
        """The judge's verdict on one pair."""
        return self.judge_many([prompt], [response], progress=False)[0]

    def judge_many(
        self, prompts: Sequence[str], responses: Sequence[str], *, progress: bool = True
    ) -> list[Verdict]:
        """Verdicts in order, ``batch_size`` pairs per forward pass, with a progress bar."""
        return self._judge_items(judge_pairs(prompts, responses), progress)

    def _judge_items(self, items: list[tuple[str, ...]], progress: bool) -> list[Verdict]:
        keys = [self._cache.key(*item) for item in items]
        verdicts = [self._cache.get(key) for key in keys]
        todo = [i for i, verdict in enumerate(verdicts) if verdict is None]
        starts = range(0, len(todo), self.batch_size)
        for start in tqdm(starts, desc=f"judging ({self.name})", disable=not progress):
            chunk = todo[start : start + self.batch_size]
            try:
                judged = self._judge_batch([items[i] for i in chunk])
            except RuntimeError as err:  # torch's errors (out of memory, device) for one batch
                judged = [Verdict.failed(f"{type(err).__name__}: {err}")] * len(chunk)
            for i, verdict in zip(chunk, judged, strict=True):
                self._cache.put(keys[i], verdict)
                verdicts[i] = verdict
        return verdicts

    def _judge_batch(self, items: list[tuple[str, ...]]) -> list[Verdict]:
        raise NotImplementedError

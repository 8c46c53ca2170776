"""``MosaLM``: the ``mosa`` model type of lm-evaluation-harness.

``generate_until`` runs the model family's sampler (``mosa.generate`` for LLaDA,
``mosa.diffusion_generate`` for Dream; batched, greedy unless ``temperature`` is set) and
cuts each response at the request's stop sequences and at EOS; ``loglikelihood`` is the
Monte-Carlo masked estimate of ``mosa.lm_eval.likelihood``. Prompts are tokenized without
added special tokens (as lm-eval's ``hf`` model does by default): a chat template, when asked
for with ``--apply_chat_template``, supplies them.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm.auto import tqdm

from mosa.models import family_of, load_model
from mosa.models.files import require_safetensors
from mosa.sampling.llada import REMASKING
from mosa.sampling.predictor import CACHE_MODES
from mosa.sampling.settings import LLADA_EVALUATION
from mosa.text.prompts import encode_prompts, load_tokenizer
from mosa_kernels.ops._checks import check_positive_int

from .likelihood import masked_loglikelihood

logger = logging.getLogger(__name__)


def _positive_int(name: str, value) -> int:
    return check_positive_int(f"mosa lm-eval model: {name}", value, expected="a positive integer")


def _available(device: str | None) -> str | None:
    """``device``, except that CUDA falls back to the CPU where there is none: lm-eval's
    command line asks for ``cuda:0`` unless ``--device`` says otherwise."""
    if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("mosa lm-eval model: %s is not available; running on the CPU", device)
        return "cpu"
    return device


@register_model("mosa")
class MosaLM(LM):
    """A LLaDA or Dream checkpoint (optionally with a peft adapter) under mosa's sampler.

    ``python -m mosa.lm_eval --model mosa --model_args pretrained=PATH,gen_length=...`` (or
    ``lm_eval`` itself where it loads plugins) builds it from these arguments:

    Args:
        pretrained: checkpoint folder (``mosa.tiny.path()`` for the embedded tiny model).
        adapter: optional peft adapter folder, merged into the weights for evaluation.
        gen_length, block_length, steps, cache, threshold, factor, remasking, cfg_scale,
            temperature: ``mosa.generate``'s settings for ``generate_until``, by default
            ``mosa.sampling.LLADA_EVALUATION``'s (``steps`` defaults to ``gen_length``). The canvas is ``gen_length`` tokens whatever a task's
            ``max_gen_toks`` says. A Dream model takes those its sampler has
            (``ModelFamily.sampler_options``: gen_length, steps, temperature) and decodes in
            its family's evaluation order (``eval_defaults``).
        mc_num, mc_batch_size: Monte-Carlo samples per ``loglikelihood`` request and how many
            run in one forward pass (LLaDA's evaluation: 128 and 32).
        batch_size: prompts per ``generate`` call (lm-eval's ``--batch_size``; not "auto").
        max_batch_size: lm-eval's cap for automatic batch sizes; accepted and unused.
        dtype, device: as ``mosa.load_model`` takes them.
        seed: seeds the masks of ``loglikelihood`` and any sampling noise.
    """

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        """lm-eval's constructor from a ``--model_args`` string (see ``_refuse_unknown``)."""
        from lm_eval.utils import simple_parse_args_string

        cls._refuse_unknown(simple_parse_args_string(arg_string))
        return super().create_from_arg_string(arg_string, additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
        """lm-eval's constructor from parsed ``--model_args`` (see ``_refuse_unknown``)."""
        cls._refuse_unknown(arg_dict)
        return super().create_from_arg_obj(arg_dict, additional_config)

    @classmethod
    def _refuse_unknown(cls, model_args) -> None:
        """A ``--model_args`` key ``__init__`` does not take is named with the keys it does,
        instead of Python's "unexpected keyword argument"."""
        known = [name for name in inspect.signature(cls.__init__).parameters if name != "self"]
        unknown = sorted(set(model_args) - set(known))
        if unknown:
            raise ValueError(
                f"mosa lm-eval model: unknown model_args key {', '.join(map(repr, unknown))}; "
                f"the keys are {', '.join(known)}"
            )

    def __init__(
        self,
        pretrained: str | None = None,
        adapter: str | None = None,
        gen_length: int = LLADA_EVALUATION.gen_length,
        block_length: int = LLADA_EVALUATION.block_length,
        steps: int | None = None,
        cache: str | None = None,
        threshold: float | None = None,
        factor: float | None = None,
        remasking: str = LLADA_EVALUATION.remasking,
        cfg_scale: float = LLADA_EVALUATION.cfg_scale,
        temperature: float = LLADA_EVALUATION.temperature,
        mc_num: int = 128,
        mc_batch_size: int = 32,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        dtype: str | None = None,
        device: str | None = None,
        seed: int = 1234,
    ):
        super().__init__()
        if pretrained is None or not (Path(str(pretrained)) / "config.json").is_file():
            raise ValueError(
                f"mosa lm-eval model: pretrained={pretrained!r} is not a checkpoint folder; "
                "pass pretrained=PATH (mosa.tiny.path() for the tiny model)"
            )
        if adapter is not None and not (Path(str(adapter)) / "adapter_config.json").is_file():
            raise ValueError(
                f"mosa lm-eval model: adapter={adapter!r} is not a peft adapter folder"
            )
        if isinstance(batch_size, str) and batch_size.isdigit():
            batch_size = int(batch_size)  # lm-eval's --batch_size arrives as text ("auto" too)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.mc_num = _positive_int("mc_num", mc_num)
        self.mc_batch_size = _positive_int("mc_batch_size", mc_batch_size)
        if self.mc_num % self.mc_batch_size:
            raise ValueError(
                f"mosa lm-eval model: mc_num ({mc_num}) must be a multiple of "
                f"mc_batch_size ({mc_batch_size})"
            )
        if cache not in CACHE_MODES or remasking not in REMASKING:
            raise ValueError(
                f"mosa lm-eval model: cache must be one of {CACHE_MODES} and remasking one of "
                f"{REMASKING}; got cache={cache!r}, remasking={remasking!r}"
            )
        self.settings = {
            "gen_length": _positive_int("gen_length", gen_length),
            "block_length": _positive_int("block_length", block_length),
            "steps": _positive_int("steps", gen_length if steps is None else steps),
            "cache": cache,
            "threshold": threshold,
            "factor": factor,
            "remasking": remasking,
            "cfg_scale": cfg_scale,
            "temperature": temperature,
        }
        model = load_model(pretrained, dtype=dtype, device=_available(device))
        if adapter is not None:
            from peft import PeftModel

            # Safetensors only, from the folder alone (README "Security").
            require_safetensors(Path(adapter), ("adapter_model.safetensors",))
            model = PeftModel.from_pretrained(model, str(adapter), local_files_only=True)
            model = model.merge_and_unload()
        self.model = model.eval()
        self.family = family_of(self.model)
        self.tokenizer = load_tokenizer(pretrained)
        self.seed = seed
        self._device = self.model.device

    # -- lm-eval's interface ------------------------------------------------------------------

    @property
    def tokenizer_name(self) -> str:
        return str(self.tokenizer.name_or_path).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return self.tokenizer.chat_template if chat_template else ""

    def apply_chat_template(self, chat_history, add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(
            chat_history, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Responses to ``(context, {"until": ...})`` requests, batched ``batch_size`` at a time."""
        generator = torch.Generator().manual_seed(self.seed)
        out = []
        starts = range(0, len(requests), self.batch_size)
        for start in tqdm(starts, desc="mosa generate", disable=disable_tqdm):
            chunk = [request.args for request in requests[start : start + self.batch_size]]
            ids, mask = encode_prompts(
                self.tokenizer, [context for context, _ in chunk], chat_template=False,
                device=self.model.device,
            )  # fmt: skip
            sequences = self.family.sample(
                self.model, ids, mask, generator=generator, **self._sampler_settings()
            )
            for row, (context, options) in zip(sequences[:, ids.shape[1] :], chunk, strict=True):
                text = self._cut(row, options.get("until"))
                self.cache_hook.add_partial("generate_until", (context, options), text)
                out.append(text)
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """``(log p(continuation | context), False)`` per request: the masked Monte-Carlo
        estimate (whether the continuation is the greedy one is not computed, as in LLaDA's
        evaluation)."""
        generator = torch.Generator().manual_seed(self.seed)
        out = []
        for request in tqdm(requests, desc="mosa loglikelihood", disable=disable_tqdm):
            prefix, target = self._encode_pair(*request.args)
            logprob = masked_loglikelihood(
                self.model, prefix, target, mask_id=self.model.mask_token_id,
                mc_num=self.mc_num, batch_size=self.mc_batch_size, generator=generator,
            )  # fmt: skip
            self.cache_hook.add_partial("loglikelihood", request.args, (logprob, False))
            out.append((logprob, False))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        raise NotImplementedError(
            "the mosa model type scores continuations (loglikelihood) and generates "
            "(generate_until); rolling perplexity tasks are not supported"
        )

    # -- helpers ------------------------------------------------------------------------------

    def _sampler_settings(self) -> dict:
        """``settings`` that the family's sampler takes, over its evaluation defaults; unset
        ones (None: no cache, no threshold, ...) keep the sampler's own defaults, which for
        LLaDA2's ``block_generate`` are a threshold of 0.95 and the exact prefix cache."""
        taken = {
            k: v
            for k, v in self.settings.items()
            if k in self.family.sampler_options and v is not None
        }
        return {**self.family.eval_defaults, **taken}

    def _tokens(self, text: str) -> torch.Tensor:
        return torch.tensor(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _encode_pair(self, context: str, continuation: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Context and continuation ids, split where the context's own encoding ends; trailing
        spaces of the context move to the continuation (as lm-eval and LLaDA's evaluation do)."""
        kept = context.rstrip()
        continuation = context[len(kept) :] + continuation
        whole = self._tokens(kept + continuation)
        prefix = self._tokens(kept)
        return prefix, whole[len(prefix) :]

    def _cut(self, response: torch.Tensor, until) -> str:
        """The decoded response up to its first stop sequence or EOS, special tokens dropped."""
        text = self.tokenizer.decode(response, skip_special_tokens=False)
        stops = [until] if isinstance(until, str) else list(until or [])
        if self.tokenizer.eos_token:
            stops.append(self.tokenizer.eos_token)
        for stop in stops:
            text = text.split(stop)[0] if stop else text
        kept = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.tokenizer.decode(kept, skip_special_tokens=True)

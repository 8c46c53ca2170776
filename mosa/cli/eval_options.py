"""Flags and builders that ``mosa eval`` and ``mosa analyze`` share: the model (with an
optional adapter), the sampler settings, the prompt sets and the judge.

Without a model folder the embedded tiny model is used, and a checkpoint with the tiny
model's vocabulary (e.g. a MOSA-aligned copy) gets the tiny model's defaults too: its
40-token canvas, its held-out prompt sets and its own judge.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from .common import TRUNCATE_HELP

SHARED_FILES = {
    "advbench": "advbench_harmful_behaviors.csv",
    "harmbench": "harmbench_behaviors_text_all.csv",
    "xstest": "xstest_prompts.csv",
    "gsm8k": "gsm8k_test.jsonl",
    "alpaca": "alpaca_335.jsonl",
}
TINY_SETS = {"tiny-harmful": "harmful", "tiny-benign": "benign", "tiny-risky": "risky"}
JUDGES = ("keyword", "http", "classifier", "tiny", "harmbench", "llamaguard", "strongreject")
MODEL_JUDGES = ("harmbench", "llamaguard", "strongreject")  # KIND:PATH, the path required
FOLDER_JUDGES = {*MODEL_JUDGES, "classifier"}  # KIND:PATH allowed


@dataclass
class PromptSet:
    """Prompts and what they measure: ``harmful`` (ASR per attack), ``utility`` (exact match
    against ``answers``) or ``over_refusal`` (benign prompts refused)."""

    name: str
    kind: str
    prompts: list[str]
    answers: list[str] = field(default_factory=list)

    def limited(self, limit: int | None) -> PromptSet:
        """The first ``limit`` prompts (all when None)."""
        if limit is None:
            return self
        return PromptSet(self.name, self.kind, self.prompts[:limit], self.answers[:limit])


# -- model -----------------------------------------------------------------------------------


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model", nargs="?", help="checkpoint folder (with tokenizer); default: the tiny model"
    )
    p.add_argument("--adapter", help="a peft adapter folder, merged into the model first")
    p.add_argument("--device", help="default: cuda if available, else cpu")
    p.add_argument("--dtype", help="default: bf16 on cuda, fp32 on cpu")


def load_model_and_tokenizer(args: argparse.Namespace, device=None):
    """``(model, tokenizer, tiny)``: the model in eval mode with ``--adapter`` merged, its
    tokenizer, and whether it is the tiny model (or has its vocabulary)."""
    from mosa import tiny
    from mosa.models import load_model
    from mosa.text.prompts import load_tokenizer

    from .common import model_folder

    folder = model_folder(args.model)
    if args.adapter:
        _check_adapter_folder(Path(args.adapter))
    try:
        model = load_model(folder, dtype=args.dtype, device=device or args.device)
    except ValueError as err:
        raise SystemExit(f"{folder}: {err}") from None
    if args.adapter:
        model = _merge_adapter(model, Path(args.adapter))
    tokenizer = load_tokenizer(folder)
    is_tiny = args.model is None or (
        tokenizer.get_vocab() == load_tokenizer(tiny.path()).get_vocab()
    )
    return model.eval(), tokenizer, is_tiny


def _check_adapter_folder(adapter: Path) -> None:
    """A peft adapter folder with its weights in safetensors: peft would unpickle
    ``adapter_model.bin`` (it reads ``adapter_model.safetensors`` first when both exist)."""
    from mosa.models.files import require_safetensors

    if not (adapter / "adapter_config.json").is_file():
        raise SystemExit(f"--adapter {adapter}: not a peft adapter folder (no adapter_config.json)")
    try:
        require_safetensors(adapter, ("adapter_model.safetensors",))
    except ValueError as err:
        raise SystemExit(f"--adapter: {err}") from None


def _merge_adapter(model, adapter: Path):
    try:
        from peft import PeftModel
    except ImportError:
        raise SystemExit("--adapter needs peft: pip install peft") from None
    return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()


def model_label(args: argparse.Namespace) -> str:
    """A short name for the evaluated model: the adapter's run folder, else the model's."""
    if args.adapter:
        adapter = Path(args.adapter).resolve()
        return adapter.parent.name if adapter.name == "adapter" else adapter.name
    return Path(args.model).resolve().name if args.model else "tiny"


# -- sampler ---------------------------------------------------------------------------------


def add_sampler_flags(p: argparse.ArgumentParser) -> None:
    from mosa.sampling.settings import LLADA_EVALUATION, TINY_EVALUATION

    tiny = TINY_EVALUATION
    g = p.add_argument_group(
        "sampler (greedy LLaDA; defaults: "
        f"{tiny.gen_length}/{tiny.block_length}/{tiny.steps} for the tiny model; a LLaDA2 "
        "folder decodes with block_generate: --steps per block, its other options published)"
    )
    g.add_argument(
        "--gen-length", type=int, help=f"response canvas (default {LLADA_EVALUATION.gen_length})"
    )
    g.add_argument(
        "--block-length",
        type=int,
        help=f"default {LLADA_EVALUATION.block_length}, or --gen-length if it is not a multiple",
    )
    g.add_argument("--steps", type=int, help="denoising steps (default: --gen-length)")
    g.add_argument("--batch-size", type=int, default=32, help="prompts per sampler call")
    g.add_argument("--truncate-prompt", choices=["left"], help=TRUNCATE_HELP)


def sampler_settings(args: argparse.Namespace, tiny: bool, model=None) -> dict:
    """The ``generate`` settings: the defaults (the tiny model's or the paper's), then the
    flags; a lone ``--gen-length`` gets one step per token and a block that divides it;
    ``--truncate-prompt`` adds ``truncate``. For a block-diffusion ``model`` (LLaDA2,
    ``block_generate``) ``--steps`` counts per block (default: one per block token) and
    ``--gen-length`` need not be a multiple of ``--block-length``."""
    from mosa.eval.runner import SAMPLER_DEFAULTS
    from mosa.models.families import is_block_diffusion
    from mosa.tiny.evaluate import SAMPLER_DEFAULTS as TINY_DEFAULTS

    settings = dict(TINY_DEFAULTS if tiny else SAMPLER_DEFAULTS)
    if model is not None and is_block_diffusion(model):
        return _block_settings(args, settings)
    if args.gen_length is not None:
        settings["gen_length"] = args.gen_length
        if args.block_length is None and args.gen_length % settings["block_length"]:
            settings["block_length"] = args.gen_length
        if args.steps is None:
            settings["steps"] = args.gen_length
    for name in ("block_length", "steps"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    gen, block, steps = settings["gen_length"], settings["block_length"], settings["steps"]
    if min(gen, block, steps) < 1 or gen % block or steps % (gen // block):
        raise SystemExit(
            f"sampler: need --gen-length ({gen}) a multiple of --block-length ({block}) and "
            f"--steps ({steps}) a multiple of the number of blocks, all >= 1"
        )
    return _common_settings(args, settings)


def _block_settings(args: argparse.Namespace, settings: dict) -> dict:
    """``block_generate``'s schedule from the flags: the lengths as given (``block_generate``
    checks them), ``steps`` per block, by default the block's length."""
    for name in ("gen_length", "block_length"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    settings["steps"] = settings["block_length"] if args.steps is None else args.steps
    if min(settings["gen_length"], settings["block_length"], settings["steps"]) < 1:
        raise SystemExit(
            f"sampler: need --gen-length ({settings['gen_length']}), --block-length "
            f"({settings['block_length']}) and --steps per block ({settings['steps']}) >= 1"
        )
    return _common_settings(args, settings)


def _common_settings(args: argparse.Namespace, settings: dict) -> dict:
    if args.batch_size < 1:
        raise SystemExit(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.truncate_prompt is not None:
        settings["truncate"] = args.truncate_prompt
    return settings


# -- prompt sets -----------------------------------------------------------------------------


def load_prompt_set(flag: str, name: str) -> PromptSet:
    """A prompt set by name (``SHARED_FILES`` from ``mosa.datasets.shared_data_dir()``,
    ``TINY_SETS``: the tiny corpus's held-out prompts) or a file of harmful prompts."""
    from mosa import datasets

    if name in TINY_SETS:
        return _tiny_set(name)
    if name in SHARED_FILES:
        folder = datasets.shared_data_dir()
        if folder is None:
            raise SystemExit(
                f"{flag} {name}: no shared data folder; set MOSA_DATA_DIR to the folder that "
                f"holds {SHARED_FILES[name]}, or give the file's path"
            )
        path = folder / SHARED_FILES[name]
        if not path.is_file():
            raise SystemExit(
                f"{flag} {name}: {path} does not exist; set MOSA_DATA_DIR to the folder that "
                f"holds {SHARED_FILES[name]}, or give the file's path"
            )
        try:
            return _shared_set(name, path)
        except ValueError as err:
            raise SystemExit(f"{flag}: {err}") from None
    if Path(name).is_file():
        from .common import read_prompt_file

        return PromptSet(Path(name).stem, "harmful", read_prompt_file(flag, name))
    known = ", ".join([*SHARED_FILES, *TINY_SETS])
    raise SystemExit(f"{flag} {name}: unknown dataset and no such file; give one of {known}")


def _shared_set(name: str, path: Path) -> PromptSet:
    from mosa import datasets

    if name == "advbench":
        return PromptSet(name, "harmful", [r.goal for r in datasets.load_advbench(path)])
    if name == "harmbench":
        return PromptSet(name, "harmful", [r.behavior for r in datasets.load_harmbench(path)])
    if name == "xstest":
        safe = [r.prompt for r in datasets.load_xstest(path) if r.label == "safe"]
        return PromptSet(name, "over_refusal", safe)
    if name == "gsm8k":
        problems = datasets.load_gsm8k(path)
        return PromptSet(
            name, "utility", [p.question for p in problems], [p.final for p in problems]
        )
    return PromptSet(name, "over_refusal", [r.prompt for r in datasets.load_alpaca(path)])


def _tiny_set(name: str) -> PromptSet:
    from mosa.tiny import corpus

    _, held_out = corpus.splits(seed=0)
    examples = held_out[TINY_SETS[name]]
    prompts = [e.prompt for e in examples]
    if name == "tiny-benign":
        return PromptSet(name, "utility", prompts, [e.response for e in examples])
    return PromptSet(name, "harmful" if name == "tiny-harmful" else "over_refusal", prompts)


# -- judge ---------------------------------------------------------------------------------


def judge_spec(text: str) -> tuple[str, str | None]:
    """An argparse type: ``KIND`` or ``KIND:PATH`` (a local model folder, which must exist)."""
    kind, _, path = text.partition(":")
    if kind not in JUDGES:
        raise argparse.ArgumentTypeError(
            f"unknown judge {kind!r}; give one of {', '.join(JUDGES)} (KIND or KIND:PATH)"
        )
    if kind in MODEL_JUDGES and not path:
        raise argparse.ArgumentTypeError(f"{kind} needs its model folder: {kind}:PATH")
    if path and kind not in FOLDER_JUDGES:
        raise argparse.ArgumentTypeError(f"{kind} takes no folder; give it as {kind}")
    if path and not Path(path).is_dir():
        raise argparse.ArgumentTypeError(f"{kind}:{path}: no such folder")
    return kind, path or None


def add_judge_flags(p: argparse.ArgumentParser, *, several: bool = False) -> None:
    g = p.add_argument_group("judge (default: tiny for the tiny model, else keyword)")
    kinds = f"of {', '.join(JUDGES)}; {', '.join(MODEL_JUDGES)} take :PATH, a local model folder"
    if several:
        kinds = f"one or more judges {kinds}; with several, the ASR per judge and their agreement"
    g.add_argument(
        "--judge", nargs="+" if several else None, type=judge_spec, metavar="KIND", help=kinds
    )
    g.add_argument("--refusal-phrases", help="keyword judge: phrases file, one per line")
    g.add_argument("--judge-endpoint", help="http judge: OpenAI-compatible base URL")
    g.add_argument("--judge-model", help="http judge: model name, e.g. gpt-4.1")
    g.add_argument("--judge-api-key-env", default="OPENAI_API_KEY", help="env var of the key")
    g.add_argument("--judge-rubric", choices=["harm_score", "strongreject"], default="harm_score")
    g.add_argument("--judge-cache", help="http and model judges: JSON-lines cache of verdicts")
    g.add_argument("--judge-workers", type=int, default=4, help="http judge: parallel requests")
    g.add_argument(
        "--judge-timeout",
        type=float,
        default=30.0,
        help="http judge: seconds one request may take in all, connect to last byte (default 30)",
    )
    g.add_argument("--judge-batch-size", type=int, default=8, help="model judges: pairs per pass")
    g.add_argument("--classifier", help="classifier judge: local HF classification model folder")
    g.add_argument(
        "--strongreject-base", help="strongreject judge with a LoRA folder: the gemma-2b folder"
    )


def build_judges(args: argparse.Namespace, tiny: bool) -> dict:
    """The judges the flags ask for, by name, the first being the main one (``--judge``,
    else the tiny model's or the keyword one)."""
    specs = args.judge if isinstance(args.judge, list) else [args.judge]
    specs = [spec for spec in specs if spec is not None] or [("tiny" if tiny else "keyword", None)]
    kinds = [kind for kind, _ in specs]
    if len(set(kinds)) != len(kinds):
        raise SystemExit(f"--judge: give each kind of judge once, got {' '.join(kinds)}")
    return {kind: _build_judge(args, kind, path) for kind, path in specs}


def build_judge(args: argparse.Namespace, tiny: bool):
    """The one judge the flags ask for."""
    (judge,) = build_judges(args, tiny).values()
    return judge


def _build_judge(args: argparse.Namespace, kind: str, path: str | None):
    from mosa.eval import (
        ClassifierJudge,
        HarmBenchJudge,
        HTTPJudge,
        KeywordJudge,
        LlamaGuardJudge,
        StrongRejectJudge,
    )

    if args.judge_batch_size < 1:
        raise SystemExit(f"--judge-batch-size must be >= 1, got {args.judge_batch_size}")
    local = {"batch_size": args.judge_batch_size, "cache_path": args.judge_cache}
    try:
        if kind == "tiny":
            from mosa.tiny.evaluate import HarmJudge

            return HarmJudge()
        if kind == "keyword":
            return (
                KeywordJudge.from_file(args.refusal_phrases)
                if args.refusal_phrases
                else KeywordJudge()
            )
        if kind == "http":
            if not (args.judge_endpoint and args.judge_model):
                raise SystemExit("--judge http needs --judge-endpoint URL and --judge-model NAME")
            return HTTPJudge(
                args.judge_endpoint,
                args.judge_model,
                api_key_env=args.judge_api_key_env,
                rubric=args.judge_rubric,
                cache_path=args.judge_cache,
                workers=args.judge_workers,
                timeout=args.judge_timeout,
            )
        if kind == "harmbench":
            return HarmBenchJudge(path, **local)
        if kind == "llamaguard":
            return LlamaGuardJudge(path, **local)
        if kind == "strongreject":
            return StrongRejectJudge(path, base=args.strongreject_base, **local)
        if not (path or args.classifier):
            raise SystemExit("--judge classifier needs --classifier PATH (a local model folder)")
        return ClassifierJudge(path or args.classifier)
    except ValueError as err:
        raise SystemExit(f"--judge {kind}: {err}") from None

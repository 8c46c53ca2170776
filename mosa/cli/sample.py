"""``mosa sample``: generate responses with the drop-in sampler."""

from __future__ import annotations

import argparse
import json
import sys

from .common import TRUNCATE_HELP, model_folder, prepare_output, read_prompt_file


def _read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompts_file:
        prompts += read_prompt_file("--prompts-file", args.prompts_file)
    if not prompts:
        raise SystemExit("no prompts: give --prompt TEXT (repeatable) or --prompts-file FILE")
    return prompts


def _check_no_mask_in_prompts(args: argparse.Namespace, tokenizer, prompts, mask_id) -> None:
    """A prompt holding the mask token is a usage error naming it (``--prompt`` N, or the
    file's prompt N), raised before sampling starts."""
    from mosa.text.prompts import MaskInPromptError, check_no_mask_in_prompts

    chat_template = not args.no_chat_template
    try:
        check_no_mask_in_prompts(
            tokenizer, prompts, mask_id, chat_template=chat_template, argument="prompts"
        )
    except MaskInPromptError as err:
        given = len(args.prompt or [])
        if err.index < given:
            where = f"--prompt {err.index + 1}" if given > 1 else "--prompt"
        else:
            where = f"--prompts-file {args.prompts_file}: prompt {err.index - given + 1}"
        raise SystemExit(f"mosa sample: {where} {err.detail}") from None


def _check_threshold(threshold: float | None) -> None:
    from mosa_kernels.ops.select_transfer import check_threshold

    if threshold is not None:
        try:
            check_threshold(threshold)
        except ValueError as err:
            raise SystemExit(f"--threshold: {err}") from None


def _sample(args: argparse.Namespace) -> int:
    from mosa.models import load_model, sampling_family
    from mosa.models.files import write_file_atomic
    from mosa.sampling import LLADA_REFERENCE, sample_texts
    from mosa.text.prompts import load_tokenizer

    _check_threshold(args.threshold)
    if args.out:
        prepare_output("--out", args.out, folder=False)
    folder = model_folder(args.model)
    prompts = _read_prompts(args)
    tokenizer = load_tokenizer(folder)
    model = load_model(folder, dtype=args.dtype, device=args.device).eval()
    _check_no_mask_in_prompts(args, tokenizer, prompts, model.mask_token_id)
    # A short --gen-length alone should just work: one block, one step per token. (A
    # block-diffusion family's blocks need not divide the response, and its steps are per
    # block: its defaults serve any length.)
    family = sampling_family(model)
    if args.gen_length is not None and not family.block_diffusion:
        blocks = "block_length" in family.sampler_options
        if blocks and args.block_length is None and args.gen_length % LLADA_REFERENCE.block_length:
            args.block_length = args.gen_length
        if args.steps is None:
            args.steps = args.gen_length
    options = {
        name: getattr(args, name)
        for name in (
            "steps", "gen_length", "block_length", "temperature", "cfg_scale", "remasking",
            "threshold", "factor", "cache", "top_p", "top_k", "alg", "alg_temp",
        )
    }  # fmt: skip
    for flag in ("logits_eos_inf", "confidence_eos_eot_inf", "stop_at_eos"):
        options[flag] = True if getattr(args, flag) else None
    options["cuda_graphs"] = {"auto": None, "on": True, "off": False}[args.cuda_graphs]
    options["truncate"] = args.truncate_prompt
    responses = sample_texts(
        model, tokenizer, prompts, batch_size=args.batch_size, chat_template=not args.no_chat_template,
        seed=args.seed, progress=True, **options,
    )  # fmt: skip
    lines = [
        json.dumps({"prompt": p, "response": r}) for p, r in zip(prompts, responses, strict=True)
    ]
    if args.out:
        write_file_atomic(args.out, "\n".join(lines) + "\n")
        print(f"wrote {len(lines)} responses to {args.out}", file=sys.stderr)
    else:
        print("\n".join(lines))
    return 0


def add_parser(commands) -> None:
    from mosa.sampling.llada import REMASKING_RULES

    p = commands.add_parser("sample", help="generate responses with the drop-in sampler")
    p.add_argument(
        "model",
        nargs="?",
        help="checkpoint folder (config.json, safetensors, tokenizer); default: the embedded tiny model",
    )
    p.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    p.add_argument(
        "--prompts-file", help="CSV, JSONL, JSON or one prompt per line (see mosa.datasets)"
    )
    p.add_argument("--out", help="write JSONL here instead of stdout")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--no-chat-template", action="store_true", help="feed prompts as raw text")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", default=None, help="default: bf16 on cuda, fp32 on cpu")
    g = p.add_argument_group("sampler (unset options keep the sampler's defaults)")
    g.add_argument("--steps", type=int)
    g.add_argument("--gen-length", type=int)
    g.add_argument("--block-length", type=int)
    g.add_argument("--temperature", type=float)
    g.add_argument("--cfg-scale", type=float)
    g.add_argument("--remasking", choices=list(REMASKING_RULES))
    g.add_argument(
        "--threshold", type=float, help="parallel decoding: commit confidence >= this, in (0, 1]"
    )
    g.add_argument("--factor", type=float, help="Fast-dLLM dynamic parallel decoding")
    g.add_argument("--cache", choices=["prefix", "dual"])
    g.add_argument("--stop-at-eos", action="store_true")
    g.add_argument("--truncate-prompt", choices=["left"], help=TRUNCATE_HELP)
    g.add_argument("--logits-eos-inf", action="store_true")
    g.add_argument("--confidence-eos-eot-inf", action="store_true")
    g.add_argument(
        "--cuda-graphs", choices=["auto", "on", "off"], default="auto",
        help="LLaDA on a GPU: replay each step shape as a CUDA graph (auto: wherever supported)",
    )  # fmt: skip
    g.add_argument(
        "--alg", choices=["origin", "maskgit_plus", "topk_margin", "entropy"], help="Dream"
    )
    g.add_argument("--alg-temp", type=float, help="Dream")
    g.add_argument("--top-p", type=float, help="Dream")
    g.add_argument("--top-k", type=int, help="Dream")
    p.set_defaults(run=_sample)

"""``mosa align``: train a MOSA adapter (or a fully fine-tuned model), on 1 process or N.

Without a model folder it aligns the embedded tiny model on its own harmful training prompts,
with its sentence sets, its 40-token canvas and window 10..20, and the benign-KL regulariser
on its benign training prompts (with ``--anywhere``, also its look-alike requests, at the
weight ``mosa.tiny.DEFENSE_SETTINGS`` gives). Under ``torchrun --nproc_per_node N -m mosa.cli align ...``
it runs data parallel.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

from .common import model_folder, prepare_output, read_prompt_file


def _align(args: argparse.Namespace) -> int:
    from mosa import tiny
    from mosa.align import AlignConfig, Sentences, read_sentences, train
    from mosa.align.defenses import DEFENSES
    from mosa.align.run_folder import TrainingInterrupted
    from mosa.text.prompts import MaskInPromptError

    model_folder(args.model)  # a typo fails here, before any work
    prepare_output("--out", args.out, folder=True)
    tiny_run = args.model is None
    chosen = DEFENSES[args.defense]
    defense = chosen.objective
    settings = {**tiny.ALIGN_SETTINGS, **tiny.DEFENSE_SETTINGS.get(defense, {})} if tiny_run else {}
    for name in ("gen_length", "lr", "clip", "batch_size", "benign_beta"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    if args.window is not None:
        settings["window"] = tuple(args.window)
    if chosen.window_override is not None:
        settings["window"] = chosen.window_override

    if args.prompts:
        prompts = read_prompt_file("--prompts", args.prompts)
    elif tiny_run:
        prompts, _ = tiny.align_prompts()
    else:
        raise SystemExit("--prompts FILE is required with a model folder (CSV, JSONL or text)")
    benign = []
    if args.benign_prompts:
        benign = read_prompt_file("--benign-prompts", args.benign_prompts)
    elif tiny_run:
        _, benign = tiny.align_prompts(look_alikes=defense == "anywhere")
    if settings.get("benign_beta", 0) > 0 and not benign:
        raise SystemExit("--benign-beta > 0 needs --benign-prompts FILE")

    sentences = tiny.align_sentences() if tiny_run else Sentences()
    try:
        if args.refusals:
            sentences = Sentences(read_sentences(args.refusals), sentences.harmful)
        if args.harmful:
            sentences = Sentences(sentences.refusals, read_sentences(args.harmful))
        config = AlignConfig(
            model=str(args.model or tiny.path()),
            output_dir=args.out,
            beta=args.beta,
            lora=not (args.full_finetune or args.fsdp),
            lora_r=args.lora_r,
            lora_alpha=args.lora_alpha,
            fsdp=args.fsdp,
            epochs=args.epochs,
            max_steps=args.max_steps,
            grad_accum=args.grad_accum,
            group_by_length=args.group_by_length,
            seed=args.seed,
            save_every=args.save_every,
            resume=not args.no_resume,
            gradient_checkpointing=args.gradient_checkpointing,
            export_merged=args.export_merged,
            device=args.device,
            defense=defense,
            block_length=args.block_length,
            lora_experts=args.lora_experts,
            **settings,
        )
        out = train(config, prompts, sentences=sentences, benign_prompts=benign)
    except MaskInPromptError as err:
        flag, path = {
            "prompts": ("--prompts", args.prompts),
            "benign_prompts": ("--benign-prompts", args.benign_prompts),
        }[err.argument]
        where = f"{flag} {path}" if path else f"the tiny model's {err.argument}"
        raise SystemExit(f"mosa align: {where}: prompt {err.index + 1} {err.detail}") from None
    except (ValueError, TrainingInterrupted) as err:
        raise SystemExit(f"mosa align: {err}") from None
    if os.environ.get("RANK", "0") == "0":
        print(f"wrote {out}")
    return 0


def _config_defaults() -> dict:
    """``AlignConfig``'s field defaults: the flags' defaults and help read them."""
    from mosa.align.trainer import AlignConfig

    return {f.name: f.default for f in dataclasses.fields(AlignConfig)}


def add_parser(commands) -> None:
    from mosa.align.defenses import DEFENSES

    default = _config_defaults()

    p = commands.add_parser("align", help="train a MOSA adapter (middle-token safety alignment)")
    p.add_argument("model", nargs="?", help="checkpoint folder; default: the embedded tiny model")
    p.add_argument("--out", required=True, help="output folder (metrics, checkpoints, adapter)")
    p.add_argument(
        "--prompts", help="harmful prompts: CSV (AdvBench/HarmBench/SORRY-Bench), JSONL or text"
    )
    p.add_argument("--benign-prompts", help="prompts for the benign-KL regulariser")
    p.add_argument("--refusals", help="positive sentences: one per line or a JSON list")
    p.add_argument("--harmful", help="negative sentences: one per line or a JSON list")
    g = p.add_argument_group("objective (defaults: the paper's)")
    g.add_argument(
        "--gen-length", type=int, help=f"response canvas length (default {default['gen_length']})"
    )
    g.add_argument(
        "--window",
        type=int,
        nargs=2,
        metavar=("FIRST", "LAST"),
        help="offsets (default {} {})".format(*default["window"]),
    )
    # A flag per defense of the table, or --defense NAME; none given: the default (MOSA).
    defenses = g.add_mutually_exclusive_group()
    defenses.add_argument(
        "--defense", choices=list(DEFENSES), help="the defense by name (or one of the flags below)"
    )
    for name, defense in DEFENSES.items():
        if defense.flag is not None:
            defenses.add_argument(
                defense.flag, dest="defense", action="store_const", const=name, help=defense.help
            )
    p.set_defaults(defense=next(n for n, d in DEFENSES.items() if d.flag is None))
    g.add_argument(
        "--block-length",
        type=int,
        help="block-diffusion models (LLaDA2): the block the canvas is laid out and attended "
        "in, as block_generate decodes (default: the sampler's, 32); not for other models",
    )
    g.add_argument("--beta", type=float, default=default["beta"], help="KL weight")
    g.add_argument(
        "--benign-beta", type=float, help=f"benign-KL weight (default {default['benign_beta']:g})"
    )
    g = p.add_argument_group("training")
    g.add_argument("--full-finetune", action="store_true", help="train every weight, no LoRA")
    g.add_argument("--fsdp", action="store_true", help="full fine-tuning sharded with FSDP2")
    g.add_argument("--lora-r", type=int, default=default["lora_r"])
    g.add_argument("--lora-alpha", type=int, default=default["lora_alpha"])
    g.add_argument(
        "--lora-experts",
        action="store_true",
        help="MoE models: LoRA on the routed experts too (adds the router balancing loss)",
    )
    g.add_argument("--lr", type=float, help=f"AdamW learning rate (default {default['lr']:g})")
    g.add_argument("--clip", type=float, help=f"gradient-norm clip (default {default['clip']:g})")
    g.add_argument("--epochs", type=int, default=default["epochs"])
    g.add_argument("--max-steps", type=int)
    g.add_argument(
        "--batch-size",
        type=int,
        help=f"prompts per process and micro-step ({default['batch_size']})",
    )
    g.add_argument("--grad-accum", type=int, default=default["grad_accum"])
    g.add_argument(
        "--group-by-length", action="store_true", help="batch prompts of similar length together"
    )
    g.add_argument("--seed", type=int, default=default["seed"])
    g.add_argument(
        "--save-every", type=int, default=default["save_every"], help="checkpoint every N steps"
    )
    g.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    g.add_argument("--gradient-checkpointing", action="store_true")
    g.add_argument("--export-merged", action="store_true", help="also write merged weights")
    g.add_argument("--device", help="default: cuda if available, else cpu")
    p.set_defaults(run=_align)

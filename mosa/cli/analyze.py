"""``mosa analyze``: the paper's analyses of a model (docs/DESIGN.md §8).

- ``order``: the decoding order — per denoising step, the mean response position of the
  tokens committed at that step — for benign and harmful prompts, with a linear fit (the paper
  finds it near-linear and the same for both). Writes ``decoding_order.json`` and ``.png``.
- ``prefill-sweep``: ASR of a phrase prefilled at each of several response positions. Writes
  ``prefill_sweep.json``, ``.md`` and ``.png``.
- ``gcg-positions``: GCG aimed at the start versus the middle of the response: the ASR of
  the optimised prompts and the final loss per target position. Writes ``gcg_positions.json``.

Without a model folder they run on the embedded tiny model and its held-out prompts.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from mosa.tiny import SWEEP_PHRASE, SWEEP_POSITIONS

from .common import prepare_output
from .eval_options import (
    add_judge_flags,
    add_model_flags,
    add_sampler_flags,
    build_judge,
    load_model_and_tokenizer,
    load_prompt_set,
    model_label,
    sampler_settings,
)

POSITIONS = (0, 40, 80, 120)
TABLE_ROWS = 20


def _prompts(flag: str, name: str | None, tiny_default: str, tiny: bool, limit: int | None):
    if name is None and not tiny:
        raise SystemExit(f"{flag} FILE_OR_DATASET is required with a model folder")
    return load_prompt_set(flag, name or tiny_default).limited(limit)


def _inputs(args: argparse.Namespace):
    """The model, its tokenizer, whether it is the tiny one, the sampler settings and the
    harmful prompts; the output folder is created first."""
    prepare_output("--out", args.out, folder=True)
    model, tokenizer, tiny = load_model_and_tokenizer(args)
    settings = sampler_settings(args, tiny, model)
    harmful = _prompts("--prompts", args.prompts, "tiny-harmful", tiny, args.limit)
    return model, tokenizer, tiny, settings, harmful


def _order(args: argparse.Namespace) -> int:
    from mosa.eval import decoding_order, linear_fit, plot_decoding_order
    from mosa.models.files import write_json_atomic

    model, tokenizer, tiny, settings, harmful = _inputs(args)
    sets = {"harmful": harmful}
    if args.benign_prompts or tiny:
        benign = _prompts("--benign-prompts", args.benign_prompts, "tiny-benign", tiny, args.limit)
        sets = {"benign": benign, **sets}
    means, report = {}, {}
    for label, data in sets.items():
        try:
            means[label] = decoding_order(
                model,
                tokenizer,
                data.prompts,
                batch_size=args.batch_size,
                progress=True,
                **settings,
            )
            slope, intercept, r2 = linear_fit(means[label])
        except ValueError as err:
            raise SystemExit(f"mosa analyze order: {err}") from None
        report[label] = {
            "dataset": data.name,
            "prompts": len(data.prompts),
            "slope": slope,
            "intercept": intercept,
            "r2": r2,
            "mean_positions": means[label],
        }
    out = Path(args.out)
    write_json_atomic(
        out / "decoding_order.json",
        {"model": model_label(args), "sampler": settings, "sets": report},
    )
    plot_decoding_order(means, out / "decoding_order.png")

    labels = list(means)
    steps = max(len(v) for v in means.values())
    print("step  " + "  ".join(f"{label:>8}" for label in labels))
    for step in range(0, steps, max(1, math.ceil(steps / TABLE_ROWS))):
        cells = [f"{v[step]:8.2f}" if step < len(v) else " " * 8 for v in means.values()]
        print(f"{step:4d}  " + "  ".join(cells))
    for label, fit in report.items():
        print(f"{label}: slope {fit['slope']:.3f} positions/step, R² {fit['r2']:.3f} (linear fit)")
    print(f"wrote decoding_order.json and decoding_order.png to {out}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from mosa.eval import Results, plot_prefill_sweep, prefill_sweep
    from mosa.eval.attacks import DEFAULT_MIDDLE_PHRASE
    from mosa.models.files import write_file_atomic

    model, tokenizer, tiny, settings, data = _inputs(args)
    phrase = args.phrase or (SWEEP_PHRASE if tiny else DEFAULT_MIDDLE_PHRASE)
    positions = args.positions or (SWEEP_POSITIONS if tiny else POSITIONS)
    judge = build_judge(args, tiny)
    try:
        rates = prefill_sweep(
            model,
            tokenizer,
            data.prompts,
            phrase,
            positions,
            judge,
            batch_size=args.batch_size,
            progress=True,
            **settings,
        )
    except ValueError as err:
        raise SystemExit(f"mosa analyze prefill-sweep: {err}") from None
    variant = model_label(args)
    results = Results(
        meta={
            "model": variant,
            "dataset": data.name,
            "prompts": len(data.prompts),
            "phrase": phrase,
            "judge": type(judge).__name__,
            "sampler": settings,
        }
    )
    for position, rate in rates.items():
        results.add_asr(variant, f"prefill@{position}", rate, n=len(data.prompts))
    out = Path(args.out)
    results.to_json(out / "prefill_sweep.json")
    write_file_atomic(out / "prefill_sweep.md", results.to_markdown())
    curve = {variant: {p: r.rate for p, r in rates.items()}}
    plot_prefill_sweep(curve, out / "prefill_sweep.png")
    print(results.to_markdown())
    print(f"wrote prefill_sweep.json, .md and .png to {out}")
    return 0


def _gcg(args: argparse.Namespace) -> int:
    from mosa.eval import gcg_positions
    from mosa.eval.attacks import DEFAULT_PREFILL
    from mosa.models.files import write_json_atomic
    from mosa.tiny import corpus

    model, tokenizer, tiny, settings, data = _inputs(args)
    target = args.target or (corpus.AFFIRMATIVE_PREFIX if tiny else DEFAULT_PREFILL)
    search = {"steps": args.gcg_steps, "suffix_length": args.gcg_suffix_length, "seed": args.seed}
    try:
        outcomes = gcg_positions(
            model,
            tokenizer,
            data.prompts,
            target,
            args.positions,
            build_judge(args, tiny),
            gcg=search,
            batch_size=args.batch_size,
            progress=True,
            **settings,
        )
    except ValueError as err:
        raise SystemExit(f"mosa analyze gcg-positions: {err}") from None
    report = {
        position: {
            "asr": o.rate.rate,
            "judge_errors": o.rate.errors,
            "mean_loss": o.mean_loss,
            "searches": [
                {"prompt": s.prompt_with_suffix, "loss": s.loss, "response": r}
                for s, r in zip(o.searches, o.responses, strict=True)
            ],
        }
        for position, o in outcomes.items()
    }
    out = Path(args.out)
    write_json_atomic(
        out / "gcg_positions.json",
        {
            "model": model_label(args),
            "target": target,
            "gcg": search,
            "sampler": settings,
            "positions": report,
        },
    )
    for position, entry in report.items():
        print(
            f"target at {position:3d}: ASR {100 * entry['asr']:.1f} %, "
            f"mean loss {entry['mean_loss']:.3f}"
        )
    print(f"wrote gcg_positions.json to {out}")
    return 0


def add_parser(commands) -> None:
    p = commands.add_parser("analyze", help="decoding order, prefill sweep, GCG positions")
    analyses = p.add_subparsers(dest="analysis", required=True)

    def analysis(name: str, help: str, run) -> argparse.ArgumentParser:
        a = analyses.add_parser(name, help=help)
        add_model_flags(a)
        a.add_argument("--out", required=True, help="output folder")
        a.add_argument(
            "--prompts", help="harmful prompts: a dataset name (see mosa eval) or a file"
        )
        a.add_argument("--limit", type=int, help="only the first N prompts of each set")
        add_sampler_flags(a)
        a.set_defaults(run=run)
        return a

    order = analysis("order", "mean position of the tokens committed at each step", _order)
    order.add_argument("--benign-prompts", help="benign prompts: a dataset name or a file")

    sweep = analysis("prefill-sweep", "ASR of a phrase prefilled at each position", _sweep)
    sweep.add_argument("--phrase", help=f"default {SWEEP_PHRASE!r} (tiny) or 'Step 1:'")
    sweep.add_argument("--positions", type=int, nargs="+", help="response positions")
    add_judge_flags(sweep)

    gcg = analysis("gcg-positions", "GCG aimed at the start vs the middle", _gcg)
    gcg.add_argument("--target", help="the phrase GCG puts in the response")
    gcg.add_argument("--positions", type=int, nargs="+", default=[0, 10], help="target positions")
    gcg.add_argument("--gcg-steps", type=int, default=50)
    gcg.add_argument("--gcg-suffix-length", type=int, default=8)
    gcg.add_argument("--seed", type=int, default=0)
    add_judge_flags(gcg)

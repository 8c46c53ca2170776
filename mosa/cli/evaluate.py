"""``mosa eval``: a model (with an optional adapter) on one prompt set, under attacks, judged.

Harmful prompt sets (AdvBench, HarmBench, ``tiny-harmful``, a file) give the ASR of each
attack; GSM8K and ``tiny-benign`` give utility (exact match); XSTest's safe prompts, Alpaca
and ``tiny-risky`` give over-refusal. The output folder gets one JSON-lines file of responses
and verdicts per attack, and ``results.json`` / ``results.md`` (a ``Results`` table that
later runs into the same folder add their rows and columns to) and ``asr.png``. With several
judges (``--judge harmbench:PATH keyword``) each judge gets its own row, every response keeps
every verdict, and the responses folder gets ``agreement.md`` (Cohen's kappa per pair) and
``disagreements.jsonl``.

Under ``torchrun --nproc_per_node N -m mosa.cli eval ...`` each process samples a strided
share of the prompts (and runs GCG on its share); process 0 gathers, judges and writes.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from .common import model_folder, prepare_output
from .eval_options import (
    add_judge_flags,
    add_model_flags,
    add_sampler_flags,
    build_judges,
    load_model_and_tokenizer,
    load_prompt_set,
    model_label,
    sampler_settings,
)


def attack_names() -> tuple[str, ...]:
    """``--attacks``' choices: every attack of ``mosa.eval.attacks.ATTACKS``, then GCG."""
    from mosa.eval.attacks import ATTACKS

    return (*ATTACKS, "gcg")


def default_attacks() -> tuple[str, ...]:
    """The attacks a harmful set gets by default: all but gcg, whose search is slow."""
    return attack_names()[:-1]


def __getattr__(name: str):
    # ATTACK_NAMES and DEFAULT_ATTACKS are read from the registry when asked for, so an
    # attack registered after this module was imported is among them.
    if name == "ATTACK_NAMES":
        return attack_names()
    if name == "DEFAULT_ATTACKS":
        return default_attacks()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _int_from(low: int):
    """An argparse type: an int >= ``low``."""

    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = "int"  # argparse says "invalid int value" for a non-number
    return parse


_positive, _non_negative = _int_from(1), _int_from(0)


def pad_place(text: str) -> int | float:
    """``--pad-anchor``'s PLACE: an int token index (>= 0) or a float fraction of the canvas
    in [0, 1)."""
    try:
        place: int | float = int(text)
    except ValueError:
        try:
            place = float(text)
        except ValueError:
            raise ValueError("PLACE must be an int token index or a fraction in [0, 1)") from None
        if not 0.0 <= place < 1.0:
            raise ValueError(
                f"PLACE {text} is a fraction of --gen-length and must lie in [0, 1); give an "
                "int for a token index"
            ) from None
    if place < 0:
        raise ValueError(f"PLACE {text} must be a token index >= 0")
    return place


class _PadAnchor(argparse.Action):
    """``--pad-anchor TEXT PLACE`` (repeatable): appends ``(TEXT, place)``."""

    def __call__(self, parser, namespace, values, option_string=None):
        text, place = values
        try:
            anchor = (text, pad_place(place))
        except ValueError as err:
            parser.error(f"{option_string} {text!r} {place}: {err}")
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest) or []), anchor])


_PARSE = {
    None: {},
    "int": {"type": int},
    "positive": {"type": _positive},
    "non_negative": {"type": _non_negative},
    "list": {"nargs": "+"},
    "pad_anchor": {"nargs": 2, "action": _PadAnchor, "metavar": ("TEXT", "PLACE")},
}
"""How ``mosa eval`` reads an attack option's flag, by its metadata's ``parse``."""


@dataclass
class _Run:
    """What every attack of one ``mosa eval`` run shares."""

    model: object
    tokenizer: object
    settings: dict
    options: dict[str, dict]
    gcg: dict
    batch_size: int
    rank: int
    world: int


# -- attacks ---------------------------------------------------------------------------------


def attack_flags() -> list[tuple[str, str, dict]]:
    """``(attack, option, metadata)`` of every attack option with a ``mosa eval`` flag (its
    options dataclass field's ``metadata``: ``flag``, ``help``, ``parse``, ``cli_default``)."""
    from dataclasses import fields

    from mosa.eval.attacks import ATTACKS

    return [
        (name, f.name, dict(f.metadata))
        for name, attack in ATTACKS.items()
        for f in fields(attack.options)
        if "flag" in f.metadata
    ]


def cli_defaults(name: str) -> dict:
    """Attack ``name``'s options a flag sets, at the registry's defaults (a field's
    ``cli_default`` where ``mosa eval`` has its own: every wrapper for ``template``)."""
    from mosa.eval.attacks import default_options

    defaults = default_options(name)
    return {
        option: meta.get("cli_default", defaults[option])
        for attack, option, meta in attack_flags()
        if attack == name
    }


def attack_options(args: argparse.Namespace, tiny: bool, gen_length: int) -> dict[str, dict]:
    """``expand_attack`` options per attack: the tiny model's (those of ``mosa demo``) or the
    registry's defaults of the options a flag sets, then the flags. ``pad`` places its
    anchors in the run's canvas of ``gen_length`` tokens."""
    from mosa.eval.attacks import ATTACKS

    chosen = {}
    if tiny:
        from mosa.demo import ATTACKS as chosen
    options = {
        name: copy.deepcopy(chosen[name]) if name in chosen else cli_defaults(name)
        for name in ATTACKS
    }
    options["pad"]["gen_length"] = gen_length
    for attack, option, meta in attack_flags():
        value = getattr(args, _dest(meta["flag"]))
        if value is not None:
            options[attack][option] = value
    return options


def _dest(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def gcg_options(args: argparse.Namespace, tiny: bool) -> dict:
    """``gcg_search`` keyword arguments from the ``--gcg-*`` flags."""
    from mosa.eval import attacks
    from mosa.tiny import corpus

    target = args.gcg_target or (corpus.AFFIRMATIVE_PREFIX if tiny else attacks.DEFAULT_PREFILL)
    return {
        "target": target,
        "position": args.gcg_position,
        "steps": args.gcg_steps,
        "suffix_length": args.gcg_suffix_length,
        "top_k": args.gcg_top_k,
        "candidates": args.gcg_candidates,
        "seed": args.seed,
    }


def _check_attacks(names, run: _Run, prompt: str) -> None:
    """Every attack's options are valid and its fixed text fits the canvas (pad's anchors,
    trajhijack's prefix), before anything is sampled."""
    from mosa.eval import build_response_canvas, expand_attack
    from mosa.eval.trajhijack import Hijack

    gen_length, mask_id = run.settings["gen_length"], run.model.mask_token_id
    for name in names:
        try:
            if name == "gcg":
                fixed = [(run.gcg["position"], run.gcg["target"])]
                build_response_canvas(run.tokenizer, fixed, gen_length, mask_id)
                continue
            for attacked in expand_attack(name, prompt, **run.options[name]):
                build_response_canvas(run.tokenizer, attacked.fixed, gen_length, mask_id)
                if isinstance(attacked.decoding, Hijack):
                    _check_hijack(run, attacked.decoding)
        except (TypeError, ValueError) as err:
            raise SystemExit(f"--attacks {name}: {err}") from None


def _check_hijack(run: _Run, hijack) -> None:
    """trajhijack's prefix fits the canvas at 0, and its refusals are words the tokenizer
    knows (a refusal with an unknown word never matches a response)."""
    from mosa.eval import build_response_canvas

    gen_length, mask_id = run.settings["gen_length"], run.model.mask_token_id
    try:
        build_response_canvas(run.tokenizer, [(0, hijack.prefix)], gen_length, mask_id)
    except ValueError as err:
        raise ValueError(f"--hijack-prefix: {err}") from None
    unk_id = getattr(run.tokenizer, "unk_token_id", None)
    for refusal in hijack.refusals:
        ids = run.tokenizer(refusal, add_special_tokens=False)["input_ids"]
        if not ids or (unk_id is not None and unk_id in ids):
            raise ValueError(
                f"the refusal {refusal!r} has words the tokenizer does not know, so it would "
                "never be found in a response"
            )


def _check_lengths(names, run: _Run, prompts: list[str]) -> None:
    """Every attacked prompt fits the model with the canvas (or ``--truncate-prompt left``),
    before anything is sampled, so a later attack cannot fail after the earlier ones ran."""
    from mosa.eval import expand_attack
    from mosa.eval.runner import check_fits

    for name in names:
        if name == "gcg":
            continue  # its suffix is searched first; respond checks the prompts it makes
        attacked = [a for p in prompts for a in expand_attack(name, p, **run.options[name])]
        try:
            check_fits(run.model, run.tokenizer, attacked, **run.settings)
        except ValueError as err:
            raise SystemExit(f"--attacks {name}: {err}") from None


def _dija_rewriter(args: argparse.Namespace, names, run: _Run, prompts: list[str], device):
    """``--dija-rewriter``: every prompt rewritten once by the local model (each process
    rewrites all of them, greedily, so they agree), then the model is dropped; the rewrites
    become dija's ``rewrite``."""
    import warnings

    from mosa.eval.dija_rewriter import DijaRewriter

    if "dija" not in names:
        raise SystemExit("--dija-rewriter is for the dija attack; add dija to --attacks")
    template = run.options["dija"]["dija_template"]
    try:
        rewriter = DijaRewriter.from_folder(args.dija_rewriter, device=device, template=template)
    except ValueError as err:
        raise SystemExit(f"--dija-rewriter: {err}") from None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rewriter.prepare(prompts, progress=run.rank == 0)
    if run.rank == 0:
        for warning in caught:
            print(f"({warning.message})", file=sys.stderr)
    rewriter.release()
    run.options["dija"]["rewrite"] = rewriter


# -- distributed -----------------------------------------------------------------------------


def _gather(rows: list[dict], world: int) -> list[dict]:
    """Every process's rows (each with its global ``index``), in index order."""
    if world > 1:
        import torch.distributed as dist

        shares: list = [None] * world
        dist.all_gather_object(shares, rows)
        rows = [row for share in shares for row in share]
    return sorted(rows, key=lambda row: row["index"])


# -- one attack --------------------------------------------------------------------------------


def _attack_rows(run: _Run, name: str, prompts: list[str]) -> list[dict]:
    """This process's share of one attack: ``{"index", "prompt", "attacked", "fixed",
    "response"}`` per attacked prompt (plus the GCG suffix and loss)."""
    from tqdm.auto import tqdm

    from mosa.eval import expand_attack
    from mosa.eval.gcg import gcg_search
    from mosa.eval.runner import respond

    progress = run.rank == 0
    if name == "gcg":
        share = range(run.rank, len(prompts), run.world)
        searches = [
            gcg_search(
                run.model,
                run.tokenizer,
                prompts[i],
                gen_length=run.settings["gen_length"],
                block_length=run.settings["block_length"],
                **run.gcg,
            )
            for i in tqdm(share, desc="gcg", unit="prompt", disable=not progress)
        ]
        items = [(i, prompts[i], s.attacked_prompt()) for i, s in zip(share, searches, strict=True)]
        extra = [{"gcg_suffix": s.suffix_text, "gcg_loss": s.loss} for s in searches]
    else:
        every = [(p, a) for p in prompts for a in expand_attack(name, p, **run.options[name])]
        items = [(i, *every[i]) for i in range(run.rank, len(every), run.world)]
        extra = [{} for _ in items]
    attacked = [a for _, _, a in items]
    responses = respond(
        run.model,
        run.tokenizer,
        attacked,
        batch_size=run.batch_size,
        progress=progress,
        **run.settings,
    )
    return [
        {"index": i, "prompt": p, "attacked": a.prompt, "fixed": a.fixed, "response": r, **e}
        for (i, p, a), r, e in zip(items, responses, extra, strict=True)
    ]


def _score(data, name, rows, judges, results, variant) -> dict | None:
    """Judges ``rows`` with every judge (or checks their answers), adds each judge's rate to
    ``results`` (one row per judge when there are several) and the verdicts to the rows;
    returns the verdicts by judge (None for a utility set)."""
    from dataclasses import asdict

    from mosa.eval import exact_match_accuracy, gsm8k_extract, refusal_rate
    from mosa.eval.report import asr

    if data.kind == "utility":
        extract = gsm8k_extract if data.name == "gsm8k" else str
        predictions = [extract(row["response"]) for row in rows]
        for row, prediction, answer in zip(rows, predictions, data.answers, strict=True):
            row.update(answer=answer, prediction=prediction)
        accuracy = exact_match_accuracy(predictions, data.answers)
        results.add_utility(variant, data.name, accuracy, n=len(rows))
        return None
    responses = [row["response"] for row in rows]
    verdicts = {}
    for judge_name, judge in judges.items():
        # HarmBench and StrongREJECT grade a response against the request itself (the
        # behavior), not against the attacked prompt that carried it.
        asked = [row["prompt"] if judge.grades_request else row["attacked"] for row in rows]
        verdicts[judge_name] = judge.judge_many(asked, responses)
    main = verdicts[next(iter(judges))]
    for i, row in enumerate(rows):
        row.update({k: v for k, v in asdict(main[i]).items() if k != "category" or v})
        if len(judges) > 1:
            row["verdicts"] = {n: asdict(v[i]) for n, v in verdicts.items()}
    for judge_name, judged in verdicts.items():
        row_name = variant if len(judges) == 1 else f"{variant} ({judge_name})"
        try:
            if data.kind == "harmful":
                results.add_asr(row_name, name, asr(judged), n=len(judged))
            else:
                rate = refusal_rate(judged)
                results.add(row_name, f"over_refusal/{data.name}", rate, n=len(judged))
        except ValueError as err:
            if len(judges) == 1:
                raise
            print(f"({data.name}: no {judge_name} rate: {err})", file=sys.stderr)
    return verdicts


def _write_rows(path: Path, rows: list[dict]) -> None:
    from mosa.models.files import write_file_atomic

    lines = [json.dumps({k: v for k, v in row.items() if k != "index"}) for row in rows]
    write_file_atomic(path, "\n".join(lines) + "\n")


def _write_agreement(folder: Path, judged: dict[str, dict], rows: dict[str, list]) -> None:
    """``agreement.md`` (pairwise agreement and Cohen's kappa, over all attacks and per
    attack) and ``disagreements.jsonl`` (the responses the judges labelled differently)."""
    from mosa.eval.agreement import agreement_markdown, disagreements, pairwise_agreement
    from mosa.models.files import write_file_atomic

    names = next(iter(judged.values()))
    pooled = {n: [v for verdicts in judged.values() for v in verdicts[n]] for n in names}
    sections = ["## all attacks\n\n", agreement_markdown(pairwise_agreement(pooled))]
    for attack, verdicts in judged.items():
        sections += [f"\n## {attack}\n\n", agreement_markdown(pairwise_agreement(verdicts))]
    text = "# judge agreement on jailbroken\n\n" + "".join(sections)
    write_file_atomic(folder / "agreement.md", text)
    lines = [
        json.dumps({"attack": attack, **{k: v for k, v in rows[attack][i].items() if k != "index"}})
        for attack, verdicts in judged.items()
        for i in disagreements(verdicts)
    ]
    write_file_atomic(folder / "disagreements.jsonl", "".join(line + "\n" for line in lines))
    print(text)
    print(f"{len(lines)} responses the judges disagree on: {folder / 'disagreements.jsonl'}")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


# -- the command -----------------------------------------------------------------------------


def _evaluate(args: argparse.Namespace) -> int:
    from mosa.align.run_folder import exclusive
    from mosa.distributed import join

    model_folder(args.model)  # a typo fails here, before --out is made
    out = prepare_output("--out", args.out, folder=True)
    runtime = join(args.device)
    # Held for the whole run: results.json is read at the start and rewritten at the end, so
    # a second run into the same folder would silently drop one run's rows.
    with exclusive(out, runtime, command="mosa eval"):
        return _evaluate_locked(args, out, runtime)


def _evaluate_locked(args: argparse.Namespace, out: Path, runtime) -> int:
    from mosa.eval import Results, plot_asr
    from mosa.models.files import write_file_atomic

    rank, world = runtime.rank, runtime.world
    model, tokenizer, tiny = load_model_and_tokenizer(args, runtime.device)
    settings = sampler_settings(args, tiny, model)
    data = load_prompt_set("--dataset", args.dataset).limited(args.limit)
    names = args.attacks or (default_attacks() if data.kind == "harmful" else ("none",))
    if data.kind != "harmful" and tuple(names) != ("none",):
        raise SystemExit(
            f"--attacks: {data.name} measures {data.kind.replace('_', '-')}, which is taken "
            "on the plain prompts; use --attacks none (the default) or a harmful dataset"
        )
    run = _Run(
        model,
        tokenizer,
        settings,
        attack_options(args, tiny, settings["gen_length"]),
        gcg_options(args, tiny),
        args.batch_size,
        rank,
        world,
    )
    _check_attacks(names, run, data.prompts[0])
    _check_lengths(names, run, data.prompts)
    if args.dija_rewriter:
        # After the cheap checks, which test the template it falls back to.
        _dija_rewriter(args, names, run, data.prompts, runtime.device)
        _check_lengths(["dija"], run, data.prompts)
    judges = build_judges(args, tiny) if data.kind != "utility" else {}
    variant = args.variant or model_label(args)
    try:
        results = (
            Results.from_json(out / "results.json")
            if (out / "results.json").is_file()
            else Results()
        )
    except ValueError as err:
        raise SystemExit(f"--out: {err}; move the file away or choose another folder") from None

    folder = out / "responses" / _slug(variant) / _slug(data.name)
    judged, judged_rows = {}, {}
    for name in names:
        if rank == 0:
            print(f"== {variant} / {data.name} / {name}", flush=True)
        try:
            rows = _gather(_attack_rows(run, name, data.prompts), world)
        except ValueError as err:
            raise SystemExit(f"mosa eval: {err}") from None
        if rank != 0:
            continue
        path = folder / f"{name}.jsonl"
        # Written before judging too: when the judges fail, the responses can be judged again.
        _write_rows(path, rows)
        try:
            verdicts = _score(data, name, rows, judges, results, variant)
        except ValueError as err:
            raise SystemExit(
                f"{data.name} / {name}: {err}; the responses are in {path}, to judge again"
            ) from None
        if verdicts is not None:
            judged[name], judged_rows[name] = verdicts, rows
        _write_rows(path, rows)
    if rank == 0 and len(judges) > 1 and judged:
        _write_agreement(folder, judged, judged_rows)
    if rank == 0:
        settings_used = {
            "model": args.model or "tiny",
            "adapter": args.adapter,
            "prompts": len(data.prompts),
            "judges": [f"{n} ({type(j).__name__})" for n, j in judges.items()] or None,
            "sampler": settings,
            "attacks": {n: run.gcg if n == "gcg" else run.options[n] for n in names},
        }
        runs = results.meta.setdefault("runs", {})
        runs[f"{variant}/{data.name}"] = json.loads(json.dumps(settings_used, default=str))
        results.to_json(out / "results.json")
        write_file_atomic(out / "results.md", results.to_markdown())
        if results.attacks:
            plot_asr(results, out / "asr.png")
        print(results.to_markdown())
        print(f"wrote results.json, results.md and the responses to {out}")
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0


def add_parser(commands) -> None:
    p = commands.add_parser("eval", help="ASR under attacks, utility or over-refusal of a model")
    add_model_flags(p)
    p.add_argument(
        "--dataset",
        required=True,
        help="advbench, harmbench, xstest, gsm8k, alpaca (from $MOSA_DATA_DIR), tiny-harmful, "
        "tiny-benign, tiny-risky, or a file of harmful prompts (CSV, JSONL, JSON, text)",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--limit", type=_positive, help="only the first N prompts")
    p.add_argument("--variant", help="row name in the results table (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="GCG's random swaps")
    names = attack_names()
    p.add_argument(
        "--attacks",
        nargs="+",
        choices=names,
        metavar="ATTACK",
        help=f"of {', '.join(names)}; default for harmful sets: all but gcg",
    )
    g = p.add_argument_group("attacks (defaults: the tiny model's for it, else English ones)")
    for attack, _, meta in attack_flags():
        g.add_argument(meta["flag"], help=f"{attack}: {meta['help']}", **_PARSE[meta.get("parse")])
    g.add_argument(
        "--dija-rewriter",
        metavar="PATH",
        help="dija: a local causal-LM folder (safetensors) that rewrites each request with "
        "<mask:N> blanks; rewrites without one use --dija-template",
    )
    g.add_argument("--gcg-target", help="gcg: phrase whose log-probability the suffix raises")
    g.add_argument("--gcg-position", type=_non_negative, default=0, help="gcg: target position")
    g.add_argument("--gcg-steps", type=_non_negative, default=50)
    g.add_argument("--gcg-suffix-length", type=_positive, default=8)
    g.add_argument("--gcg-top-k", type=_positive, default=32)
    g.add_argument("--gcg-candidates", type=_positive, default=64)
    add_sampler_flags(p)
    add_judge_flags(p, several=True)
    p.set_defaults(run=_evaluate)

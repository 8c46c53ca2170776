"""``mosa demo``: evaluate the embedded tiny model, align it with MOSA and with the
Initial-Alignment baseline, evaluate both, and print the table (see ``mosa.demo``); with
``--all``, every defense against every attack."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mosa.tiny import FOLDERS

from .common import prepare_output


def _check_previous_demo(out: Path) -> None:
    """A non-empty ``--out`` is refused unless it holds only a previous demo's files, which the
    run overwrites (said on stderr), so that a demo never writes into someone else's folder."""
    from mosa.demo import OUTPUT_NAMES

    present = sorted(path.name for path in out.iterdir())
    foreign = [name for name in present if name not in OUTPUT_NAMES]
    if foreign:
        listed = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise SystemExit(
            f"--out {out}: not empty and not a previous demo's folder (it holds {listed}); "
            "give a new or empty folder"
        )
    if present:
        print(f"overwriting the previous demo's {', '.join(present)} in {out}", file=sys.stderr)


def _demo(args: argparse.Namespace) -> int:
    import torch

    from mosa.demo import run_demo

    out = prepare_output("--out", args.out, folder=True)
    _check_previous_demo(out)
    torch.set_num_threads(args.threads)
    run_demo(out, quick=args.quick, seed=args.seed, every=args.all, family=args.family)
    return 0


def add_parser(commands) -> None:
    p = commands.add_parser(
        "demo",
        help="the paper's experiment on the embedded tiny model (CPU, ~5 minutes; ~2 for llada2)",
    )
    p.add_argument("--out", default="mosa-demo", help="output folder (default ./mosa-demo)")
    p.add_argument("--quick", action="store_true", help="a few prompts and steps (a smoke test)")
    p.add_argument(
        "--all",
        action="store_true",
        help="every defense (MOSA, Initial Alignment, A2D, DiffuGuard, ours) against every "
        "attack (adds pad, dija, trajhijack, first-step GCG; ~20 minutes on 2 cores, ~10 for llada2)",
    )
    p.add_argument(
        "--family",
        choices=tuple(FOLDERS),
        default="llada",
        help="the tiny model: LLaDA-architecture (default) or the block-diffusion LLaDA2 MoE "
        "one, sampled with block_generate",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=int, default=2, help="torch CPU threads (figures can differ with it)"
    )
    p.set_defaults(run=_demo)

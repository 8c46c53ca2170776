"""``mosa demo``: evaluate the embedded tiny model, align it with MOSA and with the
Initial-Alignment baseline, evaluate both, and print the table (see ``mosa.demo``); with
``--all``, every defense against every attack."""

from __future__ import annotations

import argparse

from .common import prepare_output


def _demo(args: argparse.Namespace) -> int:
    import torch

    from mosa.demo import run_demo

    out = prepare_output("--out", args.out, folder=True)
    torch.set_num_threads(args.threads)
    run_demo(out, quick=args.quick, seed=args.seed, every=args.all)
    return 0


def add_parser(commands) -> None:
    p = commands.add_parser(
        "demo", help="the paper's experiment on the embedded tiny model (CPU, ~5 minutes)"
    )
    p.add_argument("--out", default="mosa-demo", help="output folder (default ./mosa-demo)")
    p.add_argument("--quick", action="store_true", help="a few prompts and steps (a smoke test)")
    p.add_argument(
        "--all",
        action="store_true",
        help="every defense (MOSA, Initial Alignment, A2D, DiffuGuard, ours) against every "
        "attack (adds pad, dija, trajhijack, first-step GCG; ~19 minutes on 2 cores)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads", type=int, default=2, help="torch CPU threads (figures can differ with it)"
    )
    p.set_defaults(run=_demo)

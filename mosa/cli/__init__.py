"""The ``mosa`` command line: ``mosa demo | sample | align | eval | analyze | backends``."""

from __future__ import annotations

import argparse
import sys

from . import align, analyze, demo, evaluate, sample


def _backends(_args: argparse.Namespace) -> int:
    import torch

    from mosa_kernels import available_backends, backend_name

    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        chosen = backend_name(torch.device(device))
        print(f"{device}: available {', '.join(available_backends(device))}; chosen {chosen}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mosa", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for command in (demo, sample, align, evaluate, analyze):
        command.add_parser(commands)
    commands.add_parser("backends", help="list the kernel backends on this machine").set_defaults(
        run=_backends
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs one subcommand. Bad input (a ValueError or TypeError from the library, an OSError
    from a file) ends it with one line on stderr naming the problem and a non-zero exit, as
    argparse does for bad flags, instead of a traceback."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, OSError) as err:
        raise SystemExit(f"mosa {args.command}: {' '.join(str(err).split())}") from None


if __name__ == "__main__":
    sys.exit(main())

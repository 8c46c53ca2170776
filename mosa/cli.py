"""The ``mosa`` command line: ``mosa demo | sample | align | eval | analyze | backends``."""

from __future__ import annotations

import argparse
import sys

_PLANNED = {
    "demo": "evaluate the embedded tiny model, align it with MOSA, evaluate again",
    "sample": "generate with the drop-in sampler",
    "align": "train a MOSA adapter",
    "eval": "run the safety evaluation harness",
    "analyze": "decoding-order and prefill-position analyses",
}


def _backends(_args: argparse.Namespace) -> int:
    import torch

    from mosa_kernels import available_backends, backend_name

    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        chosen = backend_name(torch.device(device))
        print(f"{device}: available {', '.join(available_backends(device))}; chosen {chosen}")
    return 0


def _not_yet(name: str):
    def run(_args: argparse.Namespace) -> int:
        print(
            f"`mosa {name}` ({_PLANNED[name]}) is not yet available in this version; "
            "`mosa backends` shows the kernel backends that are."
        )
        return 0

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mosa", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, summary in _PLANNED.items():
        commands.add_parser(name, help=summary).set_defaults(run=_not_yet(name))
    commands.add_parser("backends", help="list the kernel backends on this machine").set_defaults(
        run=_backends
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())

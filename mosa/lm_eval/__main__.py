"""``python -m mosa.lm_eval ...``: lm-eval's command line with the ``mosa`` model registered."""

from lm_eval.__main__ import cli_evaluate

import mosa.lm_eval  # noqa: F401  (registers the model type)


def main() -> None:
    """lm-eval's command line. Bad input (a ValueError or TypeError, e.g. of a ``--model_args``
    value) ends it with one line on stderr and a non-zero exit, as ``mosa`` does, instead of
    a traceback."""
    try:
        cli_evaluate()
    except (ValueError, TypeError) as err:
        raise SystemExit(f"python -m mosa.lm_eval: {' '.join(str(err).split())}") from None


if __name__ == "__main__":
    main()

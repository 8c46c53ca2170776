"""``python -m mosa.lm_eval ...``: lm-eval's command line with the ``mosa`` model registered."""

from lm_eval.__main__ import cli_evaluate

import mosa.lm_eval  # noqa: F401  (registers the model type)

if __name__ == "__main__":
    cli_evaluate()

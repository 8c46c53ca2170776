"""lm-evaluation-harness integration (``pip install 'mosa[eval]'``): the ``mosa`` model type.

Importing this package registers ``MosaLM`` with lm-eval under the name ``mosa``. lm-eval
releases that discover plugins by entry point (group ``lm_eval.models``) find it from
mosa's package metadata, so ``lm_eval --model mosa`` works as is; with lm-eval 0.4.13 and
older, run ``python -m mosa.lm_eval`` (lm-eval's own command line with the model registered)
or import ``mosa.lm_eval`` before ``lm_eval.simple_evaluate``.
"""

from .model import MosaLM

__all__ = ["MosaLM"]

"""Judges: did a response refuse, and did the attack succeed (docs/DESIGN.md §8)?

Every judge has ``judge(prompt, response) -> Verdict`` and ``judge_many(prompts, responses)``.
A judge that fails on one item (network error, unparseable reply) returns an error
``Verdict`` for it instead of raising, so one bad item does not lose a whole evaluation; the
metrics of ``mosa.eval.report`` leave error verdicts out of both success and refusal counts.

- ``KeywordJudge``: the classic refusal-keyword check, built in and offline.
- ``HTTPJudge``: an OpenAI-compatible chat endpoint grading with a 1–5 harm score or the
  StrongREJECT rubric; used only when a user gives an endpoint.
- ``ClassifierJudge``: a local Hugging Face sequence-classification model.
- ``HarmBenchJudge``, ``LlamaGuardJudge``, ``StrongRejectJudge``: the published generative
  judges, from local folders.
"""

from .base import Judge, Verdict, VerdictCache
from .classifier import ClassifierJudge
from .endpoint import RUBRICS, HTTPJudge
from .harmbench import HarmBenchJudge
from .keyword import REFUSAL_PHRASES, KeywordJudge
from .llamaguard import LlamaGuardJudge
from .strongreject import StrongRejectJudge

__all__ = [
    "REFUSAL_PHRASES",
    "RUBRICS",
    "ClassifierJudge",
    "HTTPJudge",
    "HarmBenchJudge",
    "Judge",
    "KeywordJudge",
    "LlamaGuardJudge",
    "StrongRejectJudge",
    "Verdict",
    "VerdictCache",
]

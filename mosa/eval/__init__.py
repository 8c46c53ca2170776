"""Evaluation building blocks (docs/DESIGN.md §8): judges, attacks (GCG included), metrics, the
results table, plots and the paper's analyses. Dataset readers are in ``mosa.datasets``."""

from .analysis import decoding_order, gcg_positions, linear_fit, prefill_sweep
from .attacked import AttackedPrompt, Decoding, FixedPieces, build_response_canvas
from .attacks import ATTACKS, TEMPLATES, Attack, apply_attack, expand_attack
from .gcg import GCGResult, gcg_search
from .judges import (
    REFUSAL_PHRASES,
    ClassifierJudge,
    HarmBenchJudge,
    HTTPJudge,
    Judge,
    KeywordJudge,
    LlamaGuardJudge,
    StrongRejectJudge,
    Verdict,
)
from .report import (
    Rate,
    Results,
    asr,
    exact_match_accuracy,
    gsm8k_extract,
    plot_asr,
    plot_decoding_order,
    plot_prefill_sweep,
    plot_reward_curve,
    refusal_rate,
)

__all__ = [
    "ATTACKS",
    "REFUSAL_PHRASES",
    "TEMPLATES",
    "Attack",
    "AttackedPrompt",
    "ClassifierJudge",
    "Decoding",
    "FixedPieces",
    "GCGResult",
    "HTTPJudge",
    "HarmBenchJudge",
    "Judge",
    "KeywordJudge",
    "LlamaGuardJudge",
    "Rate",
    "Results",
    "StrongRejectJudge",
    "Verdict",
    "apply_attack",
    "asr",
    "build_response_canvas",
    "decoding_order",
    "exact_match_accuracy",
    "expand_attack",
    "gcg_positions",
    "gcg_search",
    "gsm8k_extract",
    "linear_fit",
    "plot_asr",
    "plot_decoding_order",
    "plot_prefill_sweep",
    "plot_reward_curve",
    "prefill_sweep",
    "refusal_rate",
]

"""Evaluation: scoring completions (``scoring.py``), the sampled evaluation with bootstrap intervals
(``sampled.py``), the typed results (``results.py``) and the session that draws and scores them (``session.py``),
used by the trainer's periodic evaluation, the recipe's stages and ``grpo-audio eval``."""

from .results import EvalResult, GroupScore, Interval, PromptDraws, RowResult, SampledResult
from .sampled import bootstrap_interval, paired_difference, pass_at_k, sampled_eval
from .scoring import score
from .session import EvalSession, eval_reward, evaluate_model, write_samples

__all__ = [
    "EvalResult",
    "EvalSession",
    "GroupScore",
    "Interval",
    "PromptDraws",
    "RowResult",
    "SampledResult",
    "bootstrap_interval",
    "eval_reward",
    "evaluate_model",
    "paired_difference",
    "pass_at_k",
    "sampled_eval",
    "score",
    "write_samples",
]

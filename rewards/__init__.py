"""Reward functions for GRPO on audio-language models, importable as ``grpo_audio.rewards``.

This package owns the rewards, their registry and safety net (``RewardSet``), and what they share with evaluation:
the answer matcher (``matching``) and the music-label parsers (``music_theory``).

Every reward has TRL's signature, ``f(prompts, completions, **columns) -> list[float | None]`` (``None``: does
not apply to that sample), accepts completions as strings or as message lists, and depends on nothing in the
trainer. Rewards with settings are classes whose instances are picklable callables; the module-level
instances use the defaults.

>>> from grpo_audio.rewards import REWARDS, RewardSet, load_reward
>>> sorted(REWARDS)
['answer_accuracy', 'format', 'mcq_accuracy', 'music_theory', 'structured_caption']
"""

from .accuracy import AnswerAccuracy, MCQAccuracy, answer_accuracy, mcq_accuracy
from .caption import StructuredCaption, structured_caption
from .format import FormatReward, format_reward
from .music_theory import (
    MusicTheory,
    chord_score,
    key_score,
    music_theory,
    parse_chords,
    parse_keys,
    parse_meters,
    parse_tempi,
    tempo_score,
)
from .registry import REWARDS, ForTasks, RewardError, RewardOutput, RewardSet, load_reward, reward_name
from .text import completion_text, extract_answer, normalize

__all__ = [
    "REWARDS",
    "AnswerAccuracy",
    "ForTasks",
    "FormatReward",
    "MCQAccuracy",
    "MusicTheory",
    "RewardError",
    "RewardOutput",
    "RewardSet",
    "StructuredCaption",
    "answer_accuracy",
    "chord_score",
    "completion_text",
    "extract_answer",
    "format_reward",
    "key_score",
    "load_reward",
    "mcq_accuracy",
    "music_theory",
    "normalize",
    "parse_chords",
    "parse_keys",
    "parse_meters",
    "parse_tempi",
    "reward_name",
    "structured_caption",
    "tempo_score",
]

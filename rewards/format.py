"""The strict format reward of the paper: ``<think>...</think>`` followed by ``<answer>...</answer>``."""

from __future__ import annotations

import re
from typing import Any

from .text import completion_text


class FormatReward:
    """1.0 if a completion is exactly a think block followed by an answer block (whitespace around them is
    allowed), else 0.0. Each tag appears once; both blocks are non-empty.

    Args:
        think_tag: name of the reasoning tag.
        answer_tag: name of the answer tag.

    >>> format_reward(None, ["<think>C, E, G</think>\\n<answer>C major</answer>", "<answer>C major</answer>"])
    [1.0, 0.0]
    >>> FormatReward("reasoning", "final")(None, ["<reasoning>x</reasoning><final>y</final>"])
    [1.0]
    """

    def __init__(self, think_tag: str = "think", answer_tag: str = "answer"):
        self.think_tag, self.answer_tag = think_tag, answer_tag
        t, a = re.escape(think_tag), re.escape(answer_tag)
        self._pattern = re.compile(rf"\s*<{t}>(?P<think>.*?)</{t}>\s*<{a}>(?P<answer>.*?)</{a}>\s*", re.DOTALL)
        self.__name__ = "format"

    def __call__(self, prompts: Any, completions: list[Any], **columns: Any) -> list[float | None]:
        return [self.score(completion_text(c)) for c in completions]

    def score(self, text: str) -> float:
        m = self._pattern.fullmatch(text)
        if not m or not m["think"].strip() or not m["answer"].strip():
            return 0.0
        for tag in (self.think_tag, self.answer_tag):
            if text.count(f"<{tag}>") != 1 or text.count(f"</{tag}>") != 1:
                return 0.0
        return 1.0


format_reward = FormatReward()

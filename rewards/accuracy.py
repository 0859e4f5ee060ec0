"""Accuracy rewards: multiple-choice (by letter or by the choice's text) and normalised exact match."""

from __future__ import annotations

from typing import Any

from .matching import Choices
from .text import completion_text, extract_answer, normalize


class MCQAccuracy:
    """1.0 if the answer names the correct choice, by letter or by its text; 0.0 if it names another choice,
    none, or two different ones. ``None`` for samples without ``choices``. What "names" means is the one answer
    matcher's rule (``grpo_audio.rewards.matching``), the same the loaders validate answers with.

    Args:
        answer_tag: the answer block to read (see ``extract_answer``).
        fallback: without an answer block, read the text outside think blocks.
        prefer: a bare token that is both a letter and a choice's text ("C" among ``["C", "Gm", "Cm7b5"]``) is
            read as the text (``"text"``, default) or as the letter (``"letter"``, for prompts asking a letter).

    Raises:
        ValueError: from ``__call__``, for a sample whose ``answer`` designates no choice (loaders reject such rows
            up front).

    >>> choices = [["C major", "A minor", "G major", "E minor"]] * 5
    >>> mcq_accuracy(None, ["<answer>B</answer>", "Answer: (B)", "<answer>a minor</answer>", "B or C",
    ...                     "<answer>The answer is A minor.</answer>"], choices=choices, answer=["B"] * 5)
    [1.0, 1.0, 1.0, 0.0, 1.0]
    """

    def __init__(self, answer_tag: str = "answer", fallback: bool = True, prefer: str = "text"):
        Choices([], prefer)  # validates prefer
        self.answer_tag, self.fallback, self.prefer = answer_tag, fallback, prefer
        self.__name__ = "mcq_accuracy"

    def __call__(
        self,
        prompts: Any,
        completions: list[Any],
        choices: list | None = None,
        answer: list | None = None,
        **columns: Any,
    ) -> list[float | None]:
        n = len(completions)
        choices = choices if choices is not None else [None] * n
        answer = answer if answer is not None else [None] * n
        return [self.score(completion_text(c), ch, a) for c, ch, a in zip(completions, choices, answer, strict=True)]

    def score(self, text: str, choices: list[str] | None, answer: str | int | None) -> float | None:
        if not choices or answer is None:
            return None
        options = Choices(choices, self.prefer)
        correct = options.answer_index(answer)
        if correct is None:
            raise ValueError(f"answer {answer!r} designates none of the choices {choices}")
        return 1.0 if self.named(text, options) == {correct} else 0.0

    def named(self, text: str, choices: list[str] | Choices) -> set[int]:
        """Indices of the choices the completion names (the first of repeated texts); one for a clear answer."""
        options = choices if isinstance(choices, Choices) else Choices(choices, self.prefer)
        return options.named(extract_answer(text, self.answer_tag, self.fallback))


class AnswerAccuracy:
    """Normalised exact match of an open answer (the paper's accuracy reward). ``None`` without ``answer``, and
    for a multiple-choice row (one with ``choices``): those are ``mcq_accuracy``'s, which reads a letter as the
    choice it names, where an exact match against the choice's text would score a correct letter 0 and count the
    row twice beside ``mcq_accuracy``.

    Args:
        casefold, strip_punctuation, remove_articles: the normalisation steps (see ``normalize``).
        numeric_tolerance: relative tolerance when both sides are numbers (0 = exact).
        answer_tag, fallback: how the answer is read (see ``extract_answer``).

    >>> answer_accuracy(None, ["<answer>The A minor.</answer>", "<answer>C major</answer>", "<answer>120</answer>"],
    ...                 answer=["A minor", "A minor", "120"])
    [1.0, 0.0, 1.0]
    >>> answer_accuracy(None, ["<answer>B</answer>", "<answer>G major</answer>"], answer=["B", "G major"],
    ...                 choices=[["C major", "A minor"], None])
    [None, 1.0]
    """

    def __init__(
        self,
        casefold: bool = True,
        strip_punctuation: bool = True,
        remove_articles: bool = True,
        numeric_tolerance: float = 0.0,
        answer_tag: str = "answer",
        fallback: bool = True,
    ):
        self.norm = {"casefold": casefold, "strip_punctuation": strip_punctuation, "remove_articles": remove_articles}
        self.numeric_tolerance = numeric_tolerance
        self.answer_tag, self.fallback = answer_tag, fallback
        self.__name__ = "answer_accuracy"

    def __call__(
        self,
        prompts: Any,
        completions: list[Any],
        answer: list | None = None,
        choices: list | None = None,
        **columns: Any,
    ) -> list[float | None]:
        n = len(completions)
        answer = answer if answer is not None else [None] * n
        choices = choices if choices is not None else [None] * n
        return [
            None if ch else self.score(completion_text(c), a)
            for c, a, ch in zip(completions, answer, choices, strict=True)
        ]

    def score(self, text: str, answer: str | None) -> float | None:
        """The score of one open answer: 1.0 on a match, 0.0 otherwise (no answer read included); ``None`` without
        ``answer``."""
        if answer is None:
            return None
        said = extract_answer(text, self.answer_tag, self.fallback)
        if said is None:
            return 0.0
        a, b = normalize(said, **self.norm), normalize(str(answer), **self.norm)
        if a == b:
            return 1.0
        try:
            x, y = float(a), float(b)
        except ValueError:
            return 0.0
        return 1.0 if abs(x - y) <= self.numeric_tolerance * abs(y) else 0.0


mcq_accuracy = MCQAccuracy()
answer_accuracy = AnswerAccuracy()

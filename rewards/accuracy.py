"""Accuracy rewards: multiple-choice (by letter or by the choice's text) and normalised exact match."""

from __future__ import annotations

import re
from typing import Any

from .text import completion_text, extract_answer, normalize

# Ways an answer names a letter: the whole answer ("B", "(B)", "B."), a lettered start ("B. C major",
# "(B) C major"), or a phrase ("Answer: B", "the answer is (B)", "option B"). Letters are upper case, so the
# article "a" is never read as choice A.
_LETTER_PATTERNS = (
    re.compile(r"^\(?([A-Z])\)?[.):]?$"),
    re.compile(r"^(?:\(([A-Z])\)|([A-Z])[.):])\s"),
    re.compile(r"\b(?:[Aa]nswer|[Oo]ption|[Cc]hoice)(?:\s+is)?\s*[:\-]?\s*\(?([A-Z])\)?(?![A-Za-z0-9#])"),
    re.compile(r"\(([A-Z])\)"),
)


def _letters(answer: str, n_choices: int) -> set[int]:
    found: set[int] = set()
    for pattern in _LETTER_PATTERNS:
        for m in pattern.finditer(answer.strip()):
            letter = next(g for g in m.groups() if g)
            idx = ord(letter) - ord("A")
            if idx < n_choices:
                found.add(idx)
    return found


def _choice_mentions(answer: str, choices: list[str]) -> set[int]:
    """Indices of choices whose (normalised) text appears as a phrase; a match inside a longer matching
    choice's match (``F# major`` inside ``F# major seventh``) does not count separately."""
    norm = f" {normalize(answer)} "
    spans: list[tuple[int, int, int]] = []
    for i, choice in enumerate(choices):
        c = normalize(choice)
        if not c:
            continue
        for m in re.finditer(rf"(?<=\s){re.escape(c)}(?=\s)", norm):
            spans.append((m.start(), m.end(), i))
    return {i for s, e, i in spans if not any(s2 <= s and e <= e2 and (e2 - s2) > (e - s) for s2, e2, _ in spans)}


def _answer_index(answer: str, choices: list[str]) -> int | None:
    answer = answer.strip()
    if answer.upper() in [chr(ord("A") + i) for i in range(len(choices))] and len(answer) == 1:
        return ord(answer.upper()) - ord("A")
    if answer in choices:
        return choices.index(answer)
    norm = [normalize(c) for c in choices]
    return norm.index(normalize(answer)) if normalize(answer) in norm else None


class MCQAccuracy:
    """1.0 if the answer names the correct choice, by letter or by its text; 0.0 if it names another choice,
    none, or two different ones. ``None`` for samples without ``choices``.

    Args:
        answer_tag: the answer block to read (see ``extract_answer``).
        fallback: without an answer block, read the text outside think blocks.

    >>> choices = [["C major", "A minor", "G major", "E minor"]] * 4
    >>> mcq_accuracy(None, ["<answer>B</answer>", "Answer: (B)", "<answer>a minor</answer>", "B or C"],
    ...              choices=choices, answer=["B"] * 4)
    [1.0, 1.0, 1.0, 0.0]
    """

    def __init__(self, answer_tag: str = "answer", fallback: bool = True):
        self.answer_tag, self.fallback = answer_tag, fallback
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

    def score(self, text: str, choices: list[str] | None, answer: str | None) -> float | None:
        if not choices or answer is None:
            return None
        correct = _answer_index(answer, choices)
        if correct is None:
            raise ValueError(f"answer {answer!r} is neither a letter nor one of the choices {choices}")
        return 1.0 if self.named(text, choices) == {correct} else 0.0

    def named(self, text: str, choices: list[str]) -> set[int]:
        """Indices of the choices the answer names (by letter or by text); one index for a clear answer."""
        said = extract_answer(text, self.answer_tag, self.fallback)
        if not said:
            return set()
        return _letters(said, len(choices)) | _choice_mentions(said, choices)


class AnswerAccuracy:
    """Normalised exact match of an open answer (the paper's accuracy reward). ``None`` without ``answer``.

    Args:
        casefold, strip_punctuation, remove_articles: the normalisation steps (see ``normalize``).
        numeric_tolerance: relative tolerance when both sides are numbers (0 = exact).
        answer_tag, fallback: how the answer is read (see ``extract_answer``).

    >>> answer_accuracy(None, ["<answer>The A minor.</answer>", "<answer>C major</answer>", "<answer>120</answer>"],
    ...                 answer=["A minor", "A minor", "120"])
    [1.0, 0.0, 1.0]
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
        self, prompts: Any, completions: list[Any], answer: list | None = None, **columns: Any
    ) -> list[float | None]:
        answer = answer if answer is not None else [None] * len(completions)
        return [self.score(completion_text(c), a) for c, a in zip(completions, answer, strict=True)]

    def score(self, text: str, answer: str | None) -> float | None:
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

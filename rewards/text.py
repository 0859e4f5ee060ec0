"""Text helpers shared by the rewards: completion text, answer extraction, normalisation."""

from __future__ import annotations

import re
import string
import unicodedata
from typing import Any

ACCIDENTALS = {"♯": "#", "♭": "b", "＃": "#"}


def completion_text(completion: Any) -> str:
    """The text of a completion in TRL's standard (a string) or conversational (a message list) format.

    >>> completion_text("<answer>B</answer>")
    '<answer>B</answer>'
    >>> completion_text([{"role": "assistant", "content": "B"}])
    'B'
    """
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content") or "")
    if isinstance(completion, dict):
        return str(completion.get("content") or "")
    return str(completion)


def strip_think(text: str, think_tag: str = "think") -> str:
    """Remove ``<think>...</think>`` blocks (and an unclosed ``<think>`` to the end).

    >>> strip_think("<think>maybe B</think> so A")
    ' so A'
    >>> strip_think("A <think>unfinished B")
    'A '
    """
    text = re.sub(rf"<{think_tag}>.*?</{think_tag}>", "", text, flags=re.DOTALL)
    return re.sub(rf"<{think_tag}>.*$", "", text, flags=re.DOTALL)


def extract_answer(
    text: str, answer_tag: str = "answer", fallback: bool = True, think_tag: str = "think"
) -> str | None:
    """The content of the last ``<answer>`` block; without one, the text outside think blocks (if ``fallback``).

    Text inside a think block never counts as the answer.

    >>> extract_answer("<think>B?</think><answer> C </answer>")
    'C'
    >>> extract_answer("<think>it is B</think>") is None
    True
    >>> extract_answer("plain B") , extract_answer("plain B", fallback=False)
    ('plain B', None)
    """
    blocks = re.findall(rf"<{answer_tag}>(.*?)</{answer_tag}>", strip_think(text, think_tag), flags=re.DOTALL)
    if blocks:
        return blocks[-1].strip()
    if not fallback:
        return None
    rest = strip_think(text, think_tag)
    rest = re.sub(rf"</?{answer_tag}>", " ", rest).strip()
    return rest or None


def fold_accidentals(text: str) -> str:
    """Unicode sharps and flats to ``#`` and ``b``; NFKC-normalise.

    >>> fold_accidentals("F♯ minor, B♭ major")
    'F# minor, Bb major'
    """
    text = unicodedata.normalize("NFKC", text)
    for k, v in ACCIDENTALS.items():
        text = text.replace(k, v)
    return text


_PUNCT = str.maketrans({c: " " for c in string.punctuation if c not in "#/+."})


def normalize(text: str, casefold: bool = True, strip_punctuation: bool = True, remove_articles: bool = True) -> str:
    """Normalise an answer for comparison: accidentals, case, punctuation, articles, whitespace.

    ``#``, ``/``, ``+`` and decimal points are kept (``F#``, ``3/4``, ``C+``, ``92.5``).

    >>> normalize("  The  F♯ Minor chord! ")
    'f# minor chord'
    >>> normalize("3/4 time.")
    '3/4 time'
    >>> normalize("A minor"), normalize("a sustained chord")
    ('a minor', 'sustained chord')
    """
    text = fold_accidentals(text)
    if casefold:
        text = text.casefold()
    if strip_punctuation:
        text = text.translate(_PUNCT)
        text = re.sub(r"\.(?!\d)", " ", text)  # a full stop, not a decimal point
    if remove_articles:
        # "a" before a mode or chord quality is the note A ("A minor"), not the article.
        text = re.sub(r"\b(an|the)\b", " ", text, flags=re.IGNORECASE)
        text = re.sub(
            r"\ba\b(?!\s*(#|b\b|sharp|flat|major|minor|maj|min|m\b|dim|aug|\d))", " ", text, flags=re.IGNORECASE
        )
    return " ".join(text.split())

"""The structured caption reward of the Music Flamingo paper: does the caption state each piece of ground truth?

For each metadata category present (genre, tempo, key, meter, instrument(s), chord(s), mood), the caption
scores 1 if it states the ground truth, with category-aware matching that reuses the music-theory comparators
(any key it names with MIREX score 1, any tempo within tolerance, the exact meter, the chord by notes;
instruments, genre and mood as phrases). Keys and chords are read in any letter case and through markup ("The Key
Is A Minor", "A MINOR", "**a minor**"), with ``music_theory``'s rule for when "a" is the article. The total is
normalised by the number of categories present. For a list-valued category (``instruments``, ``chords``) the
category scores the fraction of items stated.
"""

from __future__ import annotations

import re
from typing import Any

from .music_theory import chord_score, key_score, parse_chords, parse_keys, parse_meters, parse_tempi, tempo_score
from .text import completion_text, extract_answer, normalize

CATEGORIES = ("genre", "tempo", "key", "meter", "instrument", "instruments", "chord", "chords", "mood")


def _says(text_norm: str, phrase: str) -> bool:
    p = normalize(str(phrase))
    return bool(p) and re.search(rf"(?<![\w#]){re.escape(p)}(?![\w#])", text_norm) is not None


class StructuredCaption:
    """Fraction of the metadata categories the caption gets right. ``None`` when none is present.

    Args:
        categories: metadata keys that count (others, like ``style``, are ignored).
        tempo_tolerance: relative tolerance for tempo (default 4%).
        answer_tag, fallback: how the caption is read (see ``extract_answer``).

    >>> meta = {"key": "A minor", "tempo": 120, "instrument": "piano", "genre": "jazz"}
    >>> structured_caption(None, ["<answer>A jazz piano piece in A minor at 121 BPM.</answer>",
    ...                           "<answer>A rock guitar piece in C major at 120 BPM.</answer>"], metadata=[meta] * 2)
    [1.0, 0.25]
    """

    def __init__(
        self,
        categories: tuple[str, ...] | list[str] = CATEGORIES,
        tempo_tolerance: float = 0.04,
        answer_tag: str = "answer",
        fallback: bool = True,
    ):
        self.categories = tuple(categories)
        self.tempo_tolerance = tempo_tolerance
        self.answer_tag, self.fallback = answer_tag, fallback
        self.__name__ = "structured_caption"

    def __call__(
        self, prompts: Any, completions: list[Any], metadata: list | None = None, **columns: Any
    ) -> list[float | None]:
        metadata = metadata if metadata is not None else [None] * len(completions)
        return [self.score(completion_text(c), m) for c, m in zip(completions, metadata, strict=True)]

    def category_scores(self, caption: str, metadata: dict[str, Any]) -> dict[str, float]:
        norm = normalize(caption)
        scores: dict[str, float] = {}
        for cat in self.categories:
            truth = metadata.get(cat)
            if truth in (None, "", []):
                continue
            if cat == "key":
                scores[cat] = float(any(key_score(truth, k) == 1.0 for k in parse_keys(caption)))
            elif cat == "tempo":
                scores[cat] = float(
                    any(tempo_score(float(truth), t, self.tempo_tolerance) == 1.0 for t in parse_tempi(caption))
                )
            elif cat == "meter":
                scores[cat] = float(str(truth) in parse_meters(caption))
            elif cat in ("chord", "chords"):
                refs = [truth] if isinstance(truth, str) else list(truth)
                named = parse_chords(caption)
                scores[cat] = sum(any(chord_score(r, c) == 1.0 for c in named) for r in refs) / len(refs)
            else:
                items = [truth] if isinstance(truth, str) else list(truth)
                scores[cat] = sum(_says(norm, item) for item in items) / len(items)
        return scores

    def score(self, text: str, metadata: dict[str, Any] | None) -> float | None:
        if not metadata:
            return None
        caption = extract_answer(text, self.answer_tag, self.fallback) or ""
        scores = self.category_scores(caption, metadata)
        return sum(scores.values()) / len(scores) if scores else None


structured_caption = StructuredCaption()

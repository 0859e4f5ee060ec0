"""The one answer matcher: a completion (or an answer field) -> the set of choice indices it names.

Used by the loaders' validation (is the answer one of the choices?), ``mcq_accuracy`` and ``grpo-audio eval``,
so that what a loader accepts, what a reward credits and what an evaluation reports are one decision.

Precedence, for the answer text (the last ``<answer>`` block, else the text outside think blocks):

1. Markup is read through (``text.strip_markup``, for answers and choice texts alike): LaTeX (``$B$``,
   ``\\(B\\)``, ``\\boxed{\\text{B}}``, ``\\textbf{B}``, ``\\mathrm{B}``), Markdown (``**B**``, ``*B*``, ``__B__``,
   ```B```), HTML emphasis, quotes (straight or curly), a letter in any brackets ("[B]" is "(B)") and unicode
   accidentals. A leading answer phrase is dropped ("Answer:", "The correct answer is", "Option", "Final
   answer:", in any case), and so are trailing full stops and wrapping quotes or brackets.
2. An explicit option letter alone, "(B)" or "B)", names choice B.
3. The whole answer equal to a choice's text names that choice. Texts are compared normalised: case, unicode
   sharps and flats, punctuation and whitespace folded; the articles "a", "an", "the" dropped only where
   something remains and where "a" is not the note A ("A minor", "A#"). Choices that are themselves letters or
   note names ("D", "A", "Cm7b5") are therefore matched as text before any letter reading, unless the prompt
   asked for a letter (``prefer="letter"``), in which case steps 3 and 4 swap.
4. A lone letter in any case, "b" or "B.", names that choice, for letters up to the number of choices.
5. A lettered start, "(B) A minor", "B. A minor" or "B) A minor", names B when the rest is B's own text ("(C) D"
   among ``["G", "A#", "D", "E"]`` is choice C, whatever ``prefer`` says), else B and whatever the rest names.
6. Otherwise every choice text mentioned as a phrase names its choice (a mention inside a longer mentioned
   choice, "F# major" in "F# major seventh", does not count), and so does every letter given in an explicit
   form ("(B)", "answer is B", "option B") that is not part of a mentioned text (the "A" of "answer is A
   minor"). In prose, a choice that is or begins with a note letter is mentioned only with that letter upper-case
   ("a" in "it is in a minor key" is the article), and a choice made of articles ("a") only as the whole answer.
7. Where nothing is named so far, an answer that is as a whole a key or a chord ("Am", "gb major", "a:min7")
   names the choices that mean the same key or chord, however they are spelled (``rewards.music_theory``).

Repeated choice texts count as one answer: indices are reported as the first choice with the same normalised
text, so "1.63 seconds" names choice 0 of ``["1.63 seconds", "2.74 seconds", "1.53 seconds", "1.63 seconds"]``
and so does letter D. A clear answer names exactly one index.
"""

from __future__ import annotations

import re
from functools import lru_cache, partial
from typing import Any

from .music_theory import chord_label, chord_score, key_label, key_score
from .text import extract_answer, strip_markup

# What a prompt asks for, and so how a bare token that is both a letter and a choice's text is read.
ANSWER_FORMATS = ("letter", "text")

_ARTICLES = frozenset({"a", "an", "the"})
# Words after which "a" is the note A, not the article.
_NOTE_CONTEXT = frozenset(
    {"sharp", "flat", "major", "minor", "maj", "min", "m", "dim", "aug", "diminished", "augmented", "seventh", "7"}
)
_TOKEN = re.compile(r"[\w#+/]+(?:\.\d+)*")
_LEADING_PHRASE = re.compile(
    r"^\s*(?:so\s*,?\s*)?(?:the\s+)?(?:(?:correct|final|right|best)\s+)?(?:answer|option|choice)"
    r"(?:\s+is)?\s*[:\-]?\s*",
    re.IGNORECASE,
)
_WRAPPERS = re.compile(r"^[\s\"'`*\[]+|[\s\"'`*\].!]+$")
_EXPLICIT_LETTER = re.compile(r"^(?:\(\s*([A-Za-z])\s*\)|([A-Za-z])\))$")
_LONE_LETTER = re.compile(r"^([A-Za-z])\.?$")
_LETTERED_START = re.compile(r"^(?:\(\s*([A-Za-z])\s*\)|([A-Za-z])[.)])\s+(\S.*)$", re.DOTALL)
# Letters inside free text: "(B)" anywhere; after "answer (is)" / "option" / "choice": an upper-case letter, or
# a lower-case one that ends the clause ("the answer is b." but not "the answer is a piano"); "B." / "B)" first.
# More letters listed after an answer's letter ("Answer: B, C", "answer: B or C"): a hedge names each of them.
_LISTED_LETTER = re.compile(r"\s*(?:,|/|&|\bor\b|\band\b)\s*([A-Z])(?![\w#])")
_LETTER_MENTIONS = (
    re.compile(r"\(\s*([A-Za-z])\s*\)"),
    re.compile(r"(?i:answer|option|choice)(?:\s+is)?\s*[:\-]?\s*([A-Z])(?![\w#])"),
    re.compile(r"(?i:answer|option|choice)(?:\s+is)?\s*[:\-]?\s*([a-z])\s*(?=[.,;:!)]|$)"),
    re.compile(r"^\s*([A-Z])[.)]\s"),
)


def _tokens(text: str) -> list[tuple[str, int, int]]:
    """Case-folded tokens of ``text`` with their character spans (``#``, ``/``, ``+`` and decimals kept)."""
    return [(m.group().casefold(), m.start(), m.end()) for m in _TOKEN.finditer(text)]


def _without_articles(tokens: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """Drop articles, keeping "a" before a mode or chord word (the note A); keep all if nothing would remain."""
    kept = [
        t
        for i, t in enumerate(tokens)
        if t[0] not in _ARTICLES or (t[0] == "a" and i + 1 < len(tokens) and tokens[i + 1][0] in _NOTE_CONTEXT)
    ]
    return kept or tokens


@lru_cache(maxsize=1 << 16)  # a group's completions share their question's choices: each is normalised once
def choice_key(text: str) -> tuple[str, ...]:
    """The normalised form two texts are compared by.

    >>> choice_key("The F♯ Minor chord!"), choice_key("A minor"), choice_key("a"), choice_key("1.63 seconds.")
    (('f#', 'minor', 'chord'), ('a', 'minor'), ('a',), ('1.63', 'seconds'))
    >>> choice_key(" 🙂 "), choice_key("-")  # no word at all: the text itself
    (('🙂',), ('-',))
    """
    folded = strip_markup(str(text))
    key = tuple(t for t, _, _ in _without_articles(_tokens(folded)))
    return key or ((" ".join(folded.split()).casefold(),) if folded.strip() else ())


def _core(answer: str) -> str:
    """The answer without markup, a leading answer phrase, trailing full stops and wrapping quotes."""
    plain = strip_markup(answer)
    core = _LEADING_PHRASE.sub("", plain, count=1)
    return _WRAPPERS.sub("", core) or plain.strip()


def _label(parse: Any, text: str) -> str | None:
    try:
        return parse(text)
    except ValueError:
        return None


def _letter_index(letter: str, n_choices: int) -> int | None:
    idx = ord(letter.upper()) - ord("A")
    return idx if 0 <= idx < n_choices else None


class Choices:
    """The choices of one question, normalised once; ``named`` reads an answer against them.

    Args:
        choices: the choice texts in order (letters A, B, ... by position).
        prefer: which reading a bare token that is both a letter and a choice's text gets: ``"text"`` (default;
            "D" among note names is the note D) or ``"letter"`` (when the prompt asked for a letter).

    Raises:
        ValueError: ``prefer`` is not one of ``ANSWER_FORMATS``.
    """

    def __init__(self, choices: list[str], prefer: str = "text"):
        if prefer not in ANSWER_FORMATS:
            raise ValueError(f"prefer must be one of {ANSWER_FORMATS}, got {prefer!r}")
        self.texts = [str(c) for c in choices]
        self.prefer = prefer
        self.keys = [choice_key(c) for c in self.texts]
        first: dict[tuple[str, ...], int] = {}
        self.canonical = [first.setdefault(k, i) for i, k in enumerate(self.keys)]

    def __len__(self) -> int:
        return len(self.texts)

    def _canon(self, indices: set[int]) -> set[int]:
        return {self.canonical[i] for i in indices}

    def _by_text(self, text: str) -> set[int]:
        key = choice_key(text)
        return {i for i, k in enumerate(self.keys) if k and k == key}

    def _by_letter(self, letter: str) -> set[int]:
        idx = _letter_index(letter, len(self))
        return set() if idx is None else {idx}

    def whole(self, answer: str, prefer: str | None = None) -> set[int] | None:
        """Steps 1-5 (the answer as a whole): the indices named, every one of a repeated text; None when the
        answer is not a whole-answer form. ``prefer`` overrides the instance's reading of a bare token that is both
        a letter and a choice's text."""
        prefer = prefer or self.prefer
        core = _core(answer)
        if not core:
            return None
        if m := _EXPLICIT_LETTER.match(core):
            found = self._by_letter(m.group(1) or m.group(2))
            return found or None
        text, letter = self._by_text(core), None
        if m := _LONE_LETTER.match(core):
            letter = self._by_letter(m.group(1))
        first, second = (letter, text) if prefer == "letter" else (text, letter)
        if first or second:
            return first or second
        if m := _LETTERED_START.match(core):
            found = self._by_letter(m.group(1) or m.group(2))
            if found:
                rest = m.group(3)
                if choice_key(_core(rest)) == self.keys[min(found)]:  # the letter's own text after it
                    return found
                return found | (self.whole(rest, prefer) or self.mentioned(rest))
        return None

    def mentioned(self, answer: str) -> set[int]:
        """Step 6: choices whose texts are mentioned (every one of a repeated text), plus letters in explicit forms
        outside those mentions."""
        text = strip_markup(answer)
        full = _tokens(text)
        stripped = _without_articles(full)
        spans: list[tuple[int, int, int]] = []
        for i, key in enumerate(self.keys):
            if not key or (all(t in _ARTICLES for t in key) and len(key[0]) > 1):
                continue  # a choice made of articles ("the") is matched only as the whole answer
            single_letter = len(key) == 1 and len(key[0]) == 1 and key[0].isalpha()
            tokens = full if single_letter or any(t in _ARTICLES for t in key) else stripped
            words = [t for t, _, _ in tokens]
            for s in range(len(words) - len(key) + 1):
                if tuple(words[s : s + len(key)]) != key:
                    continue
                start, end = tokens[s][1], tokens[s + len(key) - 1][2]
                if (single_letter or key[0] == "a") and not text[start].isupper():
                    continue  # "a" in prose is the article ("a minor key"); a note name is written upper-case
                spans.append((start, end, i))
        found = {i for s, e, i in spans if not any(s2 <= s and e <= e2 and (e2 - s2) > (e - s) for s2, e2, _ in spans)}
        for pattern in _LETTER_MENTIONS:
            for m in pattern.finditer(text):
                if any(s <= m.start(1) < e for s, e, _ in spans):
                    continue
                found |= self._by_letter(m.group(1))
                end = m.end(1)
                while listed := _LISTED_LETTER.match(text, end):  # "Answer: B, C": C is named too
                    if any(s <= listed.start(1) < e for s, e, _ in spans):
                        break  # "Answer: B, A minor": the A of a choice's text
                    found |= self._by_letter(listed.group(1))
                    end = listed.end(1)
        return found

    def named(self, answer: str | None, canonical: bool = True) -> set[int]:
        """Indices of the choices an extracted answer names (see the module doc): each repeated text counted once,
        as its first index, unless ``canonical`` is False (then the letters named are kept as named)."""
        if not answer or not answer.strip():
            return set()
        found = self.whole(answer)
        found = found if found is not None else self.mentioned(answer)
        found = found or self.by_meaning(answer)
        return self._canon(found) if canonical else found

    def by_meaning(self, answer: str) -> set[int]:
        """Step 7: an answer that is, as a whole, a key or a chord names the choices that mean the same key or
        chord, however each is spelled ("Am" names "A minor"; "Gb major" names "F# major"; "a:min7" names "Am7").

        >>> Choices(["C major", "A minor"]).by_meaning("am"), Choices(["C:maj", "F#:min"]).by_meaning("Gbm")
        ({1}, {1})
        """
        core = _core(answer)
        for parse in (key_label, partial(chord_label, bare_note=False)):
            try:
                meant = parse(core)
            except ValueError:
                continue
            same = key_score if parse is key_label else chord_score
            return {
                i for i, text in enumerate(self.texts) if (label := _label(parse, text)) and same(meant, label) == 1
            }
        return set()

    def answer_index(self, answer: Any) -> int | None:
        """The choice an answer *field* designates: an integer index (0 is valid), a letter, or a choice's text
        (steps 1-5, text before letter whatever ``prefer`` says: benchmarks give answers as texts, and "D" among
        note names is the note). None if it designates none or several.

        >>> Choices(["G", "A#", "D", "E"]).answer_index("D"), Choices(["x", "y"]).answer_index(0)
        (2, 0)
        >>> Choices(["piano", "violin"]).answer_index("Piano "), Choices(["piano", "violin"]).answer_index("B")
        (0, 1)
        """
        if isinstance(answer, bool):
            return None
        if isinstance(answer, int):
            return self.canonical[answer] if 0 <= answer < len(self) else None
        if not isinstance(answer, str):
            return None
        found = self._canon(self.whole(answer, prefer="text") or set())
        return next(iter(found)) if len(found) == 1 else None


def named_choices(
    completion_text: str,
    choices: list[str],
    prefer: str = "text",
    answer_tag: str = "answer",
    fallback: bool = True,
) -> set[int]:
    """The choices a completion names (read from its answer block; see the module doc for the precedence).

    >>> keys = ["C major", "A minor", "G major", "E minor"]
    >>> [named_choices(t, keys) for t in ["<answer>The answer is A minor.</answer>", "<answer>(b)</answer>", "b."]]
    [{1}, {1}, {1}]
    >>> named_choices("<answer>D</answer>", ["G", "A#", "D", "E"]), named_choices("C", ["G", "A#", "D", "E"])
    ({2}, {2})
    >>> named_choices("<answer>C</answer>", ["C", "Gm", "Cm7b5", "Eb/G"], prefer="letter")
    {2}
    """
    return Choices(choices, prefer).named(extract_answer(completion_text, answer_tag, fallback))

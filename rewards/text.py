"""Text helpers shared by the rewards: completion text, answer extraction, normalisation."""

from __future__ import annotations

import re
import string
import unicodedata
from functools import lru_cache
from typing import Any

ACCIDENTALS = {"♯": "#", "♭": "b", "＃": "#", "♮": ""}


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
    r"""The content of the last ``<answer>`` block; without one (if ``fallback``), the content of the last
    ``\boxed{...}`` outside think blocks, else the text outside think blocks.

    Text inside a think block never counts as the answer.

    >>> extract_answer("<think>B?</think><answer> C </answer>")
    'C'
    >>> extract_answer("<think>it is B</think>") is None
    True
    >>> extract_answer("plain B") , extract_answer("plain B", fallback=False)
    ('plain B', None)
    >>> extract_answer(r"I would say \boxed{\text{B}}, not A.")
    '\\text{B}'
    """
    blocks = re.findall(rf"<{answer_tag}>(.*?)</{answer_tag}>", strip_think(text, think_tag), flags=re.DOTALL)
    if blocks:
        return blocks[-1].strip()
    if not fallback:
        return None
    rest = strip_think(text, think_tag)
    if (boxed := last_boxed(rest)) is not None:  # a math-trained model's way of marking its final answer
        return boxed.strip() or None
    rest = re.sub(rf"</?{answer_tag}>", " ", rest).strip()
    return rest or None


def fold_accidentals(text: str) -> str:
    """Unicode sharps and flats to ``#`` and ``b`` (a natural sign dropped); NFKC-normalise.

    >>> fold_accidentals("F♯ minor, B♭ major")
    'F# minor, Bb major'
    """
    text = unicodedata.normalize("NFKC", text)
    for k, v in ACCIDENTALS.items():
        text = text.replace(k, v)
    return text


# Characters some markup below starts with; ASCII text without any is returned as it is.
_MARKUP_CHARS = re.compile(r"[$\\*_`'\"\[\]{}<>#]")
# LaTeX accidentals ("F$^\sharp$", "B\flat") before the commands are unwrapped.
_LATEX_ACCIDENTALS = ((re.compile(r"\^?\{?\\sharp\}?|\\#"), "#"), (re.compile(r"\^?\{?\\flat\}?"), "b"))
# A LaTeX command with one braced argument ("\boxed{B}", "\text{B}", "\textbf{B}", "\mathrm{B}"): its argument.
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+\*?\s*\{([^{}]*)\}")
# Math delimiters: "$B$", "$$B$$", "\(B\)", "\[B\]"; a lone "$" ("$5") stays.
_LATEX_MATH = re.compile(r"\$\$?([^$]*?)\$\$?")
_LATEX_REST = re.compile(r"\\[()\[\]]|\\(?:left|right)\b|\\[,;:! ]|\\(?:quad|qquad|displaystyle)\b")
_HTML_EMPHASIS = re.compile(r"</?(?:b|strong|i|em|u|code|mark|tt|span)(?:\s[^<>]*)?>", re.IGNORECASE)
# Markdown: bold / italics ("**B**", "*B*", "__B__"; underscores inside words, "light_switch", and a mir_eval
# omission, "G#:min7(4,*5)", stay), code spans, and a heading's or a quote's marker at the start of a line.
_MD_EMPHASIS = re.compile(r"\*{2,}|(?<![(,])\*|(?<!\w)_{1,2}|_{1,2}(?!\w)|`+")
_MD_LINE = re.compile(r"^[ \t]*(?:#{1,6}[ \t]+|>[ \t]*)", re.MULTILINE)
_QUOTES = str.maketrans({"“": '"', "”": '"', "„": '"', "«": '"', "»": '"', "‘": "'", "’": "'", "‚": "'"})
# Quotes around a span; an apostrophe inside a word ("Berman's") is no quote.
_QUOTED = re.compile(r"\"([^\"]*)\"|(?<!\w)'([^\n]*?)'(?!\w)")
# One letter in square, curly or lenticular brackets reads as "(B)".
_BRACKETED_LETTER = re.compile(r"[\[{【〔]\s*([A-Za-z])\s*[\]}】〕]")


@lru_cache(maxsize=1 << 14)  # each reader of one answer starts here: it is stripped once
def strip_markup(text: str) -> str:
    r"""The text as read, without the markup models wrap answers in; every reader of answers starts here.

    Removes LaTeX (``$B$``, ``\(B\)``, ``\boxed{B}``, ``\boxed{\text{B}}``, ``\textbf{B}``, ``\mathrm{B}``, nested
    or not; ``\sharp`` and ``\flat`` become ``#`` and ``b``), HTML emphasis tags (``<b>B</b>``), Markdown
    (``**B**``, ``*B*``, ``__B__``, ```B```, heading and quote markers) and quotes around a span (straight or curly;
    an apostrophe inside a word stays); reads one letter in square, curly or lenticular brackets as ``(B)``; folds
    accidentals and NFKC-normalises (``fold_accidentals``). Case is kept: each reader decides what case means.

    Returns:
        The stripped text; the folded text where stripping leaves nothing (an answer "*" is kept as it is).

    >>> [strip_markup(t) for t in ("$B$", r"\boxed{\text{B}}", r"\(B\)", "**B**", "`B`", "“B”", "[B]", "<b>B</b>")]
    ['B', 'B', 'B', 'B', 'B', 'B', '(B)', 'B']
    >>> strip_markup(r"ANSWER: $\text{F}^\sharp$ minor"), strip_markup("'Berman's'"), strip_markup("light_switch")
    ('ANSWER: F# minor', "Berman's", 'light_switch')
    """
    if text.isascii() and not _MARKUP_CHARS.search(text):
        return text.strip() or text
    folded = fold_accidentals(text).translate(_QUOTES)
    out = folded
    for pattern, accidental in _LATEX_ACCIDENTALS:
        out = pattern.sub(accidental, out)
    while (unwrapped := _LATEX_COMMAND.sub(r"\1", out)) != out:  # nested: \boxed{\text{B}}
        out = unwrapped
    out = _LATEX_REST.sub("", _LATEX_MATH.sub(r"\1", out))
    out = _MD_LINE.sub("", _MD_EMPHASIS.sub("", _HTML_EMPHASIS.sub("", out)))
    out = _QUOTED.sub(lambda m: m.group(1) if m.group(1) is not None else m.group(2), out)
    out = _BRACKETED_LETTER.sub(r"(\1)", out).replace("{", "").replace("}", "")
    return out.strip() or folded.strip()


def last_boxed(text: str) -> str | None:
    r"""The content of the last ``\boxed{...}`` in ``text`` (braces balanced), or None without a complete one.

    >>> last_boxed(r"so \boxed{A} or rather \boxed{\text{B}}."), last_boxed("no box")
    ('\\text{B}', None)
    """
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for i in range(begin - 1, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[begin:i]
    return None


_PUNCT = str.maketrans({c: " " for c in string.punctuation if c not in "#/+."})


def normalize(text: str, casefold: bool = True, strip_punctuation: bool = True, remove_articles: bool = True) -> str:
    """Normalise an answer for comparison: markup (``strip_markup``), accidentals, case, punctuation, articles,
    whitespace.

    ``#``, ``/``, ``+`` and decimal points are kept (``F#``, ``3/4``, ``C+``, ``92.5``).

    >>> normalize("  The  F♯ Minor chord! ")
    'f# minor chord'
    >>> normalize("3/4 time.")
    '3/4 time'
    >>> normalize("A minor"), normalize("a sustained chord")
    ('a minor', 'sustained chord')
    """
    text = strip_markup(text)
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

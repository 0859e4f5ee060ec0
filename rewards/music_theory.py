"""Music-theory correctness: claims about key, chords, tempo and meter checked against the sample's metadata.

Comparisons use mir_eval, the MIR community's reference metrics: keys with the MIREX weighted key score
(same key 1, fifth above 0.5, relative 0.3, parallel 0.2; enharmonic spellings equal), chords with
``mir_eval.chord.tetrads`` (same root and same notes up to the seventh; enharmonic spellings equal). Tempo
matches within a relative tolerance (4% by default), optionally with partial credit for half or double tempo.
Meter matches exactly.

The parsers read the usual spellings: "F# minor", "f#m", "Gb major", "B♭ major", "C maj7", "120 BPM",
"3/4 time". A lone lower-case "a" before "minor"/"major" is read as the article, not the note A.
"""

from __future__ import annotations

import re
from typing import Any

import mir_eval

from .text import completion_text, extract_answer, fold_accidentals

_ROOT = r"(?P<root>[A-G](?:#|b|\s?sharp|\s?flat)?|[a-g](?:#|b|\s?sharp|\s?flat)(?=\s?m)|[b-g](?=\s))"
_KEY_RE = re.compile(rf"(?<![A-Za-z#]){_ROOT}\s*(?P<mode>major|minor|maj|min|m)(?![a-z0-9])")
# Chord qualities, longest spellings first; values are mir_eval shorthands.
_QUALITIES = (
    ("major seventh", "maj7"),
    ("maj7", "maj7"),
    ("M7", "maj7"),
    ("Δ7", "maj7"),
    ("Δ", "maj7"),
    ("minor seventh", "min7"),
    ("min7", "min7"),
    ("m7", "min7"),
    ("-7", "min7"),
    ("half-diminished", "hdim7"),
    ("m7b5", "hdim7"),
    ("ø", "hdim7"),
    ("diminished seventh", "dim7"),
    ("dim7", "dim7"),
    ("°7", "dim7"),
    ("dominant seventh", "7"),
    ("dom7", "7"),
    ("7", "7"),
    ("diminished", "dim"),
    ("dim", "dim"),
    ("°", "dim"),
    ("augmented", "aug"),
    ("aug", "aug"),
    ("+", "aug"),
    ("minor", "min"),
    ("min", "min"),
    ("m", "min"),
    ("-", "min"),
    ("major", "maj"),
    ("maj", "maj"),
    ("M", "maj"),
)
_QUALITY_ALT = "|".join(re.escape(q) for q, _ in _QUALITIES)
_CHORD_RE = re.compile(rf"(?<![A-Za-z#]){_ROOT}\s?(?P<quality>{_QUALITY_ALT})?(?:\s+chord|\s+triad)?(?![A-Za-z0-9])")
_TEMPO_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:bpm|beats per minute|beats/min)", re.IGNORECASE)
_METER_RE = re.compile(r"(?<![\d/])(\d{1,2})\s*/\s*(\d{1,2})(?![\d/])")
_METER_WORDS = {"common time": "4/4", "cut time": "2/2", "alla breve": "2/2"}


# Spellings mir_eval's key validation rejects, as the pitch they name (a model may well write "B# major").
_KEY_ENHARMONICS = {"B#": "C", "E#": "F", "Cb": "B", "Fb": "E"}


def _root_name(root: str) -> str:
    root = root.replace(" ", "").lower().replace("sharp", "#").replace("flat", "b")
    return root[0].upper() + root[1:]


def parse_keys(text: str) -> list[str]:
    """Keys named in ``text`` as mir_eval key strings.

    >>> parse_keys("It is in F♯ minor, or maybe gb major; f#m.")
    ['F# minor', 'Gb major', 'F# minor']
    >>> parse_keys("a minor third above")
    []
    >>> parse_keys("B# major")  # mir_eval knows it as C major
    ['C major']
    """
    out = []
    for m in _KEY_RE.finditer(fold_accidentals(text)):
        mode = m["mode"].lower()
        if m["mode"] == "M":
            mode = "major"
        root = _root_name(m["root"])
        out.append(f"{_KEY_ENHARMONICS.get(root, root)} {'minor' if mode in ('minor', 'min', 'm') else 'major'}")
    return out


def parse_chords(text: str) -> list[str]:
    """Chords named in ``text`` as mir_eval chord labels.

    >>> parse_chords("a C major seventh, then Dbm7 and G7; F# dim")
    ['C:maj7', 'Db:min7', 'G:7', 'F#:dim']
    """
    out = []
    qualities = dict(_QUALITIES)
    for m in _CHORD_RE.finditer(fold_accidentals(text)):
        q = m["quality"]
        if q is None:
            # A bare note name is a major chord only when called a chord ("C chord"); otherwise skip it.
            if not re.search(r"\s+(chord|triad)$", m.group(0)):
                continue
            q = "maj"
        else:
            q = qualities.get(q, qualities.get(q.lower(), "maj"))
        out.append(f"{_root_name(m['root'])}:{q}")
    return out


def parse_tempi(text: str) -> list[float]:
    """Tempi in BPM named in ``text``.

    >>> parse_tempi("about 120 BPM (maybe 118.5 beats per minute)")
    [120.0, 118.5]
    """
    return [float(x) for x in _TEMPO_RE.findall(text)]


def parse_meters(text: str) -> list[str]:
    """Time signatures named in ``text``.

    >>> parse_meters("a waltz in 3/4 time, not 6 / 8; common time later")
    ['3/4', '6/8', '4/4']
    """
    found = [(m.start(), f"{m[1]}/{m[2]}") for m in _METER_RE.finditer(text)]
    low = text.lower()
    for words, meter in _METER_WORDS.items():
        found += [(m.start(), meter) for m in re.finditer(re.escape(words), low)]
    return [m for _, m in sorted(found)]


def key_score(reference: str, estimate: str) -> float:
    """MIREX weighted key score (mir_eval).

    >>> key_score("C major", "A minor"), key_score("C# major", "Db major"), key_score("C major", "G major")
    (0.3, 1.0, 0.5)
    """
    return float(mir_eval.key.weighted_score(_mir_key(reference), _mir_key(estimate)))


def _mir_key(key: str) -> str:
    parsed = parse_keys(key)
    if not parsed:
        raise ValueError(f"not a key: {key!r}")
    return parsed[0]


def chord_score(reference: str, estimate: str) -> float:
    """1.0 if the chords have the same root and notes up to the seventh (mir_eval tetrads), else 0.0.

    >>> chord_score("C#:maj", "Db:maj"), chord_score("C:maj", "C:min"), chord_score("A:min7", "A:min7")
    (1.0, 0.0, 1.0)
    """
    ref, est = _mir_chord(reference), _mir_chord(estimate)
    return float(max(0.0, mir_eval.chord.tetrads([ref], [est])[0]))


def _mir_chord(chord: str) -> str:
    if ":" in chord:
        return chord
    parsed = parse_chords(chord if re.search(r"[a-zA-Z]", chord[1:]) else chord + " chord")
    if not parsed:
        raise ValueError(f"not a chord: {chord!r}")
    return parsed[0]


def tempo_score(reference: float, estimate: float, tolerance: float = 0.04, half_double: float = 0.0) -> float:
    """1.0 within ``tolerance`` (relative), ``half_double`` at half or double tempo, else 0.0.

    >>> tempo_score(120, 124), tempo_score(120, 126), tempo_score(120, 60, half_double=0.5)
    (1.0, 0.0, 0.5)
    """
    if abs(estimate - reference) <= tolerance * reference:
        return 1.0
    for factor in (0.5, 2.0):
        if abs(estimate - factor * reference) <= tolerance * factor * reference:
            return half_double
    return 0.0


class MusicTheory:
    """Mean correctness of the answer's claims over the music fields the sample's metadata has.

    Fields: ``key`` (MIREX score of the answer's first key), ``chord`` (the first chord named), ``chords``
    (fraction of the reference chords the answer names), ``tempo`` and ``meter``. A field the answer makes no
    claim about scores 0. ``None`` when the metadata has none of these fields.

    Args:
        tempo_tolerance: relative tolerance for tempo (default 4%).
        half_double: credit for half or double the tempo (default 0).
        answer_tag, fallback: how the answer is read (see ``extract_answer``).

    >>> music_theory(None, ["<answer>A minor</answer>", "<answer>120 BPM in 3/4</answer>"],
    ...              metadata=[{"key": "C major"}, {"tempo": 122, "meter": "4/4"}])
    [0.3, 0.5]
    """

    FIELDS = ("key", "chord", "chords", "tempo", "meter")

    def __init__(
        self,
        tempo_tolerance: float = 0.04,
        half_double: float = 0.0,
        answer_tag: str = "answer",
        fallback: bool = True,
    ):
        self.tempo_tolerance, self.half_double = tempo_tolerance, half_double
        self.answer_tag, self.fallback = answer_tag, fallback
        self.__name__ = "music_theory"

    def __call__(
        self, prompts: Any, completions: list[Any], metadata: list | None = None, **columns: Any
    ) -> list[float | None]:
        metadata = metadata if metadata is not None else [None] * len(completions)
        return [self.score(completion_text(c), m) for c, m in zip(completions, metadata, strict=True)]

    def field_scores(self, answer: str, metadata: dict[str, Any]) -> dict[str, float]:
        """Per-field scores for the fields present in ``metadata``."""
        scores: dict[str, float] = {}
        if metadata.get("key"):
            keys = parse_keys(answer)
            scores["key"] = key_score(metadata["key"], keys[0]) if keys else 0.0
        if metadata.get("chord"):
            chords = parse_chords(answer)
            scores["chord"] = chord_score(metadata["chord"], chords[0]) if chords else 0.0
        if metadata.get("chords"):
            named = parse_chords(answer)
            refs = list(metadata["chords"])
            scores["chords"] = sum(any(chord_score(r, c) for c in named) for r in refs) / len(refs)
        if metadata.get("tempo"):
            tempi = parse_tempi(answer)
            ref = float(metadata["tempo"])
            scores["tempo"] = tempo_score(ref, tempi[0], self.tempo_tolerance, self.half_double) if tempi else 0.0
        if metadata.get("meter"):
            meters = parse_meters(answer)
            scores["meter"] = float(bool(meters) and meters[0] == str(metadata["meter"]))
        return scores

    def score(self, text: str, metadata: dict[str, Any] | None) -> float | None:
        if not metadata or not any(metadata.get(f) for f in self.FIELDS):
            return None
        answer = extract_answer(text, self.answer_tag, self.fallback) or ""
        scores = self.field_scores(answer, metadata)
        return sum(scores.values()) / len(scores)


music_theory = MusicTheory()

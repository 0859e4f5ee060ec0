"""Music-theory correctness: claims about key, chords, tempo and meter checked against the sample's metadata.

Comparisons use mir_eval, the MIR community's reference metrics: keys with the MIREX weighted key score
(same key 1, fifth above 0.5, relative 0.3, parallel 0.2; enharmonic spellings equal), chords with
``mir_eval.chord.tetrads`` (same root and same notes up to the seventh; enharmonic spellings equal). Tempo
matches within a relative tolerance (4% by default), optionally with partial credit for half or double tempo.
Meter matches exactly.

The prose parsers (``parse_keys``, ``parse_chords``) read the usual spellings in any letter case and through markup
(``text.strip_markup``): "F# minor", "f#m", "Gb major", "B♭ major", "E-flat major", "C maj7", "The Key Is A Minor",
"IN A MINOR", "**C major**", "120 BPM", "3/4 time". Modes and qualities in words ("minor", "Minor", "MAJ7") are
read in any case; symbols as written ("M7" is major seventh, "m7" minor seventh). A note letter that could be a
word is read by this rule:

- "a" before a mode or quality word may be the article. Upper-case "A" is the note ("A minor", "in A Minor", "The
  Key Is A Minor", "A MINOR"; so "A minor change in tempo." is read as a key, the case being the writer's choice).
  Lower-case "a" is the note only where a key or chord is said to be named ("the key of a minor", "key is a
  minor", "Key: a minor", "the chord is a minor") or where "major" / "minor" ends the clause ("it is in a minor.",
  "(a minor)"); otherwise it is the article: "a minor change", "a minor third above", "a major role", "it is in a
  minor key" (some minor key). A clause ending after "a minor" reads as the key, so "a minor, subtle change" is a
  false positive this rule accepts.
- A lower-case letter before a symbol is a word ("am", "em", "cm", "fm"); "Am" after "I" is the verb; "M" alone
  ("AM", "FM", "DM") is an abbreviation, not a major triad; "a chord", and "A chord" opening a sentence, are the
  article. Other lower-case letters before a word ("c major", "e diminished") and any letter with an accidental
  ("ab major", "f#m") are notes.

Labels (a metadata field, or a completion's whole answer) are read by meaning whatever their case and usual
spelling: ``key_label`` ("a minor", "Am", "F#:min", "B♭ MAJOR"), ``chord_label`` ("a:min", "am7", "C major
seventh", "C"), ``tempo_label`` (120, "120 BPM") and ``meter_label`` ("3 / 4", "common time"). Loaders check every
row's metadata with ``metadata_problems`` (the same functions), so a label that cannot be read is reported at
load, naming the row and field, never mid-run.
"""

from __future__ import annotations

import re
from typing import Any

import mir_eval

from .text import completion_text, extract_answer, strip_markup

# A note name in either case, with an accidental ("F#", "Bb", "f sharp", "E-flat"); which readings of it count is
# decided by ``_prose_note`` (the article "a", "am", "I Am").
_ROOT = r"(?P<root>[A-Ga-g])(?P<acc>#|b|[\s-]?(?i:sharp|flat))?"
# A key: a mode word in any case ("minor", "Minor", "MINOR", "maj"), or "m" attached and lower-case ("Am", "f#m").
_KEY_RE = re.compile(rf"(?<![\w#]){_ROOT}(?:[\s-]*(?P<word>(?i:major|minor|maj|min))|(?P<m>m))(?![A-Za-z0-9])")
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
_QUALITY = {q.lower() if q.islower() else q: v for q, v in _QUALITIES}
# Qualities spelled in words ("major seventh", "Dim", "MAJ7") are read in any case; symbols ("M7" against "m7",
# "m", "M", "+") only as written.
_WORDS = [q for q, _ in _QUALITIES if re.fullmatch(r"[a-z][a-z0-9 -]{2,}", q)]
_SYMBOLS = [q for q, _ in _QUALITIES if q not in _WORDS]
_CHORD_RE = re.compile(
    rf"(?<![\w#]){_ROOT}(?:[\s-]?(?P<word>(?i:{'|'.join(map(re.escape, _WORDS))}))"
    rf"|\s?(?P<symbol>{'|'.join(map(re.escape, _SYMBOLS))}))?(?P<called>\s+(?i:chord|triad))?(?![A-Za-z0-9])"
)
# Words before a key or chord that say one is named next: "key of", "key is", "Key:", "the chord is".
_NAMING_CUE = re.compile(
    r"\b(?:key|tonality|tonal\s+cent(?:er|re)|tonic|chord)\b(?:\s+(?:signature|of|is|was|being|in|seems|to|be|"
    r"likely|probably|sounds|like))*\s*[:=\-–—]?\s*$",
    re.IGNORECASE,
)
_CLAUSE_END = re.compile(r"\s*(?:$|[.,;:!?)\]/\n])")
_SENTENCE_OPENING = re.compile(r"(?:^|[.!?:\n])[\s\"'(\[•-]*$")
_TEMPO_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:bpm|beats per minute|beats/min)", re.IGNORECASE)
_METER_RE = re.compile(r"(?<![\d/])(\d{1,2})\s*/\s*(\d{1,2})(?![\d/])")
_METER_WORDS = {"common time": "4/4", "cut time": "2/2", "alla breve": "2/2"}


# Spellings mir_eval's key validation rejects, as the pitch they name (a model may well write "B# major").
_KEY_ENHARMONICS = {"B#": "C", "E#": "F", "Cb": "B", "Fb": "E"}


def _root_name(root: str) -> str:
    root = root.replace(" ", "").replace("-", "").lower().replace("sharp", "#").replace("flat", "b")
    return root[0].upper() + root[1:]


_KEY_LABEL = re.compile(
    r"^(?:the\s+)?(?:key\s+(?:of\s+)?)?(?P<root>[A-Ga-g])\s?(?P<acc>#|b|-?sharp|-?flat)?\s*[:\s]?\s*"
    r"(?P<mode>major|minor|maj|min|m|M)(?:\s+key)?$",
    re.IGNORECASE,
)


def key_label(value: Any) -> str:
    """A key label read by meaning, as a mir_eval key string; raises ``ValueError`` if it is not one.

    >>> [key_label(v) for v in ("a minor", "Am", "F#:min", "B♭ MAJOR", "ebm", "the key of C major", "B# major")]
    ['A minor', 'A minor', 'F# minor', 'Bb major', 'Eb minor', 'C major', 'C major']
    """
    m = _KEY_LABEL.match(strip_markup(str(value)).strip().rstrip("."))
    if not m:
        raise ValueError(f"cannot read {value!r} as a key (e.g. 'A minor', 'F# major', 'Bbm')")
    root = _root_name(m["root"] + (m["acc"] or "").replace("-", ""))
    mode = m["mode"]
    minor = mode == "m" or mode.lower() in ("minor", "min")
    return f"{_KEY_ENHARMONICS.get(root, root)} {'minor' if minor else 'major'}"


def chord_label(value: Any, bare_note: bool = True) -> str:
    """A chord label read by meaning (mir_eval syntax ``A:min`` or the usual spellings), as a mir_eval label;
    raises ``ValueError`` if it is not one. A bare note name is its major chord unless ``bare_note`` is False.

    >>> [chord_label(v) for v in ("a:min", "am7", "C major seventh", "C", "Db", "f# dim", "Bb:maj7")]
    ['A:min', 'A:min7', 'C:maj7', 'C:maj', 'Db:maj', 'F#:dim', 'Bb:maj7']
    """
    text = strip_markup(str(value)).strip().rstrip(".")
    if not text or text[0].upper() not in "ABCDEFG":
        raise ValueError(f"cannot read {value!r} as a chord (e.g. 'A:min', 'C major', 'F#m7')")
    text = text[0].upper() + text[1:]
    if ":" in text:
        try:
            mir_eval.chord.split(text)
            return text
        except mir_eval.chord.InvalidChordException as e:
            raise ValueError(f"cannot read {value!r} as a chord: {e}") from None
    m = _CHORD_RE.fullmatch(text)
    if not m or (not (m["word"] or m["symbol"]) and not bare_note):
        raise ValueError(f"cannot read {value!r} as a chord (e.g. 'A:min', 'C major', 'F#m7')")
    return _chord(m)


def _chord(m: re.Match) -> str:
    """The mir_eval label of a ``_CHORD_RE`` match (no quality: the major triad)."""
    quality = _QUALITY[m["word"].lower()] if m["word"] else _QUALITY.get(m["symbol"] or "", "maj")
    return f"{_root_name(m['root'] + (m['acc'] or ''))}:{quality}"


def tempo_label(value: Any) -> float:
    """A tempo in BPM from a number or "120 BPM"; raises ``ValueError`` unless it is a positive finite number.

    >>> tempo_label(120), tempo_label("96.5 bpm"), tempo_label(" 72 ")
    (120.0, 96.5, 72.0)
    """
    text = str(value).strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(?:bpm|beats per minute)?", text, re.IGNORECASE)
    if isinstance(value, bool) or not m or not 0 < float(m[1]) < 1e4:
        raise ValueError(f"cannot read {value!r} as a tempo in BPM (e.g. 120 or '120 BPM')")
    return float(m[1])


def meter_label(value: Any) -> str:
    """A time signature from "3/4", "3 / 4" or "common time"; raises ``ValueError`` otherwise.

    >>> meter_label("3 / 4"), meter_label("Common time"), meter_label("6/8 time")
    ('3/4', '4/4', '6/8')
    """
    text = str(value).strip().lower()
    found = parse_meters(text)
    if len(found) != 1 or not re.fullmatch(r"[\d\s/]+(?:time)?|common time|cut time|alla breve", text):
        raise ValueError(f"cannot read {value!r} as a time signature (e.g. '3/4', '6/8')")
    return found[0]


LABELS = {"key": key_label, "chord": chord_label, "tempo": tempo_label, "meter": meter_label}


def metadata_problems(metadata: dict[str, Any]) -> list[tuple[str, str]]:
    """``(field, reason)`` for every music label in ``metadata`` that cannot be read (``key``, ``chord``,
    ``chords``, ``tempo``, ``meter``); empty when all can.

    >>> [field for field, _ in metadata_problems({"key": "a minor", "chords": ["Am", "H7"], "tempo": "fast"})]
    ['metadata.tempo', 'metadata.chords[1]']
    """
    problems = []
    for name, parse in LABELS.items():
        if metadata.get(name) not in (None, ""):
            try:
                parse(metadata[name])
            except ValueError as e:
                problems.append((f"metadata.{name}", str(e)))
    chords = metadata.get("chords")
    if chords not in (None, "", []):
        if not isinstance(chords, list):
            problems.append(("metadata.chords", f"must be a list of chords, got {type(chords).__name__}"))
        else:
            for i, chord in enumerate(chords):
                try:
                    chord_label(chord)
                except ValueError as e:
                    problems.append((f"metadata.chords[{i}]", str(e)))
    return problems


def _prose_note(text: str, m: re.Match, word: str, symbol: str) -> bool:
    """Whether the root of a ``_KEY_RE`` or ``_CHORD_RE`` match ``m`` in ``text`` is a note name rather than a word
    (the rule is the module doc's). ``word`` is the mode or quality in words, lower-cased, ``symbol`` the one in
    symbols ("m", "7"); either may be empty."""
    root, before = m["root"], text[: m.start()]
    if m["acc"]:
        return True
    if symbol:  # "am", "em", "cm" are words; "I Am" is a verb
        return root.isupper() and not (root == "A" and symbol == "m" and re.search(r"\bI\s*$", before))
    if root not in "Aa":
        return root.isupper() or bool(word)
    if not word:  # "C chord" and "an A chord", not "a chord" nor "A chord opens the piece"
        return root == "A" and not _SENTENCE_OPENING.search(before)
    if root == "A":
        return True  # "A minor", "in A Minor", "The Key Is A Minor", "A MINOR"
    clause_ends = word in ("major", "minor") and _CLAUSE_END.match(text, m.end("word"))
    return bool(_NAMING_CUE.search(before[-60:]) or clause_ends)


def parse_keys(text: str) -> list[str]:
    """Keys named in ``text`` (read through markup, any letter case) as mir_eval key strings.

    >>> parse_keys("It is in F♯ minor, or maybe gb major; f#m.")
    ['F# minor', 'Gb major', 'F# minor']
    >>> parse_keys("The Key Is A Minor"), parse_keys("IN E-FLAT MAJOR"), parse_keys("**the key of a minor**")
    (['A minor'], ['Eb major'], ['A minor'])
    >>> parse_keys("a minor third above"), parse_keys("a major role, in a minor key"), parse_keys("I am in C")
    ([], [], [])
    >>> parse_keys("B# major")  # mir_eval knows it as C major
    ['C major']
    """
    text = strip_markup(text)
    out = []
    for m in _KEY_RE.finditer(text):
        word = (m["word"] or "").lower()
        if not _prose_note(text, m, word, m["m"] or ""):
            continue
        root = _root_name(m["root"] + (m["acc"] or ""))
        out.append(f"{_KEY_ENHARMONICS.get(root, root)} {'minor' if m['m'] or word.startswith('min') else 'major'}")
    return out


def parse_chords(text: str) -> list[str]:
    """Chords named in ``text`` (read through markup, qualities in words in any case) as mir_eval chord labels.
    A bare note name is a chord only when called one ("C chord"); "M" alone ("AM", "FM") is read as an
    abbreviation, not a major triad.

    >>> parse_chords("a C major seventh, then Dbm7 and G7; F# dim")
    ['C:maj7', 'Db:min7', 'G:7', 'F#:dim']
    >>> parse_chords("An A Minor Seventh Chord, then D MAJOR and e diminished")
    ['A:min7', 'D:maj', 'E:dim']
    >>> parse_chords("at 10 AM, a minor seventh up. A chord opens it")
    []
    """
    text = strip_markup(text)
    out = []
    for m in _CHORD_RE.finditer(text):
        if not (m["word"] or m["symbol"] or m["called"]) or m["symbol"] == "M":
            continue
        if _prose_note(text, m, (m["word"] or "").lower(), m["symbol"] or ""):
            out.append(_chord(m))
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
    try:
        return key_label(key)
    except ValueError:
        parsed = parse_keys(key)
        if not parsed:
            raise
        return parsed[0]


def chord_score(reference: str, estimate: str) -> float:
    """1.0 if the chords have the same root and notes up to the seventh (mir_eval tetrads), else 0.0.

    >>> chord_score("C#:maj", "Db:maj"), chord_score("C:maj", "C:min"), chord_score("A:min7", "A:min7")
    (1.0, 0.0, 1.0)
    """
    ref, est = _mir_chord(reference), _mir_chord(estimate)
    return float(max(0.0, mir_eval.chord.tetrads([ref], [est])[0]))


def _mir_chord(chord: str) -> str:
    try:
        return chord_label(chord)
    except ValueError:
        parsed = parse_chords(chord)
        if not parsed:
            raise
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
        """Per-field scores for the fields present in ``metadata``. An answer that is a label as a whole ("a minor",
        "am7") is read by meaning whatever its case; otherwise the first claim of the field in its prose counts."""
        scores: dict[str, float] = {}
        if metadata.get("key"):
            keys = _whole(answer, key_label) or parse_keys(answer)
            scores["key"] = key_score(metadata["key"], keys[0]) if keys else 0.0
        if metadata.get("chord"):
            chords = _whole(answer, lambda v: chord_label(v, bare_note=False)) or parse_chords(answer)
            scores["chord"] = chord_score(metadata["chord"], chords[0]) if chords else 0.0
        if metadata.get("chords"):
            named = parse_chords(answer)
            refs = list(metadata["chords"])
            scores["chords"] = sum(any(chord_score(r, c) for c in named) for r in refs) / len(refs)
        if metadata.get("tempo"):
            tempi = parse_tempi(answer) or _whole(answer, tempo_label)
            ref = tempo_label(metadata["tempo"])
            scores["tempo"] = tempo_score(ref, tempi[0], self.tempo_tolerance, self.half_double) if tempi else 0.0
        if metadata.get("meter"):
            meters = parse_meters(answer)
            scores["meter"] = float(bool(meters) and meters[0] == meter_label(metadata["meter"]))
        return scores

    def score(self, text: str, metadata: dict[str, Any] | None) -> float | None:
        if not metadata or not any(metadata.get(f) for f in self.FIELDS):
            return None
        answer = extract_answer(text, self.answer_tag, self.fallback) or ""
        scores = self.field_scores(answer, metadata)
        return sum(scores.values()) / len(scores)


def _whole(answer: str, parse: Any) -> list[Any]:
    """``[parse(answer)]`` when the whole answer is a label, else ``[]``."""
    try:
        return [parse(answer)]
    except ValueError:
        return []


music_theory = MusicTheory()

"""Evaluation files in the field's layouts, detected by content, and predictions written back for their scorers.

Layouts (``LAYOUTS``), told apart by the fields of the file's items, whatever the file's extension (a JSON list,
a ``{"data": [...]}`` object, JSONL or CSV):

- ``manifest``: grpo-audio's own rows (``data/loaders.py``).
- ``mmau``: MMAU (Sakshi113/MMAU): ``id``, ``audio_id`` (``./test-mini-audios/<id>.wav``), ``question``,
  ``choices``, ``answer`` (the right choice's text), ``task``, ``category`` (a string, or a list in 13 test-mini
  items), ``sub-category``, ``difficulty``. Reported by task, category, sub-category and difficulty. Scorer:
  ``evaluation.py`` reads ``model_output``.
- ``mmar``: MMAR (``MMAR-meta.json`` / ``.jsonl``): ``id``, ``audio_path`` (``./audio/<id>.wav``), ``question``,
  ``choices`` (2-6, some ending in an empty ``""``), ``answer``, ``modality``, ``category``, ``sub-category``.
  Reported by modality, category and sub-category. Scorer reads ``answer_prediction``.
- ``muchomusic``: MuChoMusic's CSV (``question``, ``correct_answer``, ``distractor_1_answer`` ..
  ``distractor_3_answer``, ``dataset``, ``dataset_identifier``, ``genre``, ``music_knowledge``,
  ``music_reasoning``). The CSV lists the right answer first, so the choices are put in an order drawn from the
  question's text (same file, same order). Audio where MuChoMusic's preparation puts it: Song Describer tracks at
  ``data/sdd/audio/NN/<id>.2min.mp3`` (``NN``: the id's last two digits), MusicCaps clips at
  ``data/musiccaps/audio/[<ytid>]-[<start>-<end>].wav`` (found by ytid).
- ``muchomusic_prompts``: the JSON ``prepare_prompts.py`` writes: ``prompt`` (few-shot text ending in the
  question and lettered options), ``answers``, ``answer_orders`` (the right answer is
  ``answers[answer_orders.index(0)]``), ``audio_path`` relative to the dataset root, ``id`` = the track id,
  repeated across questions. The question is taken from the prompt's last "Question:"; the choices keep the
  file's order, so letters mean what they mean to its scorer, which reads ``model_output``.
  Both MuChoMusic layouts are reported by dataset, genre, knowledge and reasoning.
- ``generic``: any of these file kinds with a field map, ``question=...,choices=...,answer=...,audio=...,
  group=a|b,id=...`` (``choices`` a list, or a list written as text in a CSV cell).

Repeated source ids get unique row ids (``<id>#2``, ``<id>#3``, ...; the source id is kept for the export).
Relative audio paths are resolved against ``audio_root`` (default: the file's folder). Empty trailing choices
are dropped and counted; every other problem is a bad row, named with its field, raised or skipped per
``bad_rows`` before any model is loaded.

Predictions go back into the source items (``write_predictions``), the scored items only unless every item is asked
for: an item left unscored (a bad row skipped, a row beyond ``max_rows``) would carry an empty prediction, which the
official scorers count as wrong. The export's message says how many items were left unscored and what the official
scorer makes of them.
"""

from __future__ import annotations

import ast
import csv
import glob
import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..models import ModelFamily
from ..rewards.matching import ANSWER_FORMATS, Choices
from ..rewards.text import extract_answer
from .loaders import rows_from_records, validate_and_apply
from .schema import BadRow, Row

logger = logging.getLogger(__name__)

LAYOUTS = ("manifest", "mmau", "mmar", "muchomusic", "muchomusic_prompts", "generic")
FIELD_MAP_KEYS = ("question", "choices", "answer", "audio", "group", "id")
INSTRUCTIONS = {
    "letter": "Answer with the letter of the correct choice.",
    "text": "Answer with the text of the correct choice.",
}
THINK_INSTRUCTION = " Think step by step inside <think></think>, then give the final answer inside <answer></answer>."


@dataclass(frozen=True)
class Layout:
    """How one benchmark's items map to rows and back.

    Attributes:
        axes: item fields the report groups accuracy by (list values count under each element).
        prediction_field: the field the benchmark's scorer reads a prediction from.
        predict_letter: the scorer reads letters (MuChoMusic) rather than the choice's words (MMAU, MMAR).
    """

    axes: tuple[str, ...]
    prediction_field: str
    predict_letter: bool = False


LAYOUT_SPECS: dict[str, Layout] = {
    "manifest": Layout(axes=(), prediction_field="prediction"),
    "mmau": Layout(axes=("task", "category", "sub-category", "difficulty"), prediction_field="model_output"),
    "mmar": Layout(axes=("modality", "category", "sub-category"), prediction_field="answer_prediction"),
    "muchomusic": Layout(axes=("dataset", "genre", "knowledge", "reasoning"), prediction_field="model_output"),
    "muchomusic_prompts": Layout(
        axes=("dataset", "genre", "knowledge", "reasoning"), prediction_field="model_output", predict_letter=True
    ),
    "generic": Layout(axes=(), prediction_field="prediction"),
}


@dataclass
class Benchmark:
    """An evaluation file read into rows, with what the prediction export needs.

    Attributes:
        layout: one of ``LAYOUTS``.
        path: the file.
        items: the source items as read (dicts; CSV cells as strings), in file order.
        rows: one row per item that could be read (before audio validation).
        bad: items that could not become rows (field and reason).
        item_of: row id -> index into ``items``.
        source_id: row id -> the item's own id (repeated ids included).
        dropped_choices: empty trailing choices removed.
        answer_format: what the prompts ask for, ``letter`` or ``text``.
        axes: the report's group axes.
        kind: the file's kind, ``json``, ``jsonl`` or ``csv`` (the export writes the same).
        fieldnames: the CSV header (CSV files only), kept for the export.
        wrapper: the key of a ``{"data": [...]}`` wrapper, if the JSON had one.
    """

    layout: str
    path: Path
    items: list[dict[str, Any]]
    rows: list[Row]
    bad: list[BadRow] = field(default_factory=list)
    item_of: dict[str, int] = field(default_factory=dict)
    source_id: dict[str, str] = field(default_factory=dict)
    dropped_choices: int = 0
    answer_format: str = "letter"
    axes: tuple[str, ...] = ()
    kind: str = "json"
    fieldnames: list[str] | None = None
    wrapper: str | None = None

    @property
    def spec(self) -> Layout:
        return LAYOUT_SPECS[self.layout]


class LayoutError(UserError, ValueError):
    """The file matches no known layout, or a field map names fields the items lack."""


# ---------------------------------------------------------------- reading files


@dataclass
class _Source:
    """A file's items as read. ``items`` holds a ``BadRow`` where a JSONL line is not JSON; ``labels`` names each
    item in messages (``line N`` in JSONL, ``item N`` in JSON, ``row N`` in CSV, counting the header as row 0)."""

    items: list[Any]
    labels: list[str]
    kind: str
    header: list[str] | None = None
    wrapper: str | None = None


def _read_items(path: Path) -> _Source:
    """Items of a JSON list / object / ``{"data": [...]}`` / JSONL / CSV file (a UTF-8 byte-order mark is fine).

    Raises:
        FileNotFoundError: no such file.
        LayoutError: the file holds no items, or is JSON that does not parse.
    """
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    text = path.read_text(encoding="utf-8-sig")
    stripped = text.strip()
    if not stripped:
        raise LayoutError(f"{path}: the file is empty")
    lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    whole: Any = None
    if stripped[0] in "[{" and (stripped[0] == "[" or len(lines) > 1):
        try:
            whole = json.loads(text)
        except json.JSONDecodeError as e:
            if stripped[0] == "[":
                raise LayoutError(f"{path}: not valid JSON: {e}") from None
    if isinstance(whole, list):
        return _Source(whole, [f"item {i}" for i in range(len(whole))], "json")
    if isinstance(whole, dict):
        for key in ("data", "items", "questions"):
            if isinstance(whole.get(key), list):
                return _Source(whole[key], [f"item {i}" for i in range(len(whole[key]))], "json", wrapper=key)
        if whole and all(isinstance(v, dict) for v in whole.values()):  # {id: item, ...}
            return _Source([{"id": k, **v} for k, v in whole.items()], [f"item {k}" for k in whole], "json")
        return _Source([whole], ["item 0"], "json")  # one item, pretty-printed
    if stripped[0] == "{":
        items: list[Any] = []
        for lineno, line in lines:
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as e:
                items.append(BadRow(f"line {lineno}", "-", f"not valid JSON: {e.msg}"))
        return _Source(items, [f"line {n}" for n, _ in lines], "jsonl")
    reader = csv.DictReader(io.StringIO(text))
    rows = list(reader)
    return _Source(rows, [f"row {i + 1}" for i in range(len(rows))], "csv", header=list(reader.fieldnames or []))


def detect_layout(items: list[Any], fields: dict[str, str] | None = None) -> str:
    """The layout of a file's items, from the fields they carry.

    Raises:
        LayoutError: no layout fits; the message lists the fields seen.
    """
    if fields:
        return "generic"
    if not items:
        raise LayoutError("the file holds no items")
    keys: set[str] = set()
    for item in items[:50]:
        if isinstance(item, dict):
            keys |= set(item)
    if {"correct_answer", "distractor_1_answer"} <= keys:
        return "muchomusic"
    if {"answers", "answer_orders", "prompt"} <= keys:
        return "muchomusic_prompts"
    if {"question", "choices", "answer", "modality"} <= keys:
        return "mmar"
    if {"question", "choices", "answer"} <= keys and keys & {"audio_id", "audio_path", "audio"}:
        return "mmau"
    if {"prompt", "audio"} <= keys:  # fields that are not row fields are reported per row by the manifest reader
        return "manifest"
    raise LayoutError(
        f"no known layout has the fields {sorted(keys)}; known layouts: {', '.join(LAYOUTS[:-1])}. Map the fields "
        "of another layout with a field map, e.g. --fields question=q,choices=options,answer=label,audio=wav"
    )


def parse_field_map(text: str) -> dict[str, str]:
    """``question=q,choices=opts,answer=label,audio=wav,group=a|b`` -> a dict.

    Raises:
        LayoutError: an entry is not ``key=field`` or the key is not one of ``FIELD_MAP_KEYS``.

    >>> parse_field_map("question=q, choices=opts ,answer=label,audio=wav,group=genre|mood")
    {'question': 'q', 'choices': 'opts', 'answer': 'label', 'audio': 'wav', 'group': 'genre|mood'}
    """
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value or key not in FIELD_MAP_KEYS:
            raise LayoutError(f"field map entry {part!r}: expected KEY=FIELD with KEY one of {FIELD_MAP_KEYS}")
        if key in out:
            raise LayoutError(f"field map {text!r} gives {key!r} twice")
        out[key] = value
    missing = [k for k in ("question", "choices", "answer", "audio") if k not in out]
    if missing:
        raise LayoutError(f"field map {text!r} lacks {missing}")
    return out


# ---------------------------------------------------------------- item -> fields


def _values(value: Any) -> list[str]:
    """An axis value as a list of group names: lists (also written as text, "['melody']") count per element."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                return [text]
        else:
            return [text] if text else []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [str(value)]


def _choice_list(value: Any) -> Any:
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            return ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            try:
                return json.loads(value)
            except json.JSONDecodeError:
                return value
    return value


def _prompt_question(prompt: str) -> str:
    """The question of a MuChoMusic prompt: the text after its last "Question:", before "Options:"."""
    last = prompt.rsplit("Question:", 1)[-1]
    return last.split("Options:", 1)[0].strip()


def _muchomusic_track(item: dict[str, Any]) -> str:
    """The track id MuChoMusic's preparation gives a CSV row: Song Describer's number, or MusicCaps' YouTube id
    (the identifier without its ``_<n>`` question suffix)."""
    identifier = str(item.get("dataset_identifier", "")).removesuffix(".json")
    if item.get("dataset") == "sdd" or "_" not in identifier:
        return identifier
    return identifier.rsplit("_", 1)[0]


def _muchomusic_audio(item: dict[str, Any], root: Path) -> str:
    """The clip's path relative to the dataset root, where MuChoMusic's preparation puts it."""
    track = _muchomusic_track(item)
    if item.get("dataset") == "sdd" and track.isdigit():
        return f"data/sdd/audio/{int(track) % 100:02d}/{int(track)}.2min.mp3"
    folder = root / "data" / "musiccaps" / "audio"
    found = sorted(glob.glob(str(folder / glob.escape(f"[{track}]-[")) + "*].wav"))
    return str(Path(found[0]).relative_to(root)) if found else f"data/musiccaps/audio/[{track}]-[START-END].wav"


def _order(key: str, n: int) -> list[int]:
    """A permutation of ``n`` choices drawn from ``key`` (the same on every machine and run)."""
    seed = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")
    return [int(i) for i in np.random.default_rng(seed).permutation(n)]


@dataclass
class _Fields:
    """One item's question, choices, answer, audio and groups, before it becomes a row."""

    id: str
    question: Any
    choices: Any
    answer: Any
    audio: Any
    groups: dict[str, list[str]]


def _id(value: Any, index: int) -> str:
    """An item's own id, or its position when it has none (absent, null or empty)."""
    return str(index) if value is None or str(value).strip() == "" else str(value).strip()


def _fields(layout: str, item: dict[str, Any], index: int, root: Path, fmap: dict[str, str]) -> _Fields:
    spec = LAYOUT_SPECS[layout]
    groups = {axis: _values(item.get(axis)) for axis in spec.axes}
    item_id = _id(item.get("id"), index)
    if layout == "mmau":
        audio = item.get("audio_id") or item.get("audio_path") or item.get("audio")
        return _Fields(item_id, item.get("question"), item.get("choices"), item.get("answer"), audio, groups)
    if layout == "mmar":
        return _Fields(item_id, item.get("question"), item.get("choices"), item.get("answer"),
                       item.get("audio_path"), groups)  # fmt: skip
    if layout == "muchomusic":
        groups = {
            "dataset": _values(item.get("dataset")),
            "genre": _values(item.get("genre")),
            "knowledge": _values(item.get("music_knowledge")),
            "reasoning": _values(item.get("music_reasoning")),
        }
        # a distractor cell left empty is no option (the CSV has no fixed letters, so nothing shifts)
        distractors = [item.get(f"distractor_{k}_answer") for k in (1, 2, 3)]
        options = [item.get("correct_answer")] + [d for d in distractors if d is not None and str(d).strip()]
        question = str(item.get("question") or "")
        track = _muchomusic_track(item)
        order = _order(f"{track}\n{question}", len(options))
        return _Fields(track or str(index), question, [options[i] for i in order], order.index(0),
                       _muchomusic_audio(item, root), groups)  # fmt: skip
    if layout == "muchomusic_prompts":
        answers, orders = item.get("answers"), item.get("answer_orders")
        answer = orders.index(0) if isinstance(orders, list) and 0 in orders else None
        question = _prompt_question(str(item.get("prompt") or ""))
        return _Fields(item_id, question, answers, answer, item.get("audio_path"), groups)
    # generic
    axes = fmap.get("group", "").split("|") if fmap.get("group") else []
    groups = {axis: _values(item.get(axis)) for axis in axes}
    if fmap.get("id"):
        item_id = _id(item.get(fmap["id"]), index)
    return _Fields(item_id, item.get(fmap["question"]), _choice_list(item.get(fmap["choices"])),
                   item.get(fmap["answer"]), item.get(fmap["audio"]), groups)  # fmt: skip


def build_prompt(question: str, choices: list[str] | None, answer_format: str = "letter", think: bool = False) -> str:
    """The question, its lettered choices and the answer instruction (``INSTRUCTIONS[answer_format]``).

    >>> print(build_prompt("Which key?", ["C major", "A minor"], "text"))
    Which key?
    (A) C major
    (B) A minor
    Answer with the text of the correct choice.
    """
    if not choices:
        return question + (THINK_INSTRUCTION if think else "")
    lettered = "\n".join(f"({chr(65 + j)}) {c}" for j, c in enumerate(choices))
    return f"{question}\n{lettered}\n{INSTRUCTIONS[answer_format]}" + (THINK_INSTRUCTION if think else "")


# ---------------------------------------------------------------- the public readers


def read_benchmark(
    path: str | Path,
    fields: dict[str, str] | str | None = None,
    audio_root: str | Path | None = None,
    answer_format: str = "letter",
    think: bool = False,
) -> Benchmark:
    """Read an evaluation file of any layout into rows and bad rows, without decoding audio.

    Args:
        path: the file (JSON list or object, JSONL, CSV; see the module doc for the layouts).
        fields: a field map for the ``generic`` layout (a dict or ``"question=q,choices=c,..."``).
        audio_root: the folder relative audio paths start from (default: the file's folder).
        answer_format: what the prompt asks for: ``letter`` or ``text`` (the choice's words, which MMAU's and
            MMAR's scorers credit directly).
        think: also ask for ``<think>`` reasoning then an ``<answer>`` block.

    Raises:
        FileNotFoundError: no such file.
        LayoutError: no layout fits, or a field map is malformed.
        ValueError: ``answer_format`` is not one of ``ANSWER_FORMATS``.
    """
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, got {answer_format!r}")
    path = Path(path)
    fmap = parse_field_map(fields) if isinstance(fields, str) else (fields or {})
    src = _read_items(path)
    good_items = [i for i in src.items if isinstance(i, dict)]
    layout = detect_layout(good_items, fmap)
    root = Path(audio_root) if audio_root else path.parent
    bench = Benchmark(layout, path, src.items, [], answer_format=answer_format, kind=src.kind,
                      fieldnames=src.header, wrapper=src.wrapper)  # fmt: skip
    if layout == "manifest":
        return _read_manifest_items(bench, src, root)
    if layout == "generic":
        named = [v for k, v in fmap.items() if k != "group"] + fmap.get("group", "").split("|")
        lacking = [v for v in named if v and not any(v in i for i in good_items)]
        if lacking:
            raise LayoutError(f"{path}: the field map names fields no item has: {lacking}")
    bench.axes = (
        LAYOUT_SPECS[layout].axes if layout != "generic" else tuple(filter(None, fmap.get("group", "").split("|")))
    )
    parsed = _parsed_items(bench, src, layout, root, fmap)
    row_ids = _unique_ids([f.id for _, f in parsed])
    for (index, f), row_id in zip(parsed, row_ids, strict=True):
        bench.item_of[row_id], bench.source_id[row_id] = index, f.id
        if row := _benchmark_row(bench, row_id, f, root, think):
            bench.rows.append(row)
    if bench.dropped_choices:
        logger.info("%s: dropped %d empty trailing choices", path, bench.dropped_choices)
    return bench


def _parsed_items(
    bench: Benchmark, src: Any, layout: str, root: Path, fmap: dict[str, str]
) -> list[tuple[int, _Fields]]:
    """Each object item's index and fields under ``layout``; an item that is not an object goes to ``bench.bad``."""
    parsed: list[tuple[int, _Fields]] = []
    for index, item in enumerate(src.items):
        if isinstance(item, BadRow):
            bench.bad.append(item)
        elif not isinstance(item, dict):
            bench.bad.append(BadRow(src.labels[index], "-", f"expected an object, got {type(item).__name__}"))
        elif None in item:  # csv.DictReader files cells beyond the header under None
            bench.bad.append(BadRow(src.labels[index], "-", f"{len(item[None])} more cells than the header"))
        else:
            parsed.append((index, _fields(layout, item, index, root, fmap)))
    return parsed


def _benchmark_row(bench: Benchmark, row_id: str, f: _Fields, root: Path, think: bool) -> Row | None:
    """One item's row, or None with its problems added to ``bench.bad`` (empty trailing choices are dropped and
    counted in ``bench.dropped_choices``, as MMAR's files end their choices with an empty string)."""
    problems, choices = [], f.choices
    if not isinstance(f.question, str) or not f.question.strip():
        problems.append(("question", "missing or empty"))
    if isinstance(choices, list):
        n = len(choices)
        while choices and isinstance(choices[-1], str) and not choices[-1].strip():
            choices = choices[:-1]
        bench.dropped_choices += n - len(choices)
        if not all(isinstance(c, (str, int, float)) and not isinstance(c, bool) for c in choices):
            problems.append(("choices", "must be a list of strings"))
        else:
            choices = [str(c) for c in choices]
    elif choices is not None:
        problems.append(("choices", f"must be a list, got {type(choices).__name__}"))
    if not choices:
        problems.append(("choices", "missing or empty (a multiple-choice benchmark item)"))
    if not f.audio:
        problems.append(("audio", "missing"))
    if problems:
        bench.bad.extend(BadRow(row_id, k, reason) for k, reason in problems)
        return None
    answer = f.answer
    if isinstance(answer, bool) or (
        isinstance(answer, (int, float)) and not all(isinstance(c, str) for c in f.choices)
    ):
        answer = str(answer)  # choices that are numbers or booleans: the answer is a value, not an index
    audio = str(f.audio)
    if not Path(audio).is_absolute():
        audio = str(root / audio)
    return Row(
        id=row_id,
        audio=audio,
        prompt=build_prompt(f.question.strip(), choices or None, bench.answer_format, think),
        choices=choices or None,
        answer=answer,
        task=next((values[0] for values in f.groups.values() if values), ""),  # the first axis it has
        groups=f.groups,
    )


def _unique_ids(ids: list[str]) -> list[str]:
    """Repeated ids made unique: the first keeps its id, later ones get ``#2``, ``#3``, ... (skipping any that
    another item already has).

    >>> _unique_ids(["a", "a", "a#2", "b", "a"])
    ['a', 'a#3', 'a#2', 'b', 'a#4']
    """
    used, out, count = set(ids), [], {}
    for source in ids:
        if source not in count:
            count[source] = 1
            out.append(source)
            continue
        while f"{source}#{count[source] + 1}" in used:
            count[source] += 1
        count[source] += 1
        out.append(f"{source}#{count[source]}")
        used.add(out[-1])
    return out


def _read_manifest_items(bench: Benchmark, src: _Source, root: Path) -> Benchmark:
    """grpo-audio rows, one per item, remembering which item each row came from."""
    for index, item in enumerate(src.items):
        if isinstance(item, BadRow):
            bench.bad.append(item)
            continue
        rows, bad = rows_from_records([(src.labels[index], item)], base_dir=root)
        bench.bad.extend(bad)
        for row in rows:
            bench.rows.append(row)
            bench.item_of.setdefault(row.id, index)
            bench.source_id.setdefault(row.id, row.id)
    return bench


def load_benchmark(
    path: str | Path,
    family: str | type[ModelFamily] | None = None,
    fields: dict[str, str] | str | None = None,
    audio_root: str | Path | None = None,
    answer_format: str = "letter",
    think: bool = False,
    bad_rows: str = "raise",
    decode: bool = True,
) -> Benchmark:
    """``read_benchmark`` then validate every row (fields, answer, audio) with ``bad_rows`` = ``raise`` or
    ``skip``; the returned benchmark's ``rows`` are the good ones.

    Raises:
        DataError: bad rows under ``bad_rows="raise"``, every one listed with its field.
    """
    bench = read_benchmark(path, fields, audio_root, answer_format, think)
    bench.rows = validate_and_apply(bench.rows, bench.bad, str(path), family, bad_rows, decode=decode)
    return bench


# ---------------------------------------------------------------- predictions back into the source file


def prediction_text(row: Row, completion: str, letter: bool = False, prefer: str = "text") -> str:
    """What the benchmark's scorer should read for one completion: the named choice's own text (or its letter
    for a scorer of letters) when the completion names exactly one choice, else the extracted answer as given.

    >>> row = Row(id="q", audio="a.wav", prompt="?", choices=["C", "Gm", "Cm7b5"], answer="Cm7b5")
    >>> prediction_text(row, "<answer>(C)</answer>"), prediction_text(row, "<answer>(C)</answer>", letter=True)
    ('Cm7b5', 'C')
    """
    said = extract_answer(completion) or ""
    if not row.choices:
        return said
    options = Choices(row.choices, prefer)
    named = options.named(said, canonical=False)
    if len({options.canonical[i] for i in named}) != 1:
        return said
    index = min(named)  # a repeated text named by its letter keeps that letter
    return chr(65 + index) if letter else row.choices[index]


@dataclass(frozen=True)
class PredictionExport:
    """What :func:`write_predictions` wrote, item by item of the source file.

    Attributes:
        path: the file written.
        items: the source file's items, readable or not (M).
        scored: items written with the prediction of their scored row (N).
        bad: items with no good row: unreadable, or skipped as bad rows (``bad_rows=skip``) (K).
        not_asked: items whose good row got no completion: beyond ``max_rows`` (J).
        kept_unscored: the unscored items that could be read were written too, with an empty prediction.
        prediction_field: the field the benchmark's scorer reads.
    """

    path: Path
    items: int
    scored: int
    bad: int
    not_asked: int
    kept_unscored: bool
    prediction_field: str

    @property
    def unscored(self) -> int:
        """Items the run did not score (``bad + not_asked``)."""
        return self.bad + self.not_asked

    def message(self, right: int) -> str:
        """What the export means to the benchmark's official scorer, for the user: one line when every item was
        scored; else a second, ``warning:`` line saying how many items were not scored and why, and, since the
        official scorer counts an item with an empty prediction as wrong, the accuracy it reports on every item
        (``right / items``) beside grpo-audio's on the scored ones (``right / scored``).

        >>> export = PredictionExport(Path("p.json"), 1000, 40, 0, 960, False, "model_output")
        >>> print(export.message(13))  # doctest: +NORMALIZE_WHITESPACE
        predictions (model_output) written to p.json: the 40 scored items of 1000 (the others left out)
        warning: 960 of 1000 items were not scored (skipped as bad rows: 0; beyond max_rows: 960). The official
        scorer counts an unscored item as wrong: on all 1000 items it would report 0.013 (13 right), where
        grpo-audio reports 0.325 (13 of the 40 scored items). Left out of this file, the unscored items do not
        lower the official scorer's number on it, which is then over the 40 scored items only, not the
        benchmark's full set.

        Args:
            right: how many of the scored items grpo-audio counted right (its verdicts taken as the scorer's).
        """
        field, m, n = self.prediction_field, self.items, self.scored
        if not self.unscored:
            return f"predictions ({field}) written to {self.path}: all {m} items scored"
        written = "with the unscored ones, empty" if self.kept_unscored else "the others left out"
        head = f"predictions ({field}) written to {self.path}: the {n} scored items of {m} ({written})"
        ours = f"{right / n:.3f} ({right} of the {n} scored items)" if n else "nothing (no item scored)"
        said = (
            f"warning: {self.unscored} of {m} items were not scored (skipped as bad rows: {self.bad}; beyond "
            f"max_rows: {self.not_asked}). The official scorer counts an unscored item as wrong: on all {m} items "
            f"it would report {right / m:.3f} ({right} right), where grpo-audio reports {ours}. "
        )
        if self.kept_unscored:
            said += "This file holds them with an empty prediction: the official scorer's number on it is that one."
        else:
            said += (
                "Left out of this file, the unscored items do not lower the official scorer's number on it, which "
                f"is then over the {n} scored items only, not the benchmark's full set."
            )
        return f"{head}\n{said}"


def write_predictions(
    bench: Benchmark, completions: dict[str, str], out: str | Path, prefer: str = "text", keep_unscored: bool = False
) -> PredictionExport:
    """The source items, unchanged, with the scorer's prediction field filled (``Layout.prediction_field``), in
    the source's own kind (JSON, JSONL or CSV), for the benchmark's official scorer.

    Only the scored items are written by default: an item whose row was skipped as bad, or got no completion
    (beyond ``max_rows``), would carry an empty prediction, which the official scorers count as wrong, silently
    lowering their number below grpo-audio's on the same answers. ``keep_unscored`` writes them too, with an empty
    prediction, for a file of the benchmark's full length. Either way :meth:`PredictionExport.message` says what
    was left unscored and what the official scorer will make of it. Items that could not be read at all (a JSONL
    line that is not JSON) are never written.

    Args:
        bench: the benchmark the completions answer.
        completions: row id -> completion text, for the rows scored.
        out: the file to write.
        prefer: how the completions' bare letters were asked for (see ``Choices``).
        keep_unscored: also write the unscored items, with an empty prediction.

    Returns:
        What was written, counted by item.
    """
    spec = bench.spec
    by_item = {bench.item_of[r.id]: r for r in bench.rows}
    items, scored, bad, not_asked = [], 0, 0, 0
    for index, item in enumerate(bench.items):
        row = by_item.get(index)
        if row is not None and row.id in completions:
            scored += 1
            prediction = prediction_text(row, completions[row.id], spec.predict_letter, prefer)
            items.append({**item, spec.prediction_field: prediction})
            continue
        bad += row is None
        not_asked += row is not None
        if keep_unscored and isinstance(item, dict):
            items.append({**item, spec.prediction_field: ""})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if bench.kind == "csv":
        header = bench.fieldnames or []
        names = [*header, *([spec.prediction_field] if spec.prediction_field not in header else [])]
        with out.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=names, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(items)
    elif bench.kind == "jsonl":
        out.write_text("".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items), encoding="utf-8")
    else:
        payload: Any = {bench.wrapper: items} if bench.wrapper else items
        out.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return PredictionExport(out, len(bench.items), scored, bad, not_asked, keep_unscored, spec.prediction_field)

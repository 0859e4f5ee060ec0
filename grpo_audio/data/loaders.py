"""Loaders: a JSONL manifest, a Hugging Face ``datasets`` dataset, or a plain Python list, all to ``Row``.

Every loader validates every row up front (fields, audio placeholders, audio decoding and length against the
model family's limit; with a ``ContextLimit``, the prompt with its audio tokens and the completion's room against
the engine's context), reports all bad rows at once, then raises or skips them per ``bad_rows``. A manifest
line looks like::

    {"id": "clip-1", "audio": "clips/clip-1.wav", "prompt": "Which chord is played?",
     "choices": ["C major", "A minor", "G major", "E minor"], "answer": "A", "task": "chord",
     "metadata": {"chord": "C:maj"}}

Audio paths are relative to the manifest's folder. For ``datasets``, the audio column is read with
``Audio(decode=False)``: datasets' own decoding goes through torchcodec, which does not run on the CPU torch.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..models import ModelFamily, get_family
from .schema import BadRow, ContextLimit, Row, apply_policy, audio_limit, resolve_audio, validate_rows

ROW_FIELDS = tuple(f.name for f in dataclasses.fields(Row))


def _family(family: str | type[ModelFamily] | None) -> type[ModelFamily] | None:
    return get_family(family) if isinstance(family, str) else family


def rows_from_records(
    records: Iterable[tuple[str, Any]], base_dir: Path | None = None
) -> tuple[list[Row], list[BadRow]]:
    """Turn ``(fallback_id, record)`` pairs into rows; records that are not rows at all become ``BadRow``s."""
    rows: list[Row] = []
    bad: list[BadRow] = []
    for fallback_id, rec in records:
        if not isinstance(rec, dict):
            bad.append(BadRow(fallback_id, "-", f"expected a JSON object, got {type(rec).__name__}"))
            continue
        rid = str(rec.get("id") or fallback_id)
        unknown = sorted(set(rec) - set(ROW_FIELDS))
        if unknown:
            bad.append(BadRow(rid, unknown[0], f"unknown field(s) {unknown}; valid fields: {', '.join(ROW_FIELDS)}"))
            continue
        if "prompt" not in rec:
            bad.append(BadRow(rid, "prompt", "missing"))
            continue
        if "audio" not in rec:
            bad.append(BadRow(rid, "audio", "missing"))
            continue
        values = {**rec, "id": rid, "audio": resolve_audio(rec["audio"], base_dir)}
        if values.get("metadata") is None:
            values["metadata"] = {}
        rows.append(Row(**values))
    return rows, bad


def validate_and_apply(
    rows: list[Row],
    pre_bad: list[BadRow],
    source: str,
    family: str | type[ModelFamily] | None,
    bad_rows: str,
    long_audio: str = "truncate",
    max_audio_seconds: float | None = None,
    decode: bool = True,
    context: ContextLimit | None = None,
) -> list[Row]:
    """Validate ``rows`` (see ``validate_rows``), add the rows that failed earlier (``pre_bad``), and raise or skip
    the bad ones per ``bad_rows``. Returns the good rows in order."""
    fam = _family(family)
    report = validate_rows(
        rows, fam, max_audio_seconds=max_audio_seconds, long_audio=long_audio, decode=decode, context=context
    )
    report.bad = pre_bad + report.bad
    total = len(rows) + len({b.id for b in pre_bad})
    return apply_policy(report, source, bad_rows, total, audio_limit(fam, max_audio_seconds))


def read_manifest(path: str | Path, base_dir: str | Path | None = None) -> tuple[list[Row], list[BadRow]]:
    """Parse a JSONL manifest into rows (unvalidated) and lines that are not rows (bad JSON, not an object).
    Relative audio paths start from ``base_dir`` (default: the manifest's folder)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    records: list[tuple[str, Any]] = []
    bad: list[BadRow] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((f"line {lineno}", json.loads(line)))
        except json.JSONDecodeError as e:
            bad.append(BadRow(f"line {lineno}", "-", f"not valid JSON: {e.msg}"))
    rows, more_bad = rows_from_records(records, base_dir=Path(base_dir) if base_dir else path.parent)
    return rows, bad + more_bad


def load_manifest(
    path: str | Path,
    family: str | type[ModelFamily] | None = None,
    bad_rows: str = "raise",
    long_audio: str = "truncate",
    max_audio_seconds: float | None = None,
    decode: bool = True,
    context: ContextLimit | None = None,
) -> list[Row]:
    """Load and validate a JSONL manifest.

    Args:
        path: the manifest; audio paths in it are relative to its folder.
        family: the model family whose rate and audio length limit apply (name or adapter).
        bad_rows: ``raise`` (default: a ``DataError`` listing every bad row) or ``skip`` (log and drop them).
        long_audio: ``truncate`` (counted warning) or ``reject`` audio over the limit.
        max_audio_seconds: overrides the family's limit.
        decode: decode every clip up front (default) to find corrupt audio before any compute.
        context: also refuse rows whose prompt with its audio tokens and ``max_new_tokens`` overflow the engine's
            context (a bad row under ``bad_rows``, named with its token count); needs ``family`` and ``decode``.

    Returns:
        The good rows in file order.
    """
    rows, bad = read_manifest(path)
    return validate_and_apply(rows, bad, str(path), family, bad_rows, long_audio, max_audio_seconds, decode, context)


def from_records(
    records: list[dict[str, Any]],
    family: str | type[ModelFamily] | None = None,
    bad_rows: str = "raise",
    long_audio: str = "truncate",
    max_audio_seconds: float | None = None,
    decode: bool = True,
    base_dir: str | Path | None = None,
    context: ContextLimit | None = None,
) -> list[Row]:
    """Load and validate a plain list of dicts (same fields as a manifest line; ``audio`` may be an array); the
    settings are ``load_manifest``'s."""
    rows, bad = rows_from_records(
        ((f"item {i}", r) for i, r in enumerate(records)), Path(base_dir) if base_dir else None
    )
    return validate_and_apply(rows, bad, "records", family, bad_rows, long_audio, max_audio_seconds, decode, context)


def from_hf_dataset(
    dataset: Any,
    family: str | type[ModelFamily] | None = None,
    audio_column: str = "audio",
    column_map: dict[str, str] | None = None,
    bad_rows: str = "raise",
    long_audio: str = "truncate",
    max_audio_seconds: float | None = None,
    decode: bool = True,
    context: ContextLimit | None = None,
) -> list[Row]:
    """Load and validate a ``datasets.Dataset`` with an ``Audio`` column (read undecoded, see module doc); the
    other settings are ``load_manifest``'s.

    Args:
        dataset: the dataset.
        audio_column: the column holding audio (an ``Audio`` feature or a path string).
        column_map: dataset column -> row field, e.g. ``{"question": "prompt", "label": "answer"}``; columns
            that are neither mapped nor row fields are ignored (datasets often carry extra columns).
    """
    from datasets import Audio

    if isinstance(dataset.features.get(audio_column), Audio):
        dataset = dataset.cast_column(audio_column, Audio(decode=False))
    column_map = {audio_column: "audio", **(column_map or {})}
    records = []
    for i, item in enumerate(dataset):
        rec = {column_map.get(k, k): v for k, v in item.items() if column_map.get(k, k) in ROW_FIELDS}
        audio = rec.get("audio")
        if isinstance(audio, dict):  # Audio(decode=False): {"path": ..., "bytes": ...}
            rec["audio"] = audio.get("bytes") or audio.get("path")
        records.append((f"item {i}", rec))
    rows, bad = rows_from_records(records)
    return validate_and_apply(rows, bad, "dataset", family, bad_rows, long_audio, max_audio_seconds, decode, context)

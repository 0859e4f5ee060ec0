"""The one row type every loader produces, and its validation.

A :class:`Row` is one audio clip with a chat prompt and the targets the trainer and rewards need. Validation
checks every field and decodes the audio, collecting every problem of every row (id, field, reason) so that a
dataset can be fixed in one pass instead of one crash at a time. Given a :class:`ContextLimit`, it also checks
that each prompt with its audio tokens leaves room for the completion in the engine's context: the prompt's text
is tokenized and the audio tokens are counted from the clip's duration (``ModelFamily.audio_token_count``), so
the processor never runs on the audio.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..audio import AudioClip, AudioError, load_audio
from ..errors import UserError
from ..models import FAMILIES, ModelFamily
from ..models.base import context_length
from ..rewards.matching import Choices
from ..rewards.music_theory import metadata_problems

logger = logging.getLogger(__name__)

# What a loader does with rows that fail validation.
BAD_ROWS = ("raise", "skip")
# The row fields every reward gets as keyword arguments, besides prompts and completions (``Row.columns``).
REWARD_COLUMNS: tuple[str, ...] = ("id", "answer", "choices", "metadata", "caption", "thinking", "task")
# Text that stands for an audio clip in some family's prompt: a literal one in a prompt is a second audio slot.
AUDIO_TOKEN_TEXTS: tuple[str, ...] = tuple(sorted({t for f in FAMILIES.values() for t in f.audio_special_tokens}))


@dataclass
class Row:
    """One training or evaluation example.

    Attributes:
        id: unique id, used in every message about the row.
        audio: a path (absolute once loaded), encoded bytes, or a sample array ([T] or [T, C]).
        prompt: the user's text (the audio is placed before it) or a chat message list with exactly one
            ``{"type": "audio"}`` content item.
        sampling_rate: rate of an array ``audio``; None for files and bytes.
        answer: the target answer (MCQ: the correct choice's text, its letter or its integer index from 0, read
            by the one answer matcher, ``grpo_audio.rewards.matching``; open questions: the answer).
        choices: the options of a multiple-choice question, in order (A, B, ...).
        metadata: ground truth for music rewards (key, tempo, chords, meter, instrument, genre, ...).
        caption: a reference caption (captioning tasks).
        thinking: a reference chain of thought (cold-start data).
        task: the question type, for per-category metrics (e.g. ``chord``, ``key``, ``caption``).
        system: an optional system message.
        groups: the benchmark axes the row is reported under, axis -> values (MMAU: ``task``, ``category``,
            ``sub-category``, ``difficulty``); a row may hold several values on an axis, or none.
    """

    id: str
    audio: Any
    prompt: str | list[dict[str, Any]]
    sampling_rate: int | None = None
    answer: str | int | None = None
    choices: list[str] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    caption: str | None = None
    thinking: str | None = None
    task: str = ""
    system: str | None = None
    groups: dict[str, list[str]] = field(default_factory=dict)

    def load_audio(self, family: type[ModelFamily], max_seconds: float | None = None, long_audio: str = "truncate"):
        """Decode this row's audio for ``family`` (its rate and, unless given, its length limit)."""
        limit = max_seconds if max_seconds else family.max_audio_seconds
        return load_audio(
            self.audio,
            sample_id=self.id,
            sampling_rate=self.sampling_rate,
            target_sr=family.sampling_rate,
            max_seconds=limit,
            long_audio=long_audio,
        )

    def messages(self, family: type[ModelFamily]) -> list[dict[str, Any]]:
        return family.build_messages(self.prompt, system=self.system)

    def render(self, family: type[ModelFamily], processor: Any) -> str:
        """The chat prompt as the processor and vLLM take it (its audio placeholder not yet expanded)."""
        return family.render_prompt(processor, self.messages(family))

    def columns(self) -> dict[str, Any]:
        """The row's fields as reward keyword arguments (TRL passes dataset columns the same way)."""
        return {name: getattr(self, name) for name in REWARD_COLUMNS}


@dataclass
class BadRow:
    """A validation failure: which row, which field, why."""

    id: str
    field: str
    reason: str

    def __str__(self) -> str:
        return f"row '{self.id}': field '{self.field}': {self.reason}"


class DataError(UserError, ValueError):
    """One or more rows failed validation; ``bad`` lists all of them."""

    def __init__(self, source: str, bad: list[BadRow], total: int):
        self.bad = bad
        lines = "\n".join(f"  {b}" for b in bad[:50])
        more = f"\n  ... and {len(bad) - 50} more" if len(bad) > 50 else ""
        n_rows = len({b.id for b in bad})  # a row can fail on several fields
        super().__init__(f"{source}: {n_rows} of {total} rows are bad:\n{lines}{more}")


def _audio_slots(prompt: str | list[dict[str, Any]]) -> int:
    """How many audio clips a prompt refers to: audio content items plus literal audio tokens in its text."""
    if isinstance(prompt, str):
        return 1 + sum(prompt.count(t) for t in AUDIO_TOKEN_TEXTS)
    slots = 0
    for message in prompt:
        content = message.get("content")
        items = [{"type": "text", "text": content}] if isinstance(content, str) else (content or [])
        for item in items:
            if item.get("type") == "audio":
                slots += 1
            elif item.get("type") == "text":
                slots += sum(str(item.get("text", "")).count(t) for t in AUDIO_TOKEN_TEXTS)
    return slots


def check_fields(row: Row) -> list[BadRow]:
    """Structural checks (no audio decoding): prompt, audio placeholders, MCQ consistency, music labels in the
    metadata (read by meaning, as the rewards read them)."""
    bad: list[BadRow] = []
    rid = row.id

    def add(field_name: str, reason: str) -> None:
        bad.append(BadRow(rid, field_name, reason))

    if row.audio is None or (isinstance(row.audio, str) and not row.audio.strip()):
        add("audio", "missing")
    if row.prompt is None or (isinstance(row.prompt, str) and not row.prompt.strip()):
        add("prompt", "missing or empty")
    elif isinstance(row.prompt, list):
        if not row.prompt or not all(isinstance(m, dict) and "role" in m for m in row.prompt):
            add("prompt", "a message list must hold dicts with 'role' and 'content'")
        elif (n := _audio_slots(row.prompt)) != 1:
            add("prompt", f"has {n} audio placeholders but the row has 1 audio")
    elif isinstance(row.prompt, str):
        if (n := _audio_slots(row.prompt)) != 1:
            add("prompt", f"has {n} audio placeholders (the audio is inserted before the text; remove audio tokens)")
    else:
        add("prompt", f"must be a string or a message list, got {type(row.prompt).__name__}")
    if row.choices is not None:
        if (
            not isinstance(row.choices, list)
            or len(row.choices) < 2
            or not all(isinstance(c, str) and c.strip() for c in row.choices)
        ):
            add("choices", "must be a list of at least 2 non-empty strings")
        elif len(row.choices) > 26:
            add("choices", "more than 26 choices cannot be lettered")
        elif row.answer is None:
            add("answer", "a multiple-choice row needs its answer")
        elif Choices(row.choices).answer_index(row.answer) is None:
            letters = f"A-{chr(ord('A') + len(row.choices) - 1)}"
            add(
                "answer",
                f"{row.answer!r} is neither one of the choices {row.choices} nor a letter {letters} nor an index "
                f"0-{len(row.choices) - 1}",
            )
    if not isinstance(row.metadata, dict):
        add("metadata", f"must be a mapping, got {type(row.metadata).__name__}")
    else:
        for field_name, reason in metadata_problems(row.metadata):
            add(field_name, reason)
    return bad


@dataclass(frozen=True)
class ContextLimit:
    """What every prompt with its audio must fit: the engine's context less the completion's room.

    Attributes:
        processor: the checkpoint's processor (its chat template and tokenizer give the prompt's text tokens).
        max_model_len: L, the engine's context length in tokens (prompt with audio tokens + completion).
        max_new_tokens: K, the completion length cap.
    """

    processor: Any
    max_model_len: int
    max_new_tokens: int

    @classmethod
    def from_checkpoint(cls, model_dir: str | Path, max_new_tokens: int, max_model_len: int = 0) -> ContextLimit:
        """The limit of the checkpoint in ``model_dir``: its processor, and ``max_model_len`` or, when 0, the
        text model's ``max_position_embeddings`` (``models.base.context_length``)."""
        from transformers import AutoConfig, AutoProcessor

        config = AutoConfig.from_pretrained(model_dir)
        return cls(AutoProcessor.from_pretrained(model_dir), context_length(config, max_model_len), max_new_tokens)

    def prompt_tokens(self, family: type[ModelFamily], row: Row, seconds: float) -> tuple[int, int]:
        """(prompt tokens with the audio expanded, audio tokens) of ``row`` with a clip of ``seconds``."""
        text_tokens = len(self.processor.tokenizer(row.render(family, self.processor))["input_ids"])
        return family.prompt_token_count(text_tokens, seconds), family.audio_token_count(seconds)

    def problem(self, family: type[ModelFamily], row: Row, seconds: float) -> tuple[int, BadRow | None]:
        """``row``'s prompt tokens (audio included), and a ``BadRow`` when they and ``max_new_tokens`` overflow."""
        prompt, audio = self.prompt_tokens(family, row, seconds)
        total = prompt + self.max_new_tokens
        if total <= self.max_model_len:
            return prompt, None
        reason = (
            f"prompt is {prompt} tokens with its audio ({audio} audio tokens for {seconds:.1f} s) + max_new_tokens "
            f"{self.max_new_tokens} = {total} > context {self.max_model_len}; cut the audio or raise max_model_len"
        )
        return prompt, BadRow(row.id, "prompt", reason)


@dataclass
class ValidationReport:
    """Result of validating rows: the good ones, every bad one, and audio statistics.

    Attributes:
        good: rows that passed, in input order.
        bad: every failure (a row can fail on several fields).
        seconds: decoded duration per good row id (before truncation).
        truncated: ids of good rows whose audio is cut to the length limit.
        prompt_tokens: per row id checked against a ``ContextLimit``, its prompt's tokens with the audio expanded.
    """

    good: list[Row]
    bad: list[BadRow]
    seconds: dict[str, float]
    truncated: list[str]
    prompt_tokens: dict[str, int] = field(default_factory=dict)


def validate_rows(
    rows: list[Row],
    family: type[ModelFamily] | None = None,
    max_audio_seconds: float | None = None,
    long_audio: str = "truncate",
    decode: bool = True,
    context: ContextLimit | None = None,
) -> ValidationReport:
    """Check every row (and decode its audio when ``decode``), collecting every failure.

    Args:
        rows: rows to check.
        family: the model family whose sample rate and length limit apply; None checks decoding only.
        max_audio_seconds: overrides the family's limit.
        long_audio: ``truncate`` or ``reject`` audio over the limit.
        decode: decode every clip (finds corrupt data, NaN samples); False checks fields only.
        context: also check that each prompt with its audio tokens (counted from the clip as cut to the limit)
            plus ``max_new_tokens`` fits ``max_model_len``; needs ``family`` and ``decode``.
    """
    if context is not None and (family is None or not decode):
        raise ValueError("the context check needs a model family and decoded audio (decode=True)")
    good: list[Row] = []
    bad: list[BadRow] = []
    seconds: dict[str, float] = {}
    truncated: list[str] = []
    prompt_tokens: dict[str, int] = {}
    seen: set[str] = set()
    for row in rows:
        problems = check_fields(row)
        if row.id in seen:
            problems.append(BadRow(row.id, "id", "duplicate id"))
        seen.add(row.id)
        if decode and not any(p.field == "audio" for p in problems):
            try:
                clip = _decode(row, family, max_audio_seconds, long_audio)
                seconds[row.id] = clip.original_seconds
                if clip.truncated:
                    truncated.append(row.id)
            except AudioError as e:
                problems.append(BadRow(row.id, e.field, e.reason))
        if context is not None and not problems:
            prompt_tokens[row.id], too_long = context.problem(family, row, clip.seconds)
            problems += [too_long] if too_long else []
        if problems:
            bad.extend(problems)
        else:
            good.append(row)
    return ValidationReport(good=good, bad=bad, seconds=seconds, truncated=truncated, prompt_tokens=prompt_tokens)


def _decode(row: Row, family: type[ModelFamily] | None, max_seconds: float | None, long_audio: str) -> AudioClip:
    if family is not None:
        return row.load_audio(family, max_seconds=max_seconds, long_audio=long_audio)
    return load_audio(
        row.audio, sample_id=row.id, sampling_rate=row.sampling_rate, max_seconds=max_seconds, long_audio=long_audio
    )


def apply_policy(report: ValidationReport, source: str, bad_rows: str, total: int, limit_s: float | None) -> list[Row]:
    """Raise on bad rows (``bad_rows='raise'``) or drop them with a count (``'skip'``); report truncations."""
    if bad_rows not in BAD_ROWS:
        raise ValueError(f"bad_rows must be one of {BAD_ROWS}, got {bad_rows!r}")
    if report.bad:
        if bad_rows == "raise":
            raise DataError(source, report.bad, total)
        ids = sorted({b.id for b in report.bad})
        logger.warning(
            "%s: skipped %d of %d rows:\n%s", source, len(ids), total, "\n".join(f"  {b}" for b in report.bad[:50])
        )
    if report.truncated:
        logger.warning(
            "%s: truncated %d clips to the %g s limit (first: %s)",
            source,
            len(report.truncated),
            limit_s or 0,
            ", ".join(report.truncated[:5]),
        )
    return report.good


def audio_limit(family: type[ModelFamily] | None, override: float | None) -> float | None:
    if override:
        return override
    return family.max_audio_seconds if family is not None else None


def resolve_audio(audio: Any, base_dir: Path | None) -> Any:
    """Paths relative to a manifest are taken relative to the manifest's folder."""
    if isinstance(audio, str) and base_dir is not None and not Path(audio).is_absolute():
        return str(base_dir / audio)
    if isinstance(audio, list):
        return np.asarray(audio, dtype=np.float32)
    return audio

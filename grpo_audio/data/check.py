"""Vetting a data file before a long run: :func:`load_rows`, the rows of a file a run's config names, as the trainer
and the recipe's up-front checks read them; and ``grpo-audio check-data`` (:func:`check_data`), one line per row.

``check_data`` reads every layout ``grpo-audio eval`` reads (``data/benchmarks.py``), checks each row's fields,
answer and audio against the model family and, given a checkpoint, each prompt's tokens with its audio plus
``max_new_tokens`` against the engine's context, and prints one line per row, then a summary.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..models import ModelFamily, family_of_checkpoint, get_family
from .benchmarks import LayoutError, load_benchmark, read_benchmark
from .loaders import load_manifest
from .schema import BAD_ROWS, BadRow, ContextLimit, DataError, Row, audio_limit, validate_rows


class RowsError(ConfigError, DataError):
    """A data file that a config key names holds bad rows, or no good one: a ``ConfigError`` whose message names the
    key, and a ``DataError`` with the bad rows in ``bad`` (none when no row passed validation)."""

    def __init__(self, message: str, bad: list[BadRow]):
        self.bad = bad
        Exception.__init__(self, message)


def load_rows(
    path: str | Path,
    field: str,
    family: type[ModelFamily],
    bad_rows: str = "raise",
    long_audio: str = "truncate",
    max_audio_seconds: float | None = None,
    context: ContextLimit | None = None,
    benchmark: bool = False,
) -> list[Row]:
    """The rows of the data file ``path``, which the config key ``field`` names, each validated with its audio
    decoded for ``family``: bad rows raised or skipped (``bad_rows``), audio over the limit cut or refused
    (``long_audio``, ``max_audio_seconds``: the family's limit when None), prompts that the engine samples from
    checked against its ``context`` with their audio and the completion's room.

    Args:
        benchmark: read the file as ``grpo-audio eval`` reads a benchmark (any layout of ``data/benchmarks.py``)
            rather than as a manifest.

    Raises:
        RowsError: naming ``field``, then every bad row with its field (``DataError``'s list); or naming ``field``
            and the file when no row passed validation.
    """
    try:
        if benchmark:
            rows = load_benchmark(path, family).rows
        else:
            rows = load_manifest(
                path,
                family=family,
                bad_rows=bad_rows,
                long_audio=long_audio,
                max_audio_seconds=max_audio_seconds,
                context=context,
            )
    except (DataError, LayoutError) as e:
        raise RowsError(f"{field}: {e}", getattr(e, "bad", [])) from None
    if not rows:
        raise RowsError(f"{field}: {path}: no row passed validation", [])
    return rows


def rows_of_tasks(rows: list[Row], tasks: list[str], field: str = "data.train_tasks") -> list[Row]:
    """The rows whose ``task`` is one of ``tasks`` (every row when ``tasks`` is empty); ``ConfigError`` naming
    ``field`` and the tasks there are when none is."""
    if not tasks:
        return rows
    kept = [r for r in rows if r.task in tasks]
    if not kept:
        present = sorted({r.task for r in rows})
        raise ConfigError(f"{field} {list(tasks)}: no training row has one (tasks: {present})")
    return kept


def check_data(
    path: str | Path,
    family: str | None = None,
    long_audio: str = "truncate",
    max_seconds: float | None = None,
    bad_rows: str = "raise",
    fields: str | None = None,
    audio_root: str | None = None,
    model: str | Path | None = None,
    max_model_len: int = 0,
    max_new_tokens: int = 256,
) -> int:
    """Validate every row of ``path`` and print a per-row report.

    Args:
        path: a manifest or benchmark file (any layout of ``data/benchmarks.py``).
        family: apply this model family's sampling rate and audio length limit.
        long_audio: ``truncate`` (reported) or ``reject`` audio over the limit.
        max_seconds: overrides the family's limit.
        bad_rows: ``raise``: exit status 1 when any row is bad; ``skip``: bad rows are reported and would be
            skipped, exit status 0 if any row is good.
        fields: a field map for the generic layout.
        audio_root: the folder relative audio paths start from.
        model: a checkpoint directory: its family (unless ``family`` is given) and its processor, to check that each
            prompt with its audio tokens plus ``max_new_tokens`` fits the context.
        max_model_len: the engine's context length (``rollout.max_model_len``); 0: the model's own.
        max_new_tokens: the completion's room (``rollout.max_new_tokens``).

    Returns:
        The exit status.

    Raises:
        ValueError: ``family`` is not the checkpoint's.
    """
    if bad_rows not in BAD_ROWS:
        raise ValueError(f"bad_rows must be one of {BAD_ROWS}, got {bad_rows!r}")
    fam = get_family(family) if family else None
    context = None
    if model is not None:
        own = family_of_checkpoint(model)
        if fam is not None and fam is not own:
            raise ValueError(f"family {fam.name!r} given, but the checkpoint {model} is a {own.name} model")
        fam, context = own, ContextLimit.from_checkpoint(model, max_new_tokens, max_model_len)
    bench = read_benchmark(path, fields=fields, audio_root=audio_root)
    report = validate_rows(bench.rows, fam, max_audio_seconds=max_seconds, long_audio=long_audio, context=context)
    problems: dict[str, list[str]] = {}
    for b in bench.bad + report.bad:
        problems.setdefault(b.id, []).append(f"{b.field}: {b.reason}")
    truncated = set(report.truncated)
    limit = audio_limit(fam, max_seconds)
    ids = [b.id for b in bench.bad] + [r.id for r in bench.rows]
    for rid in dict.fromkeys(ids):
        if rid in problems:
            print(f"BAD  {rid}: " + "; ".join(problems[rid]))
        else:
            note = f"  (truncated to {limit:g} s)" if rid in truncated else ""
            if fam is not None:  # the processor's own arithmetic, on the clip as it reaches the processor
                note += f", {fam.audio_token_count(min(report.seconds[rid], limit))} audio tokens"
            if context is not None:
                prompt = report.prompt_tokens[rid]
                note += f", {prompt} + {max_new_tokens} = {prompt + max_new_tokens} of {context.max_model_len} tokens"
            print(f"ok   {rid}: {report.seconds[rid]:.1f} s{note}")
    n_rows, n_bad = len(dict.fromkeys(ids)), len(problems)
    dropped = f", {bench.dropped_choices} empty trailing choices dropped" if bench.dropped_choices else ""
    print(
        f"{bench.layout} layout, {n_rows} rows: {n_rows - n_bad} ok, {n_bad} bad, {len(truncated)} truncated"
        + (f" (limit {limit:g} s)" if limit else "")
        + (f", context {context.max_model_len} tokens with max_new_tokens {max_new_tokens}" if context else "")
        + dropped
    )
    if bad_rows == "skip":
        return 0 if n_rows > n_bad else 1
    return 1 if n_bad else 0

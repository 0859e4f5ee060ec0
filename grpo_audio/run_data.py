"""The rows a GRPO run reads: its training prompts (those of ``data.train_tasks``), its held-out prompts and its
replayed supervised rows, each loaded and checked up front as the engine and the replay will read them, so that a
bad row fails before the first step, not when it is drawn hours in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import ConfigError, DataConfig, RolloutConfig
from .data.check import load_rows, rows_of_tasks
from .data.loaders import load_manifest
from .data.schema import ContextLimit, Row
from .models import ModelFamily
from .replay import check_replay_rows


@dataclass
class RunRows:
    """A run's rows: ``train`` (the prompts it samples), ``eval`` (held out; empty: no evaluation) and ``replay``
    (supervised rows trained on beside the policy loss; empty: none)."""

    train: list[Row]
    eval: list[Row]
    replay: list[Row]


def load_run_rows(
    data: DataConfig,
    rollout: RolloutConfig,
    family: type[ModelFamily],
    processor: Any,
    banned_ids: list[int],
    train: list[Row] | None = None,
    eval: list[Row] | None = None,
) -> RunRows:
    """The rows of a run's ``data`` section, ``train`` and ``eval`` loaded only when not given. The engine samples
    from the training and eval rows: each must fit its context (``rollout.max_model_len``) with its audio and the
    completion's room; replayed rows are scored on their targets only (``replay.check_replay_rows``, with the
    ``processor``'s tokenizer and the ``banned_ids`` no completion may hold).

    Raises:
        ConfigError: no training row (of ``data.train_tasks``), a replay file with no row; a bad row under
            ``data.bad_rows: raise`` (``data.check.RowsError``, naming the key).
    """
    limits = {
        "bad_rows": data.bad_rows,
        "long_audio": data.long_audio,
        "max_audio_seconds": data.max_audio_seconds or None,
    }
    context = ContextLimit(processor, rollout.max_model_len, rollout.max_new_tokens)
    if train is None:
        train = load_rows(data.train, "data.train", family, **limits, context=context)
    train = rows_of_tasks(train, data.train_tasks)
    if not train:
        raise ConfigError(f"data.train {data.train!r}: no training rows")
    if eval is None and data.eval:
        eval = load_rows(data.eval, "data.eval", family, **limits, context=context)
    replay_specs = [spec.strip() for spec in data.replay.split(",") if spec.strip()]
    replayed = [row for spec in replay_specs for row in load_manifest(spec, family=family, **limits)]
    replay = check_replay_rows(replayed, processor.tokenizer, banned_ids, data.bad_rows)
    if replay_specs and not replay:
        raise ConfigError(f"data.replay {data.replay!r}: no rows")
    return RunRows(train, eval or [], replay)

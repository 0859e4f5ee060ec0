"""Evaluation: accuracy per question type and per benchmark axis, choice rate, format rate, per-row results.

Inputs: any layout ``data/benchmarks.py`` reads (grpo-audio manifests, MMAU, MMAR, MuChoMusic's CSV and prompt
JSON, or a generic file with a field map). MCQ rows are scored with ``mcq_accuracy`` (the one answer matcher,
``grpo_audio.rewards.matching``), open rows with ``answer_accuracy``; both read the last ``<answer>`` block, or
the text outside think blocks.

Run: ``grpo-audio eval MODEL_DIR DATA [--engine vllm|hf] [--out report.json] [--predictions-out FILE]``.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from .audio_cache import AudioCache
from .data.schema import Row
from .rewards import answer_accuracy, format_reward
from .rewards.accuracy import MCQAccuracy
from .rollout import HF_BATCH_SIZE, SamplingConfig, load_engine
from .rollout.hf_engine import HFEngine


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def score(rows: list[Row], completions: list[str], prefer: str = "text") -> dict[str, Any]:
    """Accuracy overall, per task and per benchmark axis (MCQ and open answers), format rate, per-row results.

    Args:
        rows: the evaluated rows (``Row.groups`` gives the axes).
        completions: one completion per row.
        prefer: how a bare token that is both a letter and a choice's text is read: ``text`` or ``letter``
            (what the prompts asked for; see ``rewards.matching.Choices``).

    Returns:
        ``mcq_accuracy``, ``open_accuracy``, ``format_rate``, ``choice_rate``; ``per_task`` / ``counts`` keyed
        ``"mcq/<task>"``; ``per_group`` = axis -> value -> ``{"accuracy", "n"}`` over MCQ rows (a row with
        several values on an axis counts under each); ``results``, one dict per row.
    """
    mcq = MCQAccuracy(prefer=prefer)
    per_task: dict[str, list[float]] = defaultdict(list)
    per_group: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    results = []
    for row, text in zip(rows, completions, strict=True):
        picked = None
        if row.choices:
            correct = mcq(None, [text], choices=[row.choices], answer=[row.answer])[0]
            picked = len(mcq.named(text, row.choices)) == 1
            kind = "mcq"
        else:
            correct = answer_accuracy(None, [text], answer=[row.answer])[0]
            kind = "open"
        fmt = format_reward(None, [text])[0]
        if correct is not None:
            per_task[f"{kind}/{row.task or 'all'}"].append(correct)
            if kind == "mcq":
                for axis, values in row.groups.items():
                    for value in values:
                        per_group[axis][value].append(correct)
        results.append(
            {
                "id": row.id,
                "task": row.task,
                "kind": kind,
                "correct": correct,
                "picked_one_choice": picked,
                "format": fmt,
                "completion": text,
                "answer": row.answer,
            }
        )
    mcq_scores = [r["correct"] for r in results if r["kind"] == "mcq" and r["correct"] is not None]
    open_scores = [r["correct"] for r in results if r["kind"] == "open" and r["correct"] is not None]
    return {
        "mcq_accuracy": _mean(mcq_scores),
        "open_accuracy": _mean(open_scores),
        "format_rate": _mean([r["format"] for r in results]),
        # MCQ answers that name exactly one of the listed choices, right or wrong (a model that answers with
        # something not listed scores below chance)
        "choice_rate": _mean([float(r["picked_one_choice"]) for r in results if r["kind"] == "mcq"]),
        "per_task": {k: sum(v) / len(v) for k, v in sorted(per_task.items())},
        "counts": {k: len(v) for k, v in sorted(per_task.items())},
        "per_group": {
            axis: {value: {"accuracy": sum(v) / len(v), "n": len(v)} for value, v in sorted(groups.items())}
            for axis, groups in per_group.items()
        },
        "results": results,
    }


def evaluate_model(
    model_dir: str | Path,
    rows: list[Row],
    engine: str = "vllm",
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    max_model_len: int = 4096,
    engine_obj: Any = None,
    audio_cache: AudioCache | None = None,
    prefer: str = "text",
    dtype: str = "float32",
    batch_size: int = HF_BATCH_SIZE,
) -> dict[str, Any]:
    """Generate one completion per row (greedy by default) and score it.

    ``audio_cache`` (the transformers engine only) keeps each clip's log-mel features and audio-encoder outputs
    from one call to the next: an eval set asks several questions about each clip, and a recipe evaluates the
    same clips after every stage, with an encoder that stays frozen. Keys carry the feature extractor's settings
    and the encoder's weights, so an encoder that changed is run again; the completions are the uncached ones (a
    test compares them).

    ``dtype`` is the weights' dtype in the engine (``float32``, ``bfloat16``). ``prefer`` is what the prompts asked
    for (``letter`` or ``text``): how a completion's bare token that is both a letter and a choice's text is read
    (see ``score``). ``batch_size`` is the prompts per ``generate`` call of an ``hf`` engine built here.
    """
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=0)
    own = engine_obj is None
    if own:
        engine_obj = load_engine(model_dir, engine, max_model_len, audio_cache, dtype=dtype, batch_size=batch_size)
    try:
        with cached_encoder(engine_obj, audio_cache):
            batch = engine_obj.generate(rows, n=1, sampling=sampling)
    finally:
        if own and hasattr(engine_obj, "close"):
            engine_obj.close()
    return score(rows, batch.completion_text, prefer=prefer)


def cached_encoder(engine_obj: Any, audio_cache: AudioCache | None) -> AbstractContextManager:
    """Within the block, a transformers engine's frozen encoder reads ``audio_cache``."""
    if audio_cache is None or not isinstance(engine_obj, HFEngine):
        return nullcontext()
    if any(p.requires_grad for p in engine_obj.model.parameters()):  # a caller's engine with a model in training
        return nullcontext()
    return audio_cache.encoder(engine_obj.model, engine_obj.family)

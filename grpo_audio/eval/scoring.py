"""Scoring: accuracy per question type and per benchmark axis, choice rate, format rate, per-row results.

Inputs: rows of any layout ``data/benchmarks.py`` reads (grpo-audio manifests, MMAU, MMAR, MuChoMusic's CSV and
prompt JSON, or a generic file with a field map) and one completion per row. MCQ rows are scored with
``mcq_accuracy`` (the one answer matcher, ``grpo_audio.rewards.matching``), open rows with ``answer_accuracy``;
both read the last ``<answer>`` block, or the text outside think blocks.

Run (greedy completions of a checkpoint, scored here): ``grpo-audio eval [CONFIG.yaml] model=MODEL_DIR data=FILE
[engine=vllm|hf] [out=report.json] [predictions_out=FILE] [key=value ...]`` (``grpo-audio config-help eval`` lists
the keys).
"""

from __future__ import annotations

from collections import defaultdict

from ..data.schema import Row
from ..rewards import answer_accuracy, format_reward
from ..rewards.accuracy import MCQAccuracy
from .results import EvalResult, GroupScore, RowResult


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def score(rows: list[Row], completions: list[str], prefer: str = "text") -> EvalResult:
    """Accuracy overall, per task and per benchmark axis (MCQ and open answers), format rate, per-row results.

    Args:
        rows: the evaluated rows (``Row.groups`` gives the axes).
        completions: one completion per row.
        prefer: how a bare token that is both a letter and a choice's text is read: ``text`` or ``letter``
            (what the prompts asked for; see ``rewards.matching.Choices``).

    Returns:
        The :class:`EvalResult` (its ``reward`` and ``sampled`` None).

    Raises:
        ValueError: ``rows`` and ``completions`` differ in length.
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
        if correct is not None:
            per_task[f"{kind}/{row.task or 'all'}"].append(correct)
            if kind == "mcq":
                for axis, values in row.groups.items():
                    for value in values:
                        per_group[axis][value].append(correct)
        fmt = format_reward(None, [text])[0]
        results.append(RowResult(row.id, row.task, kind, correct, picked, fmt, text, row.answer))
    mcq_rows = [r for r in results if r.kind == "mcq"]
    return EvalResult(
        mcq_accuracy=_mean([r.correct for r in mcq_rows if r.correct is not None]),
        open_accuracy=_mean([r.correct for r in results if r.kind == "open" and r.correct is not None]),
        format_rate=_mean([r.format for r in results]),
        choice_rate=_mean([float(r.picked_one_choice) for r in mcq_rows]),
        per_task={k: sum(v) / len(v) for k, v in sorted(per_task.items())},
        counts={k: len(v) for k, v in sorted(per_task.items())},
        per_group={
            axis: {value: GroupScore(sum(v) / len(v), len(v)) for value, v in sorted(groups.items())}
            for axis, groups in per_group.items()
        },
        results=results,
    )

"""A recipe's report: ``report.json`` (everything: ``results.RecipeReport.to_dict``), ``report.md`` (the tables a
person reads) and ``stages.png`` (evaluation accuracy per stage and question type).

``report.json`` holds ``family``, ``wall_s`` (this run of the recipe, seconds), ``final`` (the last model on
``eval.final``'s files, :class:`~grpo_audio.recipe.results.FinalResult`) and ``stages``, one entry per stage in order
(:class:`~grpo_audio.recipe.results.StageResult`: ``name``, ``kind``, ``model_dir``, ``wall_s``, ``eval`` with the
stage's evaluation, :class:`~grpo_audio.eval.EvalResult` without its per-row results; supervised stages add
``loss_first`` / ``loss_last``, GRPO stages the fields of :class:`~grpo_audio.recipe.results.GRPOOutcome` and
``sampled_vs``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

from ..eval import Interval
from .results import RecipeReport, StageResult

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402 - after the backend is chosen


def write_report(out: Path, report: RecipeReport) -> None:
    """``report.json``, ``report.md`` and ``stages.png`` in ``out`` (each replaced)."""
    (out / "report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    (out / "report.md").write_text("\n".join(markdown(report)) + "\n")
    plot_stages(report.stages, out / "stages.png")


def read_report(out: Path) -> RecipeReport:
    """The ``report.json`` in ``out``."""
    return RecipeReport.from_dict(json.loads((out / "report.json").read_text()))


def markdown(report: RecipeReport) -> list[str]:
    """The report's lines in Markdown: one table of every stage's evaluation, one per GRPO stage's rewards."""
    lines = [
        f"# Recipe report ({report.family})",
        "",
        f"Wall time: {(report.wall_s or 0.0) / 60:.1f} min in this run of the recipe; the stages' own times (wall s, "
        f"each with its evaluation) sum to {sum(s.wall_s or 0.0 for s in report.stages) / 60:.1f} min (a stage "
        "kept from an earlier run shows that run's time, one resumed from a checkpoint the time since).",
        "",
        "| stage | kind | MCQ acc | MCQ answers naming one choice | open acc | format rate | eval reward | "
        "sampled reward [95% CI] | pass@1 | pass@k | per question type | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_stage_line(s) for s in report.stages]
    sampled = next((s.eval.sampled for s in report.stages if s.eval and s.eval.sampled), None)
    if sampled:
        lines += [
            "",
            f"Sampled: {sampled.k} completions per eval prompt at temperature {sampled.temperature:g}, "
            f"seeded per prompt (seed {sampled.seed}: every stage draws the same random numbers); pass@k with "
            f"k = {sampled.k}; intervals: percentile bootstrap over prompts.",
        ]
    for s in report.stages:
        if s.kind == "grpo":
            lines += _grpo_lines(s)
    lines += _final_lines(report)
    return lines


def _stage_line(s: StageResult) -> str:
    """A stage's row of the evaluation table (dashes where it was left unevaluated)."""
    e = s.eval
    per = ", ".join(f"{k} {v:.2f}" for k, v in e.per_task.items()) if e else ""
    sampled = e.sampled if e else None
    return (
        f"| {s.name} | {s.kind} | {_fmt(e and e.mcq_accuracy)} | {_fmt(e and e.choice_rate)} | "
        f"{_fmt(e and e.open_accuracy)} | {_fmt(e and e.format_rate)} | "
        f"{_fmt(e and (e.reward or {}).get('total'))} | {_interval(sampled and sampled.reward)} | "
        f"{_interval(sampled and sampled.pass_at_1)} | {_interval(sampled and sampled.pass_at_k)} | {per} | "
        f"{_fmt(s.wall_s, '.0f')} |"
    )


def _grpo_lines(s: StageResult) -> list[str]:
    """A GRPO stage's rewards at its ends, and its paired difference from the model it started from."""
    steps = s.grpo.eval_steps if s.grpo else []
    lines = [
        "",
        f"GRPO stage '{s.name}': mean reward per function; "
        + (f"eval on {s.grpo.eval_setting}, at steps {', '.join(map(str, steps))}" if steps else "no eval")
        + f". Curves: {s.grpo.curves if s.grpo else None}",
        "",
        "| reward | train, first step | train, last step | eval, first | eval, last |",
        "|---|---|---|---|---|",
    ]
    for name, r in (s.grpo.rewards if s.grpo else {}).items():
        lines.append(
            f"| {name} | {_fmt(r.train_first)} | {_fmt(r.train_last)} | {_fmt(r.eval_start)} | {_fmt(r.eval_end)} |"
        )
    vs = s.sampled_vs
    if vs:
        lines += [
            "",
            f"Against '{vs.stage}', paired (the same prompts and seeds): sampled reward "
            f"{_interval(vs.reward, sign=True)}"
            + (f", pass@1 {_interval(vs.pass_at_1, sign=True)}" if vs.pass_at_1 else "")
            + (" (the interval is above 0)" if vs.reward.low > 0 else " (the interval includes 0 or less)")
            + ". The interval covers the evaluation's prompts and draws, not the randomness of this one GRPO run: "
            "another seed moves the change too (`benchmarks/grpo_settings.py` reruns a GRPO setting from the same "
            "model with other seeds).",
        ]
    return lines


def _final_lines(report: RecipeReport) -> list[str]:
    """The table of the last model on ``eval.final``'s files, against its MCQ accuracy on the eval split."""
    if not report.final:
        return []
    # The last model's own evaluation on the eval split: its training stage's (an 'eval' stage scores another file),
    # none when that stage was left unevaluated.
    last = next((s for s in reversed(report.stages) if s.kind != "eval"), None)
    own = last.eval.mcq_accuracy if last is not None and last.eval is not None else None
    lines = [
        "",
        "The last model on other evaluation files (greedy; the prompt `grpo-audio eval` builds for the file"
        + (f"; its MCQ accuracy on the eval split: {_fmt(own)}" if own is not None else "")
        + "):",
        "",
        "| file | layout | answer format | think | questions | MCQ acc | minus eval split | one choice | format rate "
        "|",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for f in report.final:
        acc = f.mcq_accuracy
        diff = "-" if acc is None or own is None else f"{acc - own:+.3f}"
        lines.append(
            f"| {f.data} | {f.layout} | {f.answer_format} | {'yes' if f.think else 'no'} | {f.n} | "
            f"{_fmt(acc)} | {diff} | {_fmt(f.choice_rate)} | {_fmt(f.format_rate)} |"
        )
    return lines


def _interval(value: Interval | None, sign: bool = False) -> str:
    """``value [low, high]`` of an interval; ``-`` without one."""
    if not value:
        return "-"
    f = "{:+.3f}" if sign else "{:.3f}"
    return f"{f.format(value.value)} [{f.format(value.low)}, {f.format(value.high)}]"


def plot_stages(stages: list[StageResult], path: Path) -> None:
    """Grouped bars: evaluation accuracy per question type, one bar per stage; beside them, with sampled
    evaluations, each stage's sampled reward and pass@1 with their 95% intervals (nothing written without any)."""
    stages = [s for s in stages if s.eval]
    tasks = sorted({k for s in stages for k in s.eval.per_task})
    if not stages or not tasks:
        return
    sampled = [s for s in stages if s.eval.sampled]
    fig, axes = plt.subplots(
        1, 2 if sampled else 1, figsize=(max(6, len(tasks) * 1.2) + (4 if sampled else 0), 4), squeeze=False
    )
    ax = axes[0][0]
    if sampled:
        _plot_sampled(axes[0][1], sampled)
    width = 0.8 / len(stages)
    for i, s in enumerate(stages):
        vals = [s.eval.per_task.get(t, 0.0) for t in tasks]
        ax.bar([j + i * width for j in range(len(tasks))], vals, width, label=s.name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(tasks))], tasks, rotation=30, ha="right", fontsize=8)
    ax.axhline(0.25, color="grey", ls="--", lw=0.8, label="MCQ chance")
    ax.set(ylabel="accuracy", title="Eval accuracy per stage and question type", ylim=(0, 1))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None or v != v else f"{v:{spec}}"  # None or NaN (a reward no sample applied to)


def _plot_sampled(ax: Any, stages: list[StageResult]) -> None:
    """Sampled reward and pass@1 per stage, with their bootstrap intervals as error bars."""
    for offset, (key, label) in enumerate((("reward", "sampled reward"), ("pass_at_1", "pass@1"))):
        points = [(i, getattr(s.eval.sampled, key)) for i, s in enumerate(stages) if getattr(s.eval.sampled, key)]
        if not points:
            continue
        xs = [i + 0.15 * offset for i, _ in points]
        ys = [p.value for _, p in points]
        err = [[p.value - p.low for _, p in points], [p.high - p.value for _, p in points]]
        ax.errorbar(xs, ys, yerr=err, fmt="o", capsize=3, label=label)
    ax.set_xticks(range(len(stages)), [s.name for s in stages], rotation=30, ha="right", fontsize=8)
    ax.set(title="Sampled evaluation (95% intervals)")
    ax.legend(fontsize=7)

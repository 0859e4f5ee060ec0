"""Run metrics: one JSON line per step (``metrics.jsonl``), TensorBoard scalars, a PNG of the curves, and the
summary of a run read back from its lines (:func:`summarize`).

Appending is crash-safe in the sense that matters: a line is written and flushed per step, so a killed run
keeps every finished step; on resume, lines from steps after the checkpoint are dropped before appending.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
from torch.utils.tensorboard import SummaryWriter

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402 - after the backend is chosen


class MetricsLogger:
    """Writes metrics to ``out/metrics.jsonl`` and TensorBoard (``out/tb``)."""

    def __init__(
        self, out: str | Path, resume_step: int | None = None, tensorboard: bool = True, enabled: bool = True
    ):
        self.enabled = enabled
        self.out = Path(out)
        self.writer = None
        if not enabled:  # processes other than the main one log nothing
            return
        self.out.mkdir(parents=True, exist_ok=True)
        self.path = self.out / "metrics.jsonl"
        keep_until(self.path, resume_step)
        self.writer = None
        if resume_step is None and (self.out / "tb").is_dir():  # a new run: the old run's event files go
            shutil.rmtree(self.out / "tb")
        if tensorboard:
            self.writer = SummaryWriter(str(self.out / "tb"), purge_step=resume_step + 1 if resume_step else None)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and v is not None:
                    self.writer.add_scalar(k, v, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def keep_until(path: Path, step: int | None) -> None:
    """Drop the lines of a per-step JSONL file (``{"step": ...}``) after ``step``: a resumed run writes them again.
    ``None``: a new run, so nothing is kept."""
    if not path.exists():
        return
    keep = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and step is not None and json.loads(line).get("step", 0) <= step
    ]
    path.write_text("".join(line + "\n" for line in keep))


def _clean(v: Any) -> Any:
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    return v


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``, one dict per line (``{"step": ..., name: value, ...}``)."""
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


@dataclass
class RewardTrend:
    """One reward's mean (or the weighted total's) at the ends of a run; None where nothing was logged."""

    train_first: float | None = None  # the first training step's mean over its rollouts
    train_last: float | None = None
    eval_start: float | None = None  # the first evaluation's mean over its completions
    eval_end: float | None = None


@dataclass
class MetricsSummary:
    """What a run's ``metrics.jsonl`` says at its ends.

    Attributes:
        steps: training steps logged.
        last: the last training step's record (``{}`` if none).
        rewards: ``total`` (the weighted sum) and each reward function by name -> its :class:`RewardTrend`.
        eval_steps: the steps an evaluation was logged at, in order.
    """

    steps: int = 0
    last: dict[str, Any] = field(default_factory=dict)
    rewards: dict[str, RewardTrend] = field(default_factory=dict)
    eval_steps: list[int] = field(default_factory=list)


def _train_key(key: str) -> str:
    """The training metric an evaluation metric mirrors (``eval/rewards/x/mean`` -> ``rewards/x/mean``)."""
    return key.removeprefix("eval/")


def summarize(records: list[dict[str, Any]]) -> MetricsSummary:
    """A run's metrics summarised: the mean reward per function (and in total) at the first and last training
    step and at the first and last evaluation.

    >>> s = summarize([{"step": 0, "eval/reward/mean": 0.5}, {"step": 1, "reward/mean": 0.4,
    ...     "rewards/format/mean": 0.8}, {"step": 2, "reward/mean": 0.9, "rewards/format/mean": 1.0,
    ...     "eval/reward/mean": 0.7, "eval/rewards/format/mean": 1.0}])
    >>> s.steps, s.eval_steps, s.rewards["total"], s.rewards["format"].train_last
    (2, [0, 2], RewardTrend(train_first=0.4, train_last=0.9, eval_start=0.5, eval_end=0.7), 1.0)
    """
    train = [r for r in records if "reward/mean" in r]
    evals = [r for r in records if any(k.startswith("eval/") for k in r)]
    functions = sorted({k.split("/")[1] for r in records for k in map(_train_key, r) if k.startswith("rewards/")})
    trends = {}
    for name, key in [("total", "reward/mean")] + [(n, f"rewards/{n}/mean") for n in functions]:
        trends[name] = RewardTrend(
            train_first=train[0].get(key) if train else None,
            train_last=train[-1].get(key) if train else None,
            eval_start=evals[0].get(f"eval/{key}") if evals else None,
            eval_end=evals[-1].get(f"eval/{key}") if evals else None,
        )
    return MetricsSummary(
        steps=len(train), last=train[-1] if train else {}, rewards=trends, eval_steps=[r["step"] for r in evals]
    )


def plot_curves(metrics_path: str | Path, out_png: str | Path, title: str = "GRPO") -> Path:
    """Reward (train, per function) and eval accuracy/rewards over steps, as one PNG."""
    records = read_metrics(metrics_path)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    train_keys = ["reward/mean"] + sorted(
        {k for r in records for k in r if k.startswith("rewards/") and k.endswith("/mean")}
    )
    for key in train_keys:
        pts = [(r["step"], r[key]) for r in records if r.get(key) is not None]
        if pts:
            axes[0].plot(*zip(*pts, strict=True), label=key, lw=2 if key == "reward/mean" else 1)
    axes[0].set(title=f"{title}: training rewards", xlabel="step", ylabel="reward")
    axes[0].legend(fontsize=7)
    eval_keys = sorted({k for r in records for k in r if k.startswith("eval/") and k.endswith("/mean")})
    for key in eval_keys:
        pts = [(r["step"], r[key]) for r in records if r.get(key) is not None]
        if pts:
            axes[1].plot(*zip(*pts, strict=True), marker="o", label=key)
    axes[1].set(title=f"{title}: evaluation (rewards as metrics)", xlabel="step", ylabel="score")
    if eval_keys:
        axes[1].legend(fontsize=7)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png

"""What a recipe's stages return and what ``report.json`` holds: :class:`StageResult` per stage (the base model's
evaluation first), :class:`FinalResult` per ``eval.final`` file, and the whole :class:`RecipeReport`.

``to_dict`` writes the keys ``report.json`` and the stage records (``records.py``) have always had: one flat dict per
stage, a GRPO stage's fields beside the others; a field that is None is left out (a stage left unevaluated has no
``eval``, a supervised stage without logged steps no losses). ``from_dict`` reads them back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..config import FinalEvalConfig, TrainConfig
from ..eval import EvalResult, Interval
from ..metrics import RewardTrend
from ..trainer import TrainSummary


@dataclass
class GRPOOutcome:
    """A GRPO stage's training, as its metrics tell it.

    Attributes:
        reward_first, reward_last: the weighted total reward's mean over the first and last step's rollouts.
        eval_reward_start, eval_reward_end: its mean at the first and last evaluation during the stage.
        eval_steps: the steps the stage evaluated at.
        eval_setting: what those evaluations drew (rows x completions at a temperature), in words.
        rewards: ``total`` and each reward function by name -> its means at the ends (None where none was logged).
        curves: the stage's ``curves.png``.
    """

    reward_first: float | None
    reward_last: float | None
    eval_reward_start: float | None
    eval_reward_end: float | None
    eval_steps: list[int]
    eval_setting: str
    rewards: dict[str, RewardTrend]
    curves: str

    @classmethod
    def of(cls, summary: TrainSummary, train: TrainConfig) -> GRPOOutcome:
        """The outcome of the run ``summary`` describes, trained with ``train``."""
        rewards = summary.metrics.rewards if summary.metrics else {}
        total = rewards.get("total")
        return cls(
            reward_first=total.train_first if total else None,
            reward_last=total.train_last if total else None,
            eval_reward_start=total.eval_start if total else None,
            eval_reward_end=total.eval_end if total else None,
            eval_steps=summary.metrics.eval_steps if summary.metrics else [],
            eval_setting=(
                f"{train.eval_rows or 'all'} eval rows x {train.eval_generations} completion(s) at "
                f"temperature {train.eval_temperature:g}" + (" (greedy)" if train.eval_temperature == 0 else "")
                if train.eval_every
                else "no evaluation during the stage (train.eval_every: 0)"
            ),
            rewards=dict(rewards),
            curves=str(summary.output_dir / "curves.png"),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GRPOOutcome:
        """The outcome among a stage dict's keys."""
        values = {f.name: data[f.name] for f in fields(cls)}
        values["rewards"] = {name: RewardTrend(**trend) for name, trend in data["rewards"].items()}
        return cls(**values)


@dataclass
class SampledVs:
    """A GRPO stage's sampled evaluation minus an earlier model's, paired on the same prompts and seeds.

    Attributes:
        stage: the earlier stage compared with.
        reward: the paired difference of the prompts' mean rewards, with its bootstrap interval.
        pass_at_1: the same for pass@1 (None without prompts with an answer to check).
    """

    stage: str
    reward: Interval
    pass_at_1: Interval | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"stage": self.stage, "reward": asdict(self.reward)}
        if self.pass_at_1 is not None:
            out["pass_at_1"] = asdict(self.pass_at_1)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SampledVs:
        return cls(data["stage"], Interval(**data["reward"]), Interval.from_dict(data.get("pass_at_1")))


@dataclass
class StageResult:
    """One stage's entry in the report (the base model's too, kind ``base``).

    Attributes:
        name, kind: the stage's name and kind (``base``, ``text_pretrain``, ``sft``, ``cold_start``, ``grpo``,
            ``eval``).
        model_dir: the model the stage leaves (an ``eval`` stage: the one it evaluated); None for the base entry.
        eval: the evaluation after the stage (per-row results in ``samples/<name>.jsonl``, not here); None where the
            stage is left unevaluated.
        loss_first, loss_last: a supervised stage's training loss at its first and last logged step (None for
            other kinds, or without logged steps).
        grpo: a GRPO stage's training (None for other kinds).
        sampled_vs: a GRPO stage's sampled evaluation against the model it started from (None without both).
        wall_s: seconds the stage took with its evaluation, in the run that trained or evaluated it (a GRPO stage
            resumed from a checkpoint: since the resume); None for the base entry.
    """

    name: str
    kind: str
    model_dir: str | None = None
    eval: EvalResult | None = None
    loss_first: float | None = None
    loss_last: float | None = None
    grpo: GRPOOutcome | None = None
    sampled_vs: SampledVs | None = None
    wall_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The stage's flat dict (a GRPO stage's outcome fields beside the others); None fields left out."""
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.loss_first is not None:
            out.update(loss_first=self.loss_first, loss_last=self.loss_last)
        if self.grpo is not None:
            out.update(asdict(self.grpo))
        if self.model_dir is not None:
            out["model_dir"] = self.model_dir
        if self.eval is not None:
            out["eval"] = self.eval.to_dict()
        if self.sampled_vs is not None:
            out["sampled_vs"] = self.sampled_vs.to_dict()
        if self.wall_s is not None:
            out["wall_s"] = self.wall_s
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageResult:
        """The stage :meth:`to_dict` wrote."""
        return cls(
            name=data["name"],
            kind=data["kind"],
            model_dir=data.get("model_dir"),
            eval=EvalResult.from_dict(data["eval"]) if "eval" in data else None,
            loss_first=data.get("loss_first"),
            loss_last=data.get("loss_last"),
            grpo=GRPOOutcome.from_dict(data) if "reward_first" in data else None,
            sampled_vs=SampledVs.from_dict(data["sampled_vs"]) if "sampled_vs" in data else None,
            wall_s=data.get("wall_s"),
        )


@dataclass
class FinalResult:
    """The last model on one ``eval.final`` file (greedy, asked as ``grpo-audio eval`` asks it).

    Attributes:
        data, answer_format, think, max_rows: the file's settings (``FinalEvalConfig``).
        layout: the layout the file was read as (``mmau``, ``mmar``, ...).
        n: the questions scored.
        mcq_accuracy, choice_rate, format_rate: as in :class:`~grpo_audio.eval.EvalResult`, in [0, 1] (None
            without MCQ rows, or rows).
    """

    data: str
    answer_format: str
    think: bool
    max_rows: int
    layout: str
    n: int
    mcq_accuracy: float | None
    choice_rate: float | None
    format_rate: float | None

    @classmethod
    def of(cls, final: FinalEvalConfig, layout: str, result: EvalResult) -> FinalResult:
        """The entry of ``final``'s file, read as ``layout``, evaluated as ``result``."""
        return cls(
            **asdict(final),
            layout=layout,
            n=len(result.results),
            mcq_accuracy=result.mcq_accuracy,
            choice_rate=result.choice_rate,
            format_rate=result.format_rate,
        )


@dataclass
class RecipeReport:
    """``report.json``.

    Attributes:
        family: the model family's name.
        stages: the base model's entry, then one per stage in order.
        final: the last model on each ``eval.final`` file (empty without any; the key is then left out).
        wall_s: seconds this run of the recipe took (so far, in a report written after a stage); None before the
            first is written.
    """

    family: str
    stages: list[StageResult] = field(default_factory=list)
    final: list[FinalResult] = field(default_factory=list)
    wall_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"stages": [s.to_dict() for s in self.stages], "family": self.family}
        if self.final:
            out["final"] = [asdict(f) for f in self.final]
        if self.wall_s is not None:
            out["wall_s"] = self.wall_s
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RecipeReport:
        return cls(
            family=data["family"],
            stages=[StageResult.from_dict(s) for s in data["stages"]],
            final=[FinalResult(**f) for f in data.get("final", [])],
            wall_s=data.get("wall_s"),
        )

"""What an evaluation returns: :class:`EvalResult` (greedy, one completion a row, scored) and :class:`SampledResult`
(k sampled completions a prompt, with bootstrap intervals), each with ``to_dict`` / ``from_dict`` for the JSON files
that keep them (``grpo-audio eval out=...``, a recipe's ``report.json`` and stage records).

The dicts keep the keys these files had when evaluations travelled as dicts; a key whose value is None or empty and
that was absent then (``reward``, ``sampled``, ``results``) is left out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Interval:
    """A statistic and its percentile-bootstrap confidence interval.

    Attributes:
        value: the statistic over the ``n`` prompts (a mean reward, a pass rate in [0, 1], or a paired difference).
        low, high: the interval's bounds at ``sampled.LEVEL`` (95%), ``low <= value <= high`` for a mean.
        n: the prompts it is over.
    """

    value: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Interval | None:
        """The interval of ``asdict(interval)``; None for None."""
        return None if data is None else cls(**data)


@dataclass
class RowResult:
    """One evaluated row (a line of ``samples/<stage>.jsonl``).

    Attributes:
        id, task: the row's id and task (``Row.id``, ``Row.task``; task may be None).
        kind: ``mcq`` (the row lists choices) or ``open``.
        correct: 1.0 right, 0.0 wrong; None where the row's answer cannot be checked.
        picked_one_choice: an MCQ completion names exactly one of the choices, right or wrong; None for open rows.
        format: the format reward in [0, 1] (``<think>`` then ``<answer>``).
        completion: the completion's text.
        answer: the row's reference answer (None without one).
    """

    id: str
    task: str | None
    kind: str
    correct: float | None
    picked_one_choice: bool | None
    format: float
    completion: str
    answer: str | None


@dataclass
class GroupScore:
    """MCQ accuracy in [0, 1] over the ``n`` scored rows with one value of a benchmark axis."""

    accuracy: float
    n: int


@dataclass
class EvalResult:
    """Greedy completions scored (``eval.scoring.score``), and what a recipe adds to them.

    Attributes:
        mcq_accuracy: mean correctness in [0, 1] over the scored MCQ rows; None without any.
        open_accuracy: the same over the scored open rows; None without any.
        format_rate: mean format reward in [0, 1] over every row; None without rows.
        choice_rate: share in [0, 1] of MCQ completions naming exactly one listed choice, right or wrong (a model
            answering with something not listed scores below chance); None without MCQ rows.
        per_task: accuracy in [0, 1] per ``"<mcq|open>/<task>"`` (``all`` for a row without a task), over the
            scored rows.
        counts: the scored rows behind each ``per_task`` entry.
        per_group: benchmark axis -> value -> its MCQ accuracy (a row with several values on an axis counts under
            each).
        results: one :class:`RowResult` per row, in the rows' order (empty once written to a samples file).
        reward: the GRPO rewards' means on the greedy completions (``total`` and each function's, NaN for a function
            no row applied to; ``RewardSet.score_rows(...).means()``); None where not computed.
        sampled: the sampled evaluation of the same rows; None where it did not run.
    """

    mcq_accuracy: float | None = None
    open_accuracy: float | None = None
    format_rate: float | None = None
    choice_rate: float | None = None
    per_task: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    per_group: dict[str, dict[str, GroupScore]] = field(default_factory=dict)
    results: list[RowResult] = field(default_factory=list)
    reward: dict[str, float] | None = None
    sampled: SampledResult | None = None

    HEADLINE = ("mcq_accuracy", "choice_rate", "open_accuracy", "format_rate")

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able fields; ``results``, ``reward`` and ``sampled`` only where there are some."""
        out: dict[str, Any] = {
            "mcq_accuracy": self.mcq_accuracy,
            "open_accuracy": self.open_accuracy,
            "format_rate": self.format_rate,
            "choice_rate": self.choice_rate,
            "per_task": dict(self.per_task),
            "counts": dict(self.counts),
            "per_group": {axis: {v: asdict(g) for v, g in groups.items()} for axis, groups in self.per_group.items()},
        }
        if self.results:
            out["results"] = [asdict(r) for r in self.results]
        if self.sampled is not None:
            out["sampled"] = self.sampled.to_dict()
        if self.reward is not None:
            out["reward"] = dict(self.reward)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalResult:
        """The result :meth:`to_dict` wrote (keys it leaves out take their defaults)."""
        return cls(
            mcq_accuracy=data.get("mcq_accuracy"),
            open_accuracy=data.get("open_accuracy"),
            format_rate=data.get("format_rate"),
            choice_rate=data.get("choice_rate"),
            per_task=dict(data.get("per_task", {})),
            counts=dict(data.get("counts", {})),
            per_group={
                axis: {v: GroupScore(**g) for v, g in groups.items()}
                for axis, groups in data.get("per_group", {}).items()
            },
            results=[RowResult(**r) for r in data.get("results", [])],
            reward=data.get("reward"),
            sampled=SampledResult.from_dict(data["sampled"]) if data.get("sampled") else None,
        )

    def lines(self) -> list[str]:
        """What ``grpo-audio eval`` prints: the headline rates, accuracy per task, then per benchmark axis."""
        out = [f"{key:14s} {getattr(self, key):.3f}" for key in self.HEADLINE if getattr(self, key) is not None]
        out += [f"  {task:24s} {acc:.3f}  (n={self.counts[task]})" for task, acc in self.per_task.items()]
        for axis, groups in self.per_group.items():
            out.append(f"by {axis}:")
            out += [f"  {value:24s} {g.accuracy:.3f}  (n={g.n})" for value, g in groups.items()]
        return out


@dataclass
class PromptDraws:
    """One prompt's k sampled completions, scored.

    Attributes:
        reward: the mean of ``rewards``.
        rewards: each completion's weighted total reward, in draw order (k values).
        correct: how many of the k are right (0..k); None where the prompt's answer cannot be checked.
    """

    reward: float
    rewards: list[float]
    correct: int | None


@dataclass
class SampledResult:
    """k sampled completions per prompt, scored (``eval.sampled.sampled_eval``).

    Attributes:
        k: completions per prompt (at least 1).
        temperature: the sampling temperature they were drawn at.
        seed: the draws' seed (with the prompt's id it seeds each prompt's draws: the same seed and prompt draw the
            same random numbers, whatever the model).
        reward: mean over prompts of their completions' mean total reward, with its interval.
        pass_at_1, pass_at_k: pass rates in [0, 1] over the prompts with an answer to check (None without any).
        prompts: per prompt id, its :class:`PromptDraws` (kept for later paired comparisons).
    """

    k: int
    temperature: float
    seed: int
    reward: Interval
    pass_at_1: Interval | None
    pass_at_k: Interval | None
    prompts: dict[str, PromptDraws]

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able fields (the per-prompt values included)."""
        intervals = {"reward": self.reward, "pass_at_1": self.pass_at_1, "pass_at_k": self.pass_at_k}
        return {
            "k": self.k,
            "temperature": self.temperature,
            "seed": self.seed,
            **{name: asdict(v) if v is not None else None for name, v in intervals.items()},
            "prompts": {i: asdict(p) for i, p in self.prompts.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SampledResult:
        """The result :meth:`to_dict` wrote."""
        return cls(
            k=data["k"],
            temperature=data["temperature"],
            seed=data["seed"],
            reward=Interval(**data["reward"]),
            pass_at_1=Interval.from_dict(data.get("pass_at_1")),
            pass_at_k=Interval.from_dict(data.get("pass_at_k")),
            prompts={i: PromptDraws(**p) for i, p in data["prompts"].items()},
        )

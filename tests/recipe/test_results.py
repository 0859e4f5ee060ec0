"""The report's types: a report written to report.json reads back into the same dataclasses, with the keys the
file has always had."""

from __future__ import annotations

import json

from grpo_audio.eval import EvalResult, GroupScore, Interval, PromptDraws, RowResult, SampledResult
from grpo_audio.metrics import RewardTrend
from grpo_audio.recipe import FinalResult, GRPOOutcome, RecipeReport, SampledVs, StageResult
from grpo_audio.recipe.report import read_report, write_report


def _sampled(shift: float) -> SampledResult:
    prompts = {
        "q0": PromptDraws(reward=0.25 + shift, rewards=[0.0 + shift, 0.5 + shift], correct=1),
        "q1": PromptDraws(reward=1.0, rewards=[1.0, 1.0], correct=None),
    }
    interval = Interval(0.6 + shift, 0.25 + shift, 1.0 + shift, 2)
    return SampledResult(2, 1.0, 0, interval, Interval(0.5, 0.5, 0.5, 1), Interval(1.0, 1.0, 1.0, 1), prompts)


def _eval(acc: float, sampled: SampledResult | None = None) -> EvalResult:
    return EvalResult(
        mcq_accuracy=acc,
        open_accuracy=None,
        format_rate=0.5,
        choice_rate=1.0,
        per_task={"mcq/key": acc},
        counts={"mcq/key": 4},
        per_group={"kind": {"key": GroupScore(acc, 4)}},
        reward={"total": 1.5 * acc, "format": 0.5},
        sampled=sampled,
    )


def _report() -> RecipeReport:
    trend = RewardTrend(train_first=0.1, train_last=0.4, eval_start=0.2, eval_end=None)
    grpo = GRPOOutcome(0.1, 0.4, 0.2, None, [0, 2], "3 eval rows x 1 completion(s)", {"total": trend}, "grpo/c.png")
    return RecipeReport(
        family="music_flamingo",
        stages=[
            StageResult("base", "base", eval=_eval(0.25, _sampled(0.0))),
            StageResult("text", "text_pretrain", model_dir="out/text/model", wall_s=3.5),  # left unevaluated
            StageResult("sft", "sft", "out/sft/model", _eval(0.5), loss_first=2.0, loss_last=1.0, wall_s=9.0),
            StageResult(
                "grpo",
                "grpo",
                "out/grpo/checkpoints/step-000002/model",
                _eval(0.75, _sampled(0.5)),
                grpo=grpo,
                sampled_vs=SampledVs("base", Interval(0.5, 0.5, 0.5, 2), None),
                wall_s=20.0,
            ),
        ],
        final=[FinalResult("synthetic:eval_mmau.json", "letter", False, 0, "mmau", 5, 0.6, 0.8, 0.0)],
        wall_s=42.0,
    )


def test_a_written_report_reads_back_into_the_same_dataclasses(tmp_path):
    report = _report()
    write_report(tmp_path, report)
    assert read_report(tmp_path) == report
    assert (tmp_path / "report.md").read_text().startswith("# Recipe report (music_flamingo)")


def test_report_json_keeps_its_keys(tmp_path):
    """The file's keys, as the documentation and the users' scripts read them: flat stage entries, a field left out
    where the stage has none (no eval for a stage left unevaluated, GRPO's fields on the GRPO stage only)."""
    write_report(tmp_path, _report())
    saved = json.loads((tmp_path / "report.json").read_text())
    assert set(saved) == {"family", "stages", "final", "wall_s"}
    base, text, sft, grpo = saved["stages"]
    assert set(base) == {"name", "kind", "eval"} and set(text) == {"name", "kind", "model_dir", "wall_s"}
    assert set(sft) == {"name", "kind", "model_dir", "eval", "loss_first", "loss_last", "wall_s"}
    assert set(grpo) == {
        "name", "kind", "model_dir", "eval", "sampled_vs", "wall_s", "reward_first", "reward_last",
        "eval_reward_start", "eval_reward_end", "eval_steps", "eval_setting", "rewards", "curves",
    }  # fmt: skip
    assert set(sft["eval"]) == {
        "mcq_accuracy", "open_accuracy", "format_rate", "choice_rate", "per_task", "counts", "per_group", "reward"
    }  # fmt: skip
    assert set(grpo["eval"]) == set(sft["eval"]) | {"sampled"}
    assert grpo["eval"]["sampled"]["reward"] == {"value": 1.1, "low": 0.75, "high": 1.5, "n": 2}
    assert grpo["eval"]["sampled"]["prompts"]["q0"] == {"reward": 0.75, "rewards": [0.5, 1.0], "correct": 1}
    assert grpo["sampled_vs"] == {"stage": "base", "reward": {"value": 0.5, "low": 0.5, "high": 0.5, "n": 2}}
    assert grpo["rewards"]["total"] == {"train_first": 0.1, "train_last": 0.4, "eval_start": 0.2, "eval_end": None}
    assert saved["final"][0] == {
        "data": "synthetic:eval_mmau.json", "answer_format": "letter", "think": False, "max_rows": 0,
        "layout": "mmau", "n": 5, "mcq_accuracy": 0.6, "choice_rate": 0.8, "format_rate": 0.0,
    }  # fmt: skip


def test_an_eval_result_with_its_rows_reads_back():
    """``grpo-audio eval out=FILE`` writes the per-row results too."""
    rows = [RowResult("q0", "key", "mcq", 1.0, True, 0.0, "<answer>A</answer>", "A")]
    result = EvalResult(mcq_accuracy=1.0, format_rate=0.0, choice_rate=1.0, results=rows)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["results"] == [
        {"id": "q0", "task": "key", "kind": "mcq", "correct": 1.0, "picked_one_choice": True, "format": 0.0,
         "completion": "<answer>A</answer>", "answer": "A"}
    ]  # fmt: skip
    assert "reward" not in data and "sampled" not in data
    assert EvalResult.from_dict(data) == result

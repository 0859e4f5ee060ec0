"""The safety net: a reward that raises, returns the wrong length, NaN or something other than a number follows the
configured policy; one that gives no value for a whole batch is warned about."""

from __future__ import annotations

import logging
import math
import pickle

import pytest

from grpo_audio.rewards import REWARDS, RewardError, RewardSet, load_reward, mcq_accuracy


def raises(prompts, completions, **kw):
    raise KeyError("metadata")


def short(prompts, completions, **kw):
    return [1.0] * (len(completions) - 1)


def nan_second(prompts, completions, **kw):
    return [1.0, float("nan"), None]


def not_a_number(prompts, completions, **kw):
    return ["high", 1.0, 1.0]


def ones(prompts, completions, **kw):
    return [1.0] * len(completions)


IDS = ["clip-1", "clip-2", "clip-3"]
CASES = [
    (raises, "reward 'raises' raised KeyError: 'metadata' (sample id: clip-1, clip-2, clip-3)", [0, 1, 2]),
    (short, "reward 'short' returned 2 values for 3 completions (sample id: clip-1, clip-2, clip-3)", [0, 1, 2]),
    (nan_second, "reward 'nan_second' returned nan (sample id: clip-2)", [1]),
    (not_a_number, "reward 'not_a_number' returned 'high' (str), not a number (sample id: clip-1)", [0]),
]


@pytest.mark.parametrize("fn,message,bad", CASES, ids=[c[0].__name__ for c in CASES])
def test_raise_policy_names_reward_and_sample(fn, message, bad):
    with pytest.raises(RewardError) as e:
        RewardSet([fn, ones])(["p"] * 3, ["c"] * 3, id=IDS)
    assert str(e.value) == message


@pytest.mark.parametrize("fn,message,bad", CASES, ids=[c[0].__name__ for c in CASES])
@pytest.mark.parametrize("policy", ["zero", "skip"])
def test_zero_and_skip_policies_count(fn, message, bad, policy, caplog):
    with caplog.at_level(logging.WARNING):
        out = RewardSet([(fn, 2.0), (ones, 1.0)], on_error=policy)(["p"] * 3, ["c"] * 3, id=IDS)
    assert message in caplog.text and f"policy {policy}" in caplog.text
    assert out.errors == {fn.__name__: len(bad)}
    metrics = out.metrics()
    assert metrics[f"rewards/{fn.__name__}/errors"] == len(bad)
    for i in range(3):
        value = out.components[fn.__name__][i]
        if i in bad:
            assert (value == 0.0) if policy == "zero" else math.isnan(value)
            assert out.total[i] == 1.0  # only the healthy reward counts (0 * 2 or nothing)
        else:  # healthy values of the faulty reward still count, None adds nothing
            assert out.total[i] == 1.0 + (0.0 if math.isnan(value) else 2.0 * value)


def text_one(prompts, completions, **kw):
    return [1.0, "1", 0.5]


def test_a_number_as_text_is_refused_not_read_as_the_number():
    """TRL's trainer fails on a string (``torch.tensor(["1"])``); "1" used to be taken here as 1.0."""
    with pytest.raises(RewardError) as e:
        RewardSet([text_one])(["p"] * 3, ["c"] * 3, id=IDS)
    assert str(e.value) == "reward 'text_one' returned '1' (str), not a number (sample id: clip-2)"


def test_numbers_as_trl_takes_them_bools_and_numpy_and_torch_scalars():
    import numpy as np
    import torch

    def scalars(prompts, completions, **kw):
        return [True, np.float32(0.5), torch.tensor(0.25), np.bool_(False), 2]

    out = RewardSet([(scalars, 2.0)])(["p"] * 5, ["c"] * 5)
    assert out.components["scalars"] == [1.0, 0.5, 0.25, 0.0, 2.0]
    assert out.total == [2.0, 1.0, 0.5, 0.0, 4.0]


def nothing(prompts, completions, **kw):
    return [None] * len(completions)


def one_value(prompts, completions, **kw):
    return [None, 0.0, None]


def test_a_reward_with_no_value_for_a_whole_batch_is_warned_about(caplog):
    """A reward returning None for every sample adds nothing to the batch's reward: said, naming it and the count."""
    with caplog.at_level(logging.WARNING):
        out = RewardSet([(nothing, 1.0), (ones, 0.5)])(["p"] * 3, ["c"] * 3, id=IDS)
    assert out.total == [0.5, 0.5, 0.5]
    assert [r.getMessage() for r in caplog.records] == [
        "reward 'nothing' gave no value (None) for any of the 3 samples of this batch it applies to: it adds nothing "
        "to their reward"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        RewardSet([one_value])(["p"] * 3, ["c"] * 3, id=IDS)  # a value for clip-2: no warning
        RewardSet([raises], on_error="skip")(["p"] * 3, ["c"] * 3, id=IDS)  # the failure's own warning only
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["reward 'raises' raised KeyError: 'metadata'"]


def test_a_task_reward_is_warned_about_only_for_a_batch_with_its_tasks(caplog):
    """None outside its tasks is 'does not apply'; None for every row of its tasks is the same silence as above."""
    from grpo_audio.rewards import ForTasks

    rewards = RewardSet([ForTasks(nothing, ["caption"]), ones])
    with caplog.at_level(logging.WARNING):
        rewards(["p"] * 3, ["c"] * 3, task=["key", "tempo", "key"])
    assert caplog.records == []
    with caplog.at_level(logging.WARNING):
        out = rewards(["p"] * 3, ["c"] * 3, task=["caption", "key", "caption"])
    assert out.total == [1.0, 1.0, 1.0]
    assert [r.getMessage().split(" of this")[0] for r in caplog.records] == [
        "reward 'nothing' gave no value (None) for any of the 2 samples"
    ]


def test_none_means_not_applicable_and_metrics():
    out = RewardSet([mcq_accuracy])(
        ["p", "p"], ["<answer>A</answer>", "x"], choices=[["a", "b"], None], answer=["A", None]
    )
    assert out.total == [1.0, 0.0] and out.components["mcq_accuracy"][0] == 1.0
    assert math.isnan(out.components["mcq_accuracy"][1])
    m = out.metrics()
    assert m["rewards/mcq_accuracy/mean"] == 1.0 and m["rewards/mcq_accuracy/std"] == 0.0 and m["reward/mean"] == 0.5


def test_registry_specs_and_pickling():
    rs = RewardSet.from_specs(
        [{"name": "format", "weight": 0.5}, {"name": "answer_accuracy", "kwargs": {"numeric_tolerance": 0.1}}]
    )
    assert rs.names == ["format", "answer_accuracy"]
    assert rs(["p"], ["<think>t</think><answer>105</answer>"], answer=["100"]).total == [1.5]
    for name, fn in REWARDS.items():
        clone = pickle.loads(pickle.dumps(fn))
        assert type(clone) is type(fn) and clone.__name__ == name
    built = load_reward("music_theory", tempo_tolerance=0.1)
    assert pickle.loads(pickle.dumps(built)).tempo_tolerance == 0.1
    with pytest.raises(ValueError, match="unknown reward 'formt'; registered: format"):
        load_reward("formt")
    with pytest.raises(ValueError, match="cannot load reward 'nope.mod:f'"):
        load_reward("nope.mod:f")
    with pytest.raises(ValueError, match="names must be unique"):
        RewardSet([mcq_accuracy, mcq_accuracy])
    with pytest.raises(ValueError, match="on_error must be one of"):
        RewardSet([mcq_accuracy], on_error="ignore")


def test_config_reward_specs_build_a_reward_set(tmp_path):
    from grpo_audio.config import load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "output_dir: x\nmodel: {path: p, family: qwen2_audio}\n"
        "rewards:\n  - {name: format, weight: 0.2}\n  - {name: music_theory, kwargs: {half_double: 0.5}}\n"
    )
    rs = RewardSet.from_specs(load_config(cfg).rewards)
    assert rs.names == ["format", "music_theory"] and rs.rewards[1][0].half_double == 0.5


def test_rewards_restricted_to_tasks():
    rs = RewardSet.from_specs(
        [
            {"name": "format", "weight": 1.0},
            {"name": "mcq_accuracy", "tasks": ["chord", "key"]},
            {"name": "structured_caption", "tasks": ["caption"]},
        ]
    )
    comps = ["<think>t</think><answer>B</answer>", "<think>t</think><answer>A minor piece</answer>"]
    out = rs(
        ["p", "p"],
        comps,
        task=["chord", "caption"],
        choices=[["C major", "A minor"], None],
        answer=["B", None],
        metadata=[{"key": "A minor"}, {"key": "A minor"}],
        id=["q", "c"],
    )
    assert out.components["mcq_accuracy"][0] == 1.0 and math.isnan(out.components["mcq_accuracy"][1])
    assert math.isnan(out.components["structured_caption"][0]) and out.components["structured_caption"][1] == 1.0
    assert out.total == [2.0, 2.0]


def test_score_rows_pairs_each_completion_with_its_row():
    from grpo_audio.data.schema import Row
    from grpo_audio.rewards import RewardSet, format_reward

    rows = [Row(id="a", audio="a.wav", prompt="Q?", answer="x"), Row(id="b", audio="b.wav", prompt="Q?", answer="y")]
    rewards = RewardSet([format_reward])
    assert rewards.score_rows(rows, ["<think>t</think><answer>x</answer>", "y"], [1, 0]).total == [1.0, 0.0]
    for texts, index in ((["x", "y", "z"], [0, 1]), (["x"], [0, 1]), (["x"], [-1]), (["x"], [2])):
        with pytest.raises(ValueError, match="must pair up one to one"):
            rewards.score_rows(rows, texts, index)

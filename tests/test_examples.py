"""The examples run: the custom reward scores completions, and its dotted path loads."""

from __future__ import annotations

import sys
from pathlib import Path

from grpo_audio.config import load_config
from grpo_audio.rewards import RewardSet

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_custom_reward_example(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    sys.modules.pop("custom_reward", None)
    from custom_reward import says_the_tempo

    comps = [
        [{"role": "assistant", "content": "<think>beats 0.5 s apart</think><answer>121 BPM</answer>"}],
        [{"role": "assistant", "content": "<answer>90 BPM</answer>"}],
        "<answer>x</answer>",
    ]
    meta = [{"tempo": 120}, {"tempo": 120}, {"key": "A minor"}]
    assert says_the_tempo(None, comps, metadata=meta) == [1.0, 0.0, None]
    cfg = load_config(
        EXAMPLES / "music_flamingo/grpo_synthetic.yaml",
        ['rewards=[{name: format, weight: 0.5}, {name: "custom_reward:says_the_tempo"}]'],
    )
    rs = RewardSet.from_specs(cfg.rewards)
    assert rs.names == ["format", "says_the_tempo"]
    assert rs(["p"] * 3, comps, metadata=meta).total == [1.5, 0.0, 0.0]  # format needs the think block

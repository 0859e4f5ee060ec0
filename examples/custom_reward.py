"""A user's own reward, plugged into a GRPO run in a few lines.

Any function with TRL's signature works: ``f(prompts, completions, **columns) -> list[float | None]``. Dataset
columns (``answer``, ``choices``, ``metadata``, ``task``, ``id`` ...) arrive as keyword arguments; completions
arrive as message lists (``[{"role": "assistant", "content": ...}]``); return None where a reward does not apply.

Run (after building the demo model and corpus, see examples/music_flamingo/grpo_synthetic.yaml):

    PYTHONPATH=examples grpo-audio train examples/music_flamingo/grpo_synthetic.yaml \\
        'rewards=[{name: format, weight: 0.5}, {name: "custom_reward:says_the_tempo", weight: 1.0}]'

or from Python, as below.
"""

from __future__ import annotations

import sys

from grpo_audio.rewards import completion_text, extract_answer, parse_tempi, tempo_score


def says_the_tempo(prompts, completions, metadata, **columns):
    """1 if the answer names the clip's tempo within 4%, None for clips without a tempo."""
    scores = []
    for completion, meta in zip(completions, metadata, strict=True):
        if not meta or "tempo" not in meta:
            scores.append(None)
            continue
        tempi = parse_tempi(extract_answer(completion_text(completion)) or "")
        scores.append(float(bool(tempi) and tempo_score(float(meta["tempo"]), tempi[0]) == 1.0))
    return scores


def main(config_path: str) -> None:
    from grpo_audio.config import load_config
    from grpo_audio.rewards import RewardSet, load_reward
    from grpo_audio.trainer import GRPOTrainer

    cfg = load_config(config_path)
    rewards = RewardSet([(load_reward("format"), 0.5), (says_the_tempo, 1.0)])
    trainer = GRPOTrainer(cfg, reward_funcs=rewards)
    try:
        trainer.train()
    finally:
        trainer.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "examples/music_flamingo/grpo_synthetic.yaml")

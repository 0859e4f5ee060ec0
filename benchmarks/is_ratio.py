"""Importance-sampling ratio between the trainer and vLLM under top-p, before and after the trainer scores the
distribution the engine sampled from.

vLLM returns the logprobs of its sampling distribution (``logprobs_mode="processed_logprobs"``: after temperature,
top-k, top-p). The trainer's IS correction divides its own logprobs by these; if the trainer scores the full
vocabulary, the ratio is the kept probability mass rather than 1 and every token's loss is scaled by it. Two GRPO
runs of ``--steps`` steps from the same demo-size Music Flamingo, same data and seed, with ``rollout.top_p``:

- ``full vocabulary``: the trainer's logprobs without top-k / top-p (the behaviour before the fix, reproduced by
  turning ``logprobs.sampling_filter`` off);
- ``sampling distribution``: the trainer applies the same top-k / top-p (the fix).

Run: ``.venv/bin/python benchmarks/is_ratio.py [--top-p 0.9] [--steps 4]``. Prints each step's IS ratio mean,
min and max for both, and the ratio of their means.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path


def run(tmp: Path, name: str, model: Path, corpus: dict, args: argparse.Namespace) -> list[dict]:
    from grpo_audio.config import load_config
    from grpo_audio.rewards import RewardSet, load_reward
    from grpo_audio.trainer import GRPOTrainer

    cfg = load_config(
        None,
        [
            f"output_dir={tmp / name}",
            f"model.path={model}",
            "model.family=music_flamingo",
            f"data.train={corpus['rl']}",
            "rollout.engine=vllm",
            "rollout.max_new_tokens=64",
            "rollout.max_model_len=2048",
            f"rollout.top_p={args.top_p}",
            "grpo.num_generations=8",
            "train.prompts_per_step=8",
            f"train.max_steps={args.steps}",
            "train.lr=1e-5",
            "train.micro_batch_size=16",
            "train.resume=never",
        ],
    )
    trainer = GRPOTrainer(
        cfg, reward_funcs=RewardSet([(load_reward("format"), 0.5), (load_reward("mcq_accuracy"), 1)])
    )
    try:
        return [trainer.train_step() for _ in range(args.steps)]
    finally:
        trainer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()

    import grpo_audio.logprobs as logprobs
    from grpo_audio.data.synthetic import write_corpus
    from grpo_audio.models.tiny import build_tiny_model

    tmp = Path(tempfile.mkdtemp())
    corpus = write_corpus(tmp / "data", n=40, seed=0, n_eval=4)
    model = build_tiny_model("music_flamingo", tmp / "base", size="demo", seed=0)
    fix = logprobs.sampling_filter
    results = {}
    logprobs.sampling_filter = lambda logits, ids, top_k=-1, top_p=1.0: logits  # before: the full vocabulary
    results["full vocabulary"] = run(tmp, "before", model, corpus, args)
    logprobs.sampling_filter = fix
    results["sampling distribution"] = run(tmp, "after", model, corpus, args)

    print(
        f"demo-size Music Flamingo, vLLM rollouts, top_p={args.top_p}, 8 prompts x 8 completions, {args.steps} steps"
    )
    print(f"{'trainer logprobs':24s} {'IS ratio mean per step':40s} min    max")
    for name, steps in results.items():
        means = " ".join(f"{m['is_ratio_mean']:.3f}" for m in steps)
        low, high = min(m["is_ratio_min"] for m in steps), max(m["is_ratio_max"] for m in steps)
        print(f"{name:24s} {means:40s} {low:.3f}  {high:.3f}")
    before = statistics.mean(m["is_ratio_mean"] for m in results["full vocabulary"])
    after = statistics.mean(m["is_ratio_mean"] for m in results["sampling distribution"])
    print(f"mean IS ratio: {before:.3f} before, {after:.4f} after (after / before = {after / before:.2f}x)")


if __name__ == "__main__":
    main()

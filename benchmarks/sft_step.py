"""SFT step time: grpo-audio's SFT settings vs TRL's defaults; or, with ``--sizes``, one tiny size against another.

The demo-size Music Flamingo (audio encoder frozen, as in ``examples/music_flamingo/tiny.yaml``), 16 synthetic
clips x 3 skills rows, batch 8, two epochs; the time of each optimiser step in the second epoch is recorded with
a trainer callback (the first epoch fills the caches). Three settings, alternated for ``--rounds`` rounds on
the same rows (this machine is noisy):

- ``trl``: TRL's ``SFTConfig`` defaults (gradient checkpointing on) and no caching: every step recomputes each
  clip's log-mel features (30 s windows) and runs the frozen encoder;
- ``no-ckpt``: gradient checkpointing off, no caching;
- ``all-positions``: gradient checkpointing off, caching, and TRL's fused LM head projecting every position, as TRL
  does off Triton devices;
- ``grpo-audio``: gradient checkpointing off, log-mel features and frozen-encoder outputs cached per clip, the LM
  head projecting the labelled positions only (``sft.labels_only_lm_head``).

Run: ``.venv/bin/python benchmarks/sft_step.py [--rounds 2] [--settings NAME ...] [--target answer|think|auto]``
(``--target think``: the cold start's chains, ``auto`` with the think and skills rows: its replay). The ratios of
each setting to grpo-audio are printed last.

``--sizes demo test`` times grpo-audio's settings on each size instead, alternated the same way, and prints the
ratio of the first size's step time to each other's (the embedded recipe trains the test size).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from transformers import AutoProcessor, TrainerCallback


class StepTimes(TrainerCallback):
    def __init__(self, steps_per_epoch: int):
        self.steps_per_epoch, self.times, self._t = steps_per_epoch, [], 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step > self.steps_per_epoch:  # second epoch: caches are warm
            self.times.append(time.perf_counter() - self._t)


SETTINGS = {
    "trl": {"gradient_checkpointing": True, "cache_audio": False, "score_labels_only": False},
    "no-ckpt": {"gradient_checkpointing": False, "cache_audio": False, "score_labels_only": False},
    "all-positions": {"gradient_checkpointing": False, "cache_audio": True, "score_labels_only": False},
    "grpo-audio": {"gradient_checkpointing": False, "cache_audio": True, "score_labels_only": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--sizes", nargs="+", default=["demo"], help="tiny sizes; two or more: compare sizes")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--target", default="answer", choices=["answer", "think", "auto"], help="what the loss is on")
    args = parser.parse_args()

    from grpo_audio.data.loaders import load_manifest
    from grpo_audio.data.synthetic import write_corpus
    from grpo_audio.models import ModelSpec, get_family, load_policy
    from grpo_audio.models.tiny import build_tiny_model
    from grpo_audio.sft import SFTConfig, run_sft

    tmp = Path(tempfile.mkdtemp())
    family = get_family("music_flamingo")
    corpus = write_corpus(tmp / "data", n=args.clips, seed=0, n_eval=0)
    bases = {size: build_tiny_model(family.name, tmp / f"base-{size}", size=size, seed=0) for size in args.sizes}
    manifests = {"answer": ["skills"], "think": ["think"], "auto": ["think", "skills"]}[args.target]
    rows = [row for name in manifests for row in load_manifest(corpus[name], family=family)]
    steps_per_epoch = -(-len(rows) // args.batch_size)
    if len(args.sizes) > 1:  # grpo-audio's settings on each size
        runs = {size: (bases[size], SETTINGS["grpo-audio"]) for size in args.sizes}
    else:
        runs = {name: (bases[args.sizes[0]], SETTINGS[name]) for name in args.settings}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(args.rounds):
        for name, (base, extra) in runs.items():
            model = load_policy(ModelSpec(base, family.name))
            settings = SFTConfig(
                epochs=2,
                lr=1e-3,
                batch_size=args.batch_size,
                logging_steps=1000,
                freeze_audio_encoder=True,
                target=args.target,
                **extra,
            )
            timer = StepTimes(steps_per_epoch)
            run_sft(model, family, AutoProcessor.from_pretrained(base), rows, tmp / name, settings, [timer])
            times[name] += timer.times
            print(f"round {r} {name}: median step {statistics.median(timer.times):.3f} s", flush=True)
    print(
        f"\n{len(rows)} rows ({args.clips} clips, target {args.target}), batch {args.batch_size}, second-epoch steps:"
    )
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, m in medians.items():
        print(f"  {name:11s} {m:.3f} s/step  ({len(times[name])} steps)")
    if len(args.sizes) > 1:
        first = args.sizes[0]
        for size in args.sizes[1:]:
            print(f"ratio {first} / {size}: {medians[first] / medians[size]:.2f}x")
        return
    if "grpo-audio" in medians:
        for name in [n for n in medians if n != "grpo-audio"]:
            print(f"ratio {name} / grpo-audio: {medians[name] / medians['grpo-audio']:.2f}x")


if __name__ == "__main__":
    main()

"""Evaluation time with and without the recipe's audio cache (``eval.evaluate_model(..., audio_cache=...)``).

The synthetic eval split asks two questions (multiple-choice and open) about each clip, and a recipe evaluates
the same clips after every stage with an audio encoder that stays frozen. Three settings, alternated for
``--rounds`` rounds on the same rows with the transformers engine, greedy:

- ``plain``: log-mel features and encoder outputs computed for every row (each clip twice);
- ``first stage``: fresh stores: computed once per clip;
- ``later stage``: the stores filled by an earlier call (the recipe's second and later evaluations): none computed.

The model is the embedded recipe's size (``test``, 0.7 M parameters) with random weights and the recipe's label
space. A random model writes to the token cap on every row, so decoding weighs more here than after training.

Run: ``.venv/bin/python benchmarks/eval_cache.py [--clips 60] [--rounds 2]``. Ratios of the plain time to the others
are printed last.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=60, help="held-out clips (the demo's eval split: 100)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()

    from grpo_audio.audio_cache import AudioCache
    from grpo_audio.data.benchmarks import load_benchmark
    from grpo_audio.data.synthetic import LabelSpace, write_corpus
    from grpo_audio.eval import evaluate_model
    from grpo_audio.models import get_family
    from grpo_audio.models.tiny import build_tiny_model

    tmp = Path(tempfile.mkdtemp())
    family = get_family("music_flamingo")
    space = LabelSpace(chord_qualities=("major", "minor"), tempo_step=16, registers=(84,))
    corpus = write_corpus(tmp / "data", n=5, seed=0, n_eval=args.clips, space=space)
    model = build_tiny_model(family.name, tmp / "base", size="test", seed=0)
    rows = load_benchmark(corpus["eval"], family).rows

    times: dict[str, list[float]] = {"plain": [], "first stage": [], "later stage": []}
    completions: dict[str, list[str]] = {}
    for _ in range(args.rounds):
        stores = AudioCache()
        for name, st in (("plain", None), ("first stage", stores), ("later stage", stores)):
            t = time.perf_counter()
            out = evaluate_model(model, rows, engine="hf", max_new_tokens=args.max_new_tokens, audio_cache=st)
            times[name].append(time.perf_counter() - t)
            texts = [r.completion for r in out.results]
            assert completions.setdefault("plain", texts) == texts, f"{name}: completions differ from plain"
    print(f"{len(rows)} eval rows ({args.clips} clips), test-size Music Flamingo, greedy, {args.max_new_tokens} tok")
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, v in times.items():
        print(f"{name:12s} median {med[name]:6.2f} s   ({', '.join(f'{x:.2f}' for x in v)})")
    print(f"ratio plain / first stage: {med['plain'] / med['first stage']:.2f}x")
    print(f"ratio plain / later stage: {med['plain'] / med['later stage']:.2f}x")


if __name__ == "__main__":
    main()

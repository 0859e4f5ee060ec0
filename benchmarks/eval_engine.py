"""The recipe's evaluation of one stage on the transformers engine vs on vLLM (``eval.engine: hf | vllm``).

One evaluation is what the recipe runs after a stage that GRPO follows or that is GRPO (``Recipe.evaluate`` with
``sampled=True``): the engine started, every held-out question greedy, then ``eval.samples`` completions a
question at the rollout temperature, scored, the engine closed. Both engines evaluate the same model on the same
rows with the same seeds, alternated for ``--rounds`` rounds; the engine's start is included, since the recipe
starts one for every evaluation. The script prints each engine's time, greedy MCQ accuracy and sampled reward, and
the time ratio last.

Run on a recipe's output folder, e.g. the embedded recipe's after ``make demo``:
``.venv/bin/python benchmarks/eval_engine.py demo_out [--stage cold_start] [--rounds 2]``. The recipe's config is
``examples/music_flamingo/tiny.yaml`` unless ``--config`` names another; the folder's corpus and the stage's model
are read, nothing in the folder is written (the samples go to a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe_dir", type=Path, help="a recipe's output folder (its data/ and STAGE/ folders)")
    parser.add_argument("--config", default="examples/music_flamingo/tiny.yaml")
    parser.add_argument("--stage", default="cold_start", help="the stage whose model is evaluated")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from grpo_audio.config import RecipeConfig, load_config
    from grpo_audio.recipe import Recipe
    from grpo_audio.recipe.runner import STAGE_MARKER

    model_dir = Path(json.loads((args.recipe_dir / args.stage / STAGE_MARKER).read_text())["entry"]["model_dir"])
    tmp = Path(tempfile.mkdtemp())
    (tmp / "data").symlink_to((args.recipe_dir / "data").resolve())
    recipes = {}
    for engine in ("hf", "vllm"):
        cfg = load_config(args.config, [f"output_dir={tmp}", f"eval.engine={engine}"], schema=RecipeConfig)
        recipes[engine] = Recipe(cfg)
    samples = recipes["hf"].cfg.eval.samples
    times: dict[str, list[float]] = {engine: [] for engine in recipes}
    results: dict[str, dict] = {}
    for _ in range(args.rounds):
        for engine, recipe in recipes.items():
            t = time.perf_counter()
            results[engine] = recipe.evaluate(model_dir, f"{args.stage}-{engine}", sampled=True)["eval"]
            times[engine].append(time.perf_counter() - t)
    med = {engine: statistics.median(v) for engine, v in times.items()}
    questions = results["hf"]["sampled"]["reward"]["n"]
    print(f"model {model_dir}: {questions} held-out questions, greedy + {samples} samples each")
    for engine, v in times.items():
        r = results[engine]
        print(
            f"{engine:5s} median {med[engine]:6.1f} s ({', '.join(f'{x:.1f}' for x in v)}); greedy MCQ "
            f"{r['mcq_accuracy']}, sampled reward {r['sampled']['reward']['value']:.3f}"
        )
    print(f"ratio hf / vllm: {med['hf'] / med['vllm']:.2f}x")


if __name__ == "__main__":
    main()

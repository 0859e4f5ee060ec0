"""The recipe's evaluation of one stage on several engines or batch sizes (``eval.engine``, ``eval.batch_size``).

One evaluation is what the recipe runs after a stage that GRPO follows or that is GRPO (``Recipe.evaluate`` with
``sampled=True``): the engine started, every held-out question greedy, then ``eval.samples`` completions a
question at the rollout temperature, scored, the engine closed. Every setting evaluates the same model on the same
rows with the same seeds, alternated for ``--rounds`` rounds; the engine's start is included, since the recipe
starts one for every evaluation. The script prints each setting's time, greedy MCQ accuracy and sampled reward,
and the first setting's time over each other one's last. Suffixes of an ``hf`` setting undo one of the engine's
choices: ``:arrival`` batches its rows in the order they come, not task by task (``hf_engine.generation_order``);
``:separate`` runs a prompt once for each of its completions, not once for all (``HFEngine(share_prefix=False)``).

Run on a recipe's output folder, e.g. the embedded recipe's after ``make demo``:
``.venv/bin/python benchmarks/eval_engine.py demo_out [--stage cold_start] [--rounds 2] [--settings hf:1 hf:32
hf:32:arrival:separate vllm]`` (``ENGINE[:BATCH_SIZE][:arrival][:separate]``; default ``hf vllm``, each at the
config's batch size). The recipe's config is ``examples/music_flamingo/tiny.yaml`` unless ``--config`` names
another; the folder's corpus and the stage's model are read, nothing in the folder is written (the samples go to a
temporary folder, removed at the end).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe_dir", type=Path, help="a recipe's output folder (its data/ and STAGE/ folders)")
    parser.add_argument(
        "--config", default="examples/music_flamingo/tiny.yaml", help="the recipe's config (%(default)s)"
    )
    parser.add_argument("--stage", default="cold_start", help="the stage whose model is evaluated")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the settings, alternated (%(default)s)")
    parser.add_argument(
        "--settings", nargs="+", default=["hf", "vllm"], help="ENGINE[:BATCH_SIZE][:arrival][:separate] to compare"
    )
    args = parser.parse_args()

    from grpo_audio.config import RecipeConfig, load_config
    from grpo_audio.eval import EvalResult
    from grpo_audio.recipe import Recipe
    from grpo_audio.recipe.records import STAGE_MARKER, stage_model_dir
    from grpo_audio.rollout import hf_engine

    @contextlib.contextmanager
    def undone(choices: set[str]):
        """The ``hf`` engine with the choices named undone (see the module's docstring)."""
        sorted_order, init = hf_engine.generation_order, hf_engine.HFEngine.__init__
        if "arrival" in choices:
            hf_engine.generation_order = lambda rows, lengths: list(range(len(rows)))
        if "separate" in choices:
            hf_engine.HFEngine.__init__ = lambda self, *a, **kw: init(self, *a, **{**kw, "share_prefix": False})
        try:
            yield
        finally:
            hf_engine.generation_order, hf_engine.HFEngine.__init__ = sorted_order, init

    recorded = json.loads((args.recipe_dir / args.stage / STAGE_MARKER).read_text())["entry"]["model_dir"]
    model_dir = stage_model_dir(args.recipe_dir, recorded)
    tmp = Path(tempfile.mkdtemp())
    (tmp / "data").symlink_to((args.recipe_dir / "data").resolve())
    recipes, undo = {}, {}
    for setting in args.settings:
        engine, *rest = setting.split(":")
        batch = next((x for x in rest if x.isdigit()), "")
        undo[setting] = {x for x in rest if x != batch}
        if undo[setting] - {"arrival", "separate"} or (undo[setting] and engine != "hf"):
            raise SystemExit(f"--settings {setting}: ENGINE[:BATCH_SIZE][:arrival][:separate], the suffixes hf only")
        overrides = [f"output_dir={tmp}", f"eval.engine={engine}"] + ([f"eval.batch_size={batch}"] if batch else [])
        recipes[setting] = Recipe(load_config(args.config, overrides, schema=RecipeConfig))
    samples = next(iter(recipes.values())).cfg.eval.samples
    times: dict[str, list[float]] = {setting: [] for setting in recipes}
    results: dict[str, EvalResult] = {}
    for _ in range(args.rounds):
        for setting, recipe in recipes.items():
            t = time.perf_counter()
            name = f"{args.stage}-{setting.replace(':', '-')}"
            with undone(undo[setting]):
                results[setting] = recipe.evaluate(model_dir, name, sampled=True)
            times[setting].append(time.perf_counter() - t)
    med = {setting: statistics.median(v) for setting, v in times.items()}
    first = args.settings[0]
    questions = results[first].sampled.reward.n
    print(f"model {model_dir}: {questions} held-out questions, greedy + {samples} samples each")
    for setting, v in times.items():
        r = results[setting]
        print(
            f"{setting:8s} median {med[setting]:6.1f} s ({', '.join(f'{x:.1f}' for x in v)}); greedy MCQ "
            f"{r.mcq_accuracy}, sampled reward {r.sampled.reward.value:.3f}"
        )
    for setting in args.settings[1:]:
        print(f"ratio {first} / {setting}: {med[first] / med[setting]:.2f}x")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()

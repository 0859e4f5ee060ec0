"""A GRPO setting measured as the recipe measures it: from a recipe's cold-start model, scored paired.

The recipe's own code path (``Recipe.grpo``, ``Recipe.evaluate`` with ``sampled=True``, ``Recipe.compare_sampled``):
the GRPO stage of the recipe's config, with the given ``key=value`` overrides, runs from the ``--stage`` model of a
recipe's output folder; the start model and the GRPO model are both evaluated on the folder's held-out split
(greedy, then ``eval.samples`` completions a question at the rollout temperature, seeded per prompt), and the script
prints the greedy accuracies, the sampled reward and pass@1 of both, GRPO's paired difference with its 95% bootstrap
interval (overall and per question type), the policy entropy over the first and last five steps, and the times. The
start model's evaluation is kept in the output folder and reused by later settings that would evaluate it the same
way (the same model bytes, rewards, evaluation, rollout sampling, seed and dtype); the GRPO model's is written to
OUT/NAME/after.json.

Run on a recipe's output folder whose ``cold_start`` stage is complete (``make demo``'s ``demo_out``, or a recipe
run with the GRPO stage left out), e.g. the LoRA setting of ``tiny.yaml``'s history:
``.venv/bin/python benchmarks/grpo_settings.py demo_out lora-r8 lora.enabled=true lora.r=8 lora.alpha=16
train.lr=1e-3``. ``--data`` reads the corpus from another folder with the same held-out split (one written with
``synthetic.n_rl``, say); nothing in the recipe's folder is written.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from grpo_audio.eval import SampledResult


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe_dir", type=Path, help="a recipe's output folder (its data/ and STAGE/ folders)")
    parser.add_argument("name", help="the setting's name: its results go to OUT/NAME")
    parser.add_argument(
        "overrides", nargs="*", help="key=value settings over the recipe's config (output_dir is OUT/NAME)"
    )
    parser.add_argument(
        "--config", default="examples/music_flamingo/tiny.yaml", help="the recipe's config (%(default)s)"
    )
    parser.add_argument("--stage", default="cold_start", help="the stage whose model GRPO starts from")
    parser.add_argument("--data", type=Path, help="the corpus folder (default: RECIPE_DIR/data)")
    parser.add_argument("--out", type=Path, default=Path("grpo_settings_out"), help="results folder (%(default)s)")
    args = parser.parse_intermixed_args()  # options may come between the name and the overrides

    from grpo_audio.checkpoint import model_fingerprint
    from grpo_audio.config import RecipeConfig, load_config
    from grpo_audio.eval import EvalResult
    from grpo_audio.recipe import Recipe, StageResult
    from grpo_audio.recipe.records import STAGE_MARKER, stage_model_dir

    recorded = json.loads((args.recipe_dir / args.stage / STAGE_MARKER).read_text())["entry"]["model_dir"]
    start = stage_model_dir(args.recipe_dir, recorded)
    out = (args.out / args.name).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = (args.data or args.recipe_dir / "data").resolve()
    for split in ("eval.jsonl", "skills.jsonl"):  # the same held-out questions, the same supervised clips
        if (data / split).read_bytes() != (args.recipe_dir / "data" / split).read_bytes():
            raise SystemExit(f"--data {data}: its {split} differs from the recipe folder's")
    if not (out / "data").exists():
        (out / "data").symlink_to(data)
    cfg = load_config(args.config, [*args.overrides, f"output_dir={out}", "eval.final=[]"], schema=RecipeConfig)
    recipe = Recipe(cfg)
    index = next((i for i, s in enumerate(cfg.stages) if s.name == args.stage), None)
    if index is None:
        raise SystemExit(f"--stage {args.stage}: {args.config} has no stage of that name")
    key = json.dumps([recipe.keys.eval_key(index), model_fingerprint(start)])  # what the recipe's evaluation reads
    cached = args.out / f"start-eval-{hashlib.sha256(key.encode()).hexdigest()[:12]}.json"

    t = time.perf_counter()
    if cached.exists():
        before = EvalResult.from_dict(json.loads(cached.read_text()))
    else:
        before = recipe.evaluate(start, args.stage, sampled=True)
        cached.write_text(json.dumps(before.to_dict()))
    t_start = time.perf_counter() - t
    recipe.report.stages.append(StageResult(args.stage, cfg.stages[index].kind, eval=before))
    stage = next(s for s in cfg.stages if s.kind == "grpo")
    t = time.perf_counter()
    model, outcome = recipe.grpo(stage, start)
    t_grpo = time.perf_counter() - t
    t = time.perf_counter()
    entry = StageResult(stage.name, "grpo", str(model), recipe.evaluate(model, stage.name, sampled=True), grpo=outcome)
    t_eval = time.perf_counter() - t
    (out / "after.json").write_text(json.dumps({"eval": entry.eval.to_dict()}))
    diff = recipe.compare_sampled(entry).to_dict()
    by_task = paired_by_task(before.sampled, entry.eval.sampled, data / "eval.jsonl")
    by_draws = paired_by_draws(before.sampled, entry.eval.sampled)

    steps = [json.loads(x) for x in (out / stage.name / "metrics.jsonl").read_text().splitlines()]
    entropy = [s["entropy"] for s in steps if "entropy" in s]
    a, b = before.to_dict(), entry.eval.to_dict()
    result = {
        "name": args.name,
        "overrides": args.overrides,
        "seed": cfg.seed,
        "mcq_accuracy": [a["mcq_accuracy"], b["mcq_accuracy"]],
        "open_accuracy": [a["open_accuracy"], b["open_accuracy"]],
        "sampled_reward": [a["sampled"]["reward"]["value"], b["sampled"]["reward"]["value"]],
        "pass_at_1": [a["sampled"]["pass_at_1"]["value"], b["sampled"]["pass_at_1"]["value"]],
        "paired": diff,
        "paired_by_task": by_task,
        "paired_by_draws": by_draws,
        "entropy_first_last5": [sum(entropy[:5]) / len(entropy[:5]), sum(entropy[-5:]) / len(entropy[-5:])],
        "seconds": {"start_eval": t_start, "grpo": t_grpo, "grpo_eval": t_eval},
    }
    (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    say(result)


def say(result: dict) -> None:
    """The setting's result in three lines: before and after GRPO, then the paired change by question type and by
    the draws a prompt."""
    r, p = result["paired"]["reward"], result["paired"]["pass_at_1"]
    (a_mcq, b_mcq), (a_open, b_open) = result["mcq_accuracy"], result["open_accuracy"]
    seconds = result["seconds"]
    print(
        f"{result['name']} (seed {result['seed']}): greedy MCQ {a_mcq:.3f} -> {b_mcq:.3f}, open "
        f"{a_open:.3f} -> {b_open:.3f}; sampled reward {result['sampled_reward'][0]:.3f} -> "
        f"{result['sampled_reward'][1]:.3f}, paired {r['value']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}]; pass@1 "
        f"paired {p['value']:+.3f} [{p['low']:+.3f}, {p['high']:+.3f}]; entropy {result['entropy_first_last5'][0]:.3f}"
        f" -> {result['entropy_first_last5'][1]:.3f}; GRPO {seconds['grpo']:.0f} s, evaluations "
        f"{seconds['start_eval']:.0f} + {seconds['grpo_eval']:.0f} s"
    )
    print(
        "paired reward change by question type: "
        + ", ".join(
            f"{task} {d['value']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
            for task, d in result["paired_by_task"].items()
        )
    )
    print(
        "paired reward change on the first m draws of each prompt: "
        + ", ".join(
            f"m={m} {d['value']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
            for m, d in result["paired_by_draws"].items()
        )
    )


def paired_by_draws(before: SampledResult, after: SampledResult) -> dict[int, dict]:
    """The paired change of the sampled reward counting only each prompt's first m draws, for m = 1, 2, 4, ... up
    to k: how the interval narrows with the draws a prompt (both evaluations draw the same noise for draw j of a
    prompt, so the first m of k are paired as the full evaluation is, and drawn as an m-draw evaluation would be,
    though not with its very noise)."""
    from grpo_audio.eval import paired_difference

    def first(sampled: SampledResult, m: int) -> SampledResult:
        prompts = {i: replace(p, reward=sum(p.rewards[:m]) / m) for i, p in sampled.prompts.items()}
        return replace(sampled, prompts=prompts)

    sizes = sorted({*(2**e for e in range(before.k.bit_length()) if 2**e <= before.k), before.k})
    return {m: asdict(paired_difference(first(after, m), first(before, m))) for m in sizes}


def paired_by_task(before: SampledResult, after: SampledResult, manifest: Path) -> dict[str, dict]:
    """The paired change of the sampled reward (``after`` minus ``before``, two sampled evaluations) on each
    question type's held-out prompts, with its 95% bootstrap interval."""
    from grpo_audio.eval import paired_difference

    tasks: dict[str, list[str]] = {}
    for line in manifest.read_text().splitlines():
        row = json.loads(line)
        tasks.setdefault(row["task"], []).append(row["id"])

    def only(sampled: SampledResult, ids: list[str]) -> SampledResult:
        return replace(sampled, prompts={i: sampled.prompts[i] for i in ids if i in sampled.prompts})

    return {
        task: asdict(paired_difference(only(after, ids), only(before, ids))) for task, ids in sorted(tasks.items())
    }


if __name__ == "__main__":
    main()

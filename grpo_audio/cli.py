"""The ``grpo-audio`` command line. Each subcommand is load arguments -> build -> run.

grpo-audio recipe CONFIG [key=value ...]          run sft -> cold_start -> grpo -> eval from one YAML
grpo-audio train CONFIG [key=value ...]           GRPO from a YAML
grpo-audio sft MODEL_DIR MANIFEST OUT             supervised fine-tuning (TRL SFTTrainer)
grpo-audio eval MODEL_DIR DATA                    accuracy per question type and benchmark axis
grpo-audio generate MODEL_DIR MANIFEST OUT        sample completions with audio
grpo-audio synth OUT [--n N] [--seed S]           the synthetic music-theory corpus
grpo-audio check-data DATA [--family F]           validate a dataset up front
grpo-audio tiny-model FAMILY OUT [--size S] [--standardize-on MANIFEST...]
                                                  a tiny random checkpoint, built locally
grpo-audio config-help                            every config key with its help
"""

from __future__ import annotations

import argparse
import sys

from .audio import LONG_AUDIO
from .data.schema import BAD_ROWS
from .models import FAMILIES
from .rewards.matching import ANSWER_FORMATS
from .rollout import ENGINES


def _recipe(args: argparse.Namespace) -> int:
    from .config import RecipeConfig, load_config
    from .recipe import Recipe

    Recipe(load_config(args.config, args.overrides, schema=RecipeConfig)).run()
    return 0


def _train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .trainer import GRPOTrainer

    cfg = load_config(args.config, args.overrides)
    trainer = GRPOTrainer(cfg)
    try:
        last = trainer.train()
    finally:
        trainer.close()
    print(
        f"done: step {trainer.step}, reward {last.get('reward/mean', float('nan')):.4f}; outputs in {cfg.output_dir}"
    )
    return 0


def _sft(args: argparse.Namespace) -> int:

    from transformers import AutoProcessor

    from .data.loaders import load_manifest
    from .models import family_of_checkpoint
    from .sft import SFTSettings, run_sft

    family = family_of_checkpoint(args.model_dir)
    rows = load_manifest(args.manifest, family=family, decode=args.target != "text")
    model = family.model_class().from_pretrained(args.model_dir)
    settings = SFTSettings(
        target=args.target,
        epochs=args.epochs,
        max_steps=args.max_steps,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        logging_steps=args.logging_steps,
        freeze_audio_encoder=args.freeze_audio_encoder,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    model_dir, history = run_sft(
        model, family, AutoProcessor.from_pretrained(args.model_dir), rows, args.out, settings
    )
    if history:
        print(f"loss {history[0]['loss']:.4f} -> {history[-1]['loss']:.4f}")
    print(f"wrote {model_dir}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from .data.benchmarks import LayoutError, load_benchmark, write_predictions
    from .data.schema import DataError
    from .evaluate import evaluate_model
    from .models import family_of_checkpoint

    try:
        bench = load_benchmark(
            args.data,
            family=family_of_checkpoint(args.model_dir),
            fields=args.fields,
            audio_root=args.audio_root,
            answer_format=args.answer_format,
            think=args.think,
            bad_rows=args.bad_rows,
        )
    except (DataError, LayoutError, FileNotFoundError) as e:
        print(f"grpo-audio eval: {e}", file=sys.stderr)
        return 1
    if not bench.rows:
        print(f"grpo-audio eval: {args.data}: no row passed validation; nothing to evaluate", file=sys.stderr)
        return 1
    rows = bench.rows[: args.max_rows] if args.max_rows else bench.rows
    print(
        f"{bench.layout} layout: {len(rows)} rows" + (f" of {len(bench.rows)}" if len(rows) < len(bench.rows) else "")
    )
    report = evaluate_model(
        args.model_dir, rows, engine=args.engine, max_new_tokens=args.max_new_tokens, prefer=args.answer_format
    )
    for key in ("mcq_accuracy", "choice_rate", "open_accuracy", "format_rate"):
        if report[key] is not None:
            print(f"{key:14s} {report[key]:.3f}")
    for task, acc in report["per_task"].items():
        print(f"  {task:24s} {acc:.3f}  (n={report['counts'][task]})")
    for axis, groups in report["per_group"].items():
        print(f"by {axis}:")
        for value, g in groups.items():
            print(f"  {value:24s} {g['accuracy']:.3f}  (n={g['n']})")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"report written to {args.out}")
    if args.predictions_out:
        completions = {r["id"]: r["completion"] for r in report["results"]}
        out = write_predictions(bench, completions, args.predictions_out, prefer=args.answer_format)
        print(f"predictions ({bench.spec.prediction_field}) written to {out}")
    return 0


def _tiny_model(args: argparse.Namespace) -> int:
    from .models.tiny import build_tiny_model

    out = build_tiny_model(args.family, args.out, size=args.size, seed=args.seed)
    print(f"wrote a {args.size}-size {args.family} checkpoint to {out}")
    if args.standardize_on:
        from .recipe.calibrate import standardize_checkpoint

        spread = standardize_checkpoint(out, args.standardize_on)
        print(f"audio embeddings standardised on {spread['tokens']} frames of {', '.join(args.standardize_on)}")
    return 0


def _config_help(args: argparse.Namespace) -> int:
    from .config import describe

    print("\n".join(describe()))
    return 0


def _synth(args: argparse.Namespace) -> int:
    from .config import SyntheticConfig
    from .data.synthetic import write_corpus

    space = SyntheticConfig(
        chord_qualities=args.chord_qualities or [], tempo_step=args.tempo_step, registers=args.registers or []
    ).label_space()
    paths = write_corpus(args.out, n=args.n, seed=args.seed, n_eval=args.n_eval, space=space, n_rl=args.n_rl)
    for name, path in paths.items():
        print(f"{name:7s} {sum(1 for _ in path.open())} rows  {path}")
    return 0


def _check_data(args: argparse.Namespace) -> int:
    from .data.benchmarks import LayoutError
    from .data.check import check_data

    try:
        return check_data(
            args.data,
            family=args.family,
            long_audio=args.long_audio,
            max_seconds=args.max_seconds,
            bad_rows=args.bad_rows,
            fields=args.fields,
            audio_root=args.audio_root,
        )
    except (LayoutError, FileNotFoundError) as e:
        print(f"grpo-audio check-data: {e}", file=sys.stderr)
        return 1


def _generate(args: argparse.Namespace) -> int:
    from .rollout import SamplingConfig, generate_manifest

    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    count = generate_manifest(args.model_dir, args.manifest, args.out, engine=args.engine, n=args.n, sampling=sampling)
    print(f"wrote {count} completions to {args.out}")
    return 0


def _data_arguments(p: argparse.ArgumentParser) -> None:
    """The options ``eval`` and ``check-data`` share for reading a data file."""
    p.add_argument(
        "--bad-rows",
        choices=BAD_ROWS,
        default="raise",
        help="rows that fail validation: raise (list them all and stop) or skip them (default raise)",
    )
    p.add_argument(
        "--fields",
        default=None,
        metavar="MAP",
        help="field map for a file of another layout: "
        "question=...,choices=...,answer=...,audio=...[,group=a|b][,id=...]",
    )
    p.add_argument("--audio-root", default=None, help="folder relative audio paths start from (default: the file's)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grpo-audio",
        description="GRPO reinforcement learning for audio-language models (Music Flamingo, Audio Flamingo 3, "
        "Qwen2-Audio): tiny local checkpoints, rollouts through vLLM with audio, custom rewards.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "recipe",
        help="run a multi-stage recipe (sft -> cold_start -> grpo -> eval) from one YAML",
        description="Run the stages of a recipe YAML in order, each from the previous stage's model, evaluate "
        "after each, and write a report folder (report.md/json, stages.png, GRPO curves, samples, wall time).",
    )
    p.add_argument("config", help="YAML file mirroring grpo_audio.config.RecipeConfig")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.set_defaults(func=_recipe)

    p = sub.add_parser(
        "train",
        help="run GRPO from a YAML config (plus key=value overrides)",
        description="GRPO on an audio-language model: rollouts with audio (vLLM or transformers), rewards, "
        "clipped policy loss, weight sync, metrics (JSONL, TensorBoard, PNG) and atomic checkpoints; resumes from "
        "the newest complete checkpoint (train.resume=auto). `grpo-audio config-help` lists every key.",
    )
    p.add_argument("config", help="YAML file mirroring grpo_audio.config.RunConfig")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. grpo.beta=0.04 train.lr=1e-6")
    p.set_defaults(func=_train)

    p = sub.add_parser(
        "sft",
        help="supervised fine-tuning on a manifest (TRL SFTTrainer, loss on the target only)",
        description="SFT of an audio LLM on a JSONL manifest with TRL's SFTTrainer and grpo-audio's audio "
        "collator: the target is the row's answer (or caption), or with --target think a "
        "<think>...</think><answer>...</answer> chain of thought (cold start). Prompt and audio are masked. "
        "--target text trains on the whole text of each row without its audio (a language warm-up).",
    )
    p.add_argument("model_dir", help="checkpoint directory")
    p.add_argument("manifest", help="JSONL manifest")
    p.add_argument("out", help="output directory (the model goes to OUT/model)")
    p.add_argument(
        "--target",
        choices=["answer", "think", "auto", "text"],
        default="answer",
        help="what to learn (default answer; auto: the chain of thought and answer where a row has a chain, the "
        "answer otherwise; text: the whole text without audio, a language warm-up)",
    )
    p.add_argument("--epochs", type=float, default=1.0, help="epochs (default 1)")
    p.add_argument("--max-steps", type=int, default=-1, help="optimiser steps; overrides --epochs when > 0")
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4)")
    p.add_argument("--batch-size", type=int, default=8, help="rows per step (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--logging-steps", type=int, default=10, help="log the loss every N steps (default 10)")
    p.add_argument("--freeze-audio-encoder", action="store_true", help="keep the audio encoder fixed")
    p.add_argument(
        "--gradient-checkpointing", action="store_true", help="recompute activations in backward (less memory)"
    )
    p.set_defaults(func=_sft)

    p = sub.add_parser(
        "eval",
        help="accuracy per question type and benchmark axis on an MCQ / open-answer set (manifest, MMAU, MMAR, "
        "MuChoMusic, or any JSON/JSONL/CSV with a field map)",
        description="Greedy completions for every row, scored with mcq_accuracy (MCQ rows) or answer_accuracy "
        "(open rows); prints overall accuracy, per task and per benchmark axis, and the format rate. The layout is "
        "detected from the file's fields. --predictions-out writes the source items back with the prediction "
        "field the benchmark's official scorer reads.",
    )
    p.add_argument("model_dir", help="checkpoint directory")
    p.add_argument("data", help="evaluation file: a grpo-audio manifest, MMAU JSON, MMAR JSON(L), MuChoMusic CSV "
                   "or prompt JSON, or a JSON/JSONL/CSV file with --fields")  # fmt: skip
    p.add_argument("--engine", choices=ENGINES, default="vllm", help="generation engine (default vllm)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="completion length cap (default 128)")
    p.add_argument("--max-rows", type=int, default=0, help="evaluate the first N rows only (default all)")
    p.add_argument("--out", default="", help="write the full report (per-row results) as JSON")
    p.add_argument(
        "--predictions-out",
        default="",
        metavar="FILE",
        help="write the source items with the benchmark's prediction field (MMAU model_output, MMAR "
        "answer_prediction, MuChoMusic model_output, otherwise prediction) filled with what its scorer credits",
    )
    p.add_argument(
        "--answer-format",
        choices=ANSWER_FORMATS,
        default="letter",
        help="what benchmark prompts ask for: the choice's letter or its text (default letter)",
    )
    p.add_argument("--think", action="store_true", help="benchmark prompts ask for <think> then <answer>")
    _data_arguments(p)
    p.set_defaults(func=_eval)

    p = sub.add_parser(
        "tiny-model",
        help="build a tiny random checkpoint of a model family locally (no download)",
        description="Build a small random model of FAMILY with a locally trained tokenizer, the family's "
        "processor and chat template, loadable by transformers and vLLM. Same seed, same bytes.",
    )
    p.add_argument("family", choices=sorted(FAMILIES), help="model family")
    p.add_argument("out", help="output directory (replaced if it exists)")
    p.add_argument(
        "--size",
        choices=["test", "demo", "bench"],
        default="test",
        help="test: fastest; demo: the embedded recipe's model; bench: the benchmarks' model (default test)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.add_argument(
        "--standardize-on",
        nargs="+",
        default=[],
        metavar="MANIFEST",
        help="rescale the projector so that the audio embeddings of these manifests' clips (up to 200) have mean 0 "
        "and variance 1 per channel, as the recipe does (recipe/calibrate.py)",
    )
    p.set_defaults(func=_tiny_model)

    p = sub.add_parser(
        "config-help",
        help="list every field of a training config with its type, default and help",
        description="Print the GRPO run schema: one line per key (dotted), its type, default, help and choices.",
    )
    p.set_defaults(func=_config_help)

    p = sub.add_parser(
        "synth",
        help="write the synthetic music-theory corpus (WAV clips + skills/think/rl/eval JSONL manifests)",
        description="Render numpy-synthesized clips with exact ground truth (chords, keys, tempo, meter, "
        "instruments) and write skills.jsonl, think.jsonl, rl.jsonl and a held-out eval.jsonl. Same seed, "
        "same bytes.",
    )
    p.add_argument("out", help="output directory")
    p.add_argument("--n", type=int, default=200, help="training clips (default 200)")
    p.add_argument("--n-eval", type=int, default=None, help="held-out clips (default n // 4)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument(
        "--n-rl",
        type=int,
        default=0,
        help="clips of rl.jsonl's own, unseen in skills/think (default 0: the training clips)",
    )
    p.add_argument(
        "--chord-qualities", nargs="+", default=None, metavar="Q", help="chord qualities to draw from (default: all)"
    )
    p.add_argument("--tempo-step", type=int, default=4, help="tempo grid step in BPM over 64-160 (default 4)")
    p.add_argument(
        "--registers",
        nargs="+",
        type=int,
        default=None,
        metavar="MIDI",
        help="MIDI notes of the C that pitched clips start from (default: 48 60 72)",
    )
    p.set_defaults(func=_synth)

    p = sub.add_parser(
        "check-data",
        help="validate a data file up front (every layout eval reads): every row's fields, answer and audio",
        description="Decode every row's audio and check its fields, answer and length against the model "
        "family's limit; print one line per row. Exit status 1 if any row is bad (with --bad-rows skip: if no "
        "row is good).",
    )
    p.add_argument("data", help="a manifest or benchmark file (audio paths relative to it or to --audio-root)")
    p.add_argument("--family", choices=sorted(FAMILIES), default=None, help="apply this family's rate and limit")
    p.add_argument(
        "--long-audio",
        choices=LONG_AUDIO,
        default="truncate",
        help="audio over the limit: truncate (reported) or reject (default truncate)",
    )
    p.add_argument("--max-seconds", type=float, default=None, help="override the family's audio length limit")
    _data_arguments(p)
    p.set_defaults(func=_check_data)

    p = sub.add_parser(
        "generate",
        help="sample completions with audio for every row of a manifest (vLLM or transformers)",
        description="Load a checkpoint, validate the manifest, sample N completions per row and write one JSONL "
        "line per completion (id, completion, finish reason, token count, reference answer).",
    )
    p.add_argument("model_dir", help="checkpoint directory")
    p.add_argument("manifest", help="JSONL manifest")
    p.add_argument("out", help="output JSONL")
    p.add_argument("--engine", choices=ENGINES, default="vllm", help="generation engine (default vllm)")
    p.add_argument("--n", type=int, default=1, help="completions per row (default 1)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="completion length cap (default 256)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 for greedy (default 1.0)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.set_defaults(func=_generate)

    return parser


def main(argv: list[str] | None = None) -> int:
    import logging

    args = build_parser().parse_args(argv)
    # grpo-audio's own warnings (skipped rows, truncated audio, resumes, fallbacks) go to stderr.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    for name in ("grpo_audio",):
        log = logging.getLogger(name)
        if not log.handlers:
            log.addHandler(handler)
            log.setLevel(logging.INFO)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

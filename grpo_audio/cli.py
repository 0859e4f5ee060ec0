"""The ``grpo-audio`` command line. Each subcommand is a section of this file: its arguments (a typed config, or a
few flags) beside its handler, which loads them, builds, and runs.

grpo-audio recipe CONFIG [key=value ...]          sft -> cold_start -> grpo -> eval from one YAML
grpo-audio train CONFIG [key=value ...]           GRPO
grpo-audio sft [CONFIG] key=value ...             supervised fine-tuning (TRL SFTTrainer)
grpo-audio eval [CONFIG] key=value ...            accuracy per question type and benchmark axis
grpo-audio synth [CONFIG] key=value ...           the synthetic music-theory corpus
grpo-audio generate MODEL_DIR MANIFEST OUT        sample completions with audio
grpo-audio check-data DATA [--family F]           validate a dataset up front
grpo-audio tiny-model FAMILY OUT [--size S]       a tiny random checkpoint, built locally
grpo-audio config-help [COMMAND]                  every config key of a command, with its help

Commands with a typed config take a YAML file mirroring the command's dataclass (optional for sft, eval and synth)
and ``key=value`` overrides, checked as ``train``'s are. The terminal shows the command's own output and errors;
``--verbose`` adds every library's (see ``logs.py``); commands that write a folder keep all of it in
``FOLDER/grpo-audio.log``. An error the user caused (``USER_ERRORS``) is one line naming the cause, with exit status
2, its traceback in that log; any other error is a bug and shows its traceback (exit status 1).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from .audio import LONG_AUDIO
from .config import (
    ENGINES,
    ConfigError,
    EvalCommandConfig,
    RecipeConfig,
    RunConfig,
    SFTCommandConfig,
    SynthCommandConfig,
    checked_answer_formats,
    describe,
    help_of,
    load_config,
)
from .data.benchmarks import load_benchmark, write_predictions
from .data.check import check_data
from .data.loaders import load_manifest
from .data.schema import BAD_ROWS
from .data.synthetic import write_corpus
from .errors import UserError
from .logs import CommandLog
from .models import FAMILIES, ModelSpec, family_of_checkpoint, load_policy
from .models.base import SIZES
from .run_lock import RunLock


@dataclass(frozen=True)
class Command:
    """One subcommand: ``schema`` (a typed config) or ``arguments`` (flags), and the handler that runs it."""

    name: str
    help: str
    description: str
    run: Callable[[Any, CommandLog], int]
    schema: type | None = None
    config_required: bool = False  # the YAML file (schema commands)
    arguments: Callable[[argparse.ArgumentParser], None] | None = None


# ---- recipe -------------------------------------------------------------------------------------------------
def run_recipe(cfg: RecipeConfig, log: CommandLog) -> int:
    from .recipe import Recipe  # imported when the command runs: --help stays fast

    recipe = Recipe(cfg)  # its checks first: a refused recipe leaves no output folder behind
    RunLock.check_free(cfg.output_dir)  # a refused recipe leaves the running one's log alone
    log.log_to(cfg.output_dir, header(cfg))
    recipe.run()
    return 0


RECIPE = Command(
    "recipe",
    help="run a multi-stage recipe (sft -> cold_start -> grpo -> eval) from one YAML",
    description="Run the stages of a recipe YAML in order, each from the previous stage's model, evaluate after "
    "each, and write a report folder (report.md/json, stages.png, GRPO curves, samples, wall time).",
    run=run_recipe,
    schema=RecipeConfig,
    config_required=True,
)


# ---- train --------------------------------------------------------------------------------------------------
def run_train(cfg: RunConfig, log: CommandLog) -> int:
    from .trainer import GRPOTrainer  # imported when the command runs: --help stays fast

    RunLock.check_free(cfg.output_dir)  # a refused run leaves the running one's log alone
    log.log_to(cfg.output_dir, header(cfg))
    trainer = GRPOTrainer(cfg)
    try:
        summary = trainer.train()
    finally:
        trainer.close()
    if not summary.last:
        print(f"done: the run was at step {summary.step} (train.max_steps) already; outputs in {summary.output_dir}")
        return 0
    print(f"done: step {summary.step}, reward {summary.last['reward/mean']:.4f}; outputs in {summary.output_dir}")
    return 0


TRAIN = Command(
    "train",
    help="run GRPO from a YAML config (plus key=value overrides)",
    description="GRPO on an audio-language model: rollouts with audio (vLLM or transformers), rewards, clipped "
    "policy loss, weight sync, metrics (JSONL, TensorBoard, PNG) and atomic checkpoints; resumes from the newest "
    "complete checkpoint (train.resume=auto). `grpo-audio config-help train` lists every key.",
    run=run_train,
    schema=RunConfig,
    config_required=True,
)


# ---- sft ----------------------------------------------------------------------------------------------------
def run_sft_command(cfg: SFTCommandConfig, log: CommandLog) -> int:
    from transformers import AutoProcessor  # imported when the command runs: --help stays fast

    from .precision import precision_of  # imported when the command runs: --help stays fast
    from .sft import run_sft  # imported when the command runs: --help stays fast

    if cfg.epochs <= 0 and cfg.max_steps <= 0:
        raise ConfigError(f"sft: epochs ({cfg.epochs}) or max_steps ({cfg.max_steps}) must be above 0")
    log.log_to(cfg.output_dir, header(cfg))
    family = family_of_checkpoint(cfg.model)
    rows = load_manifest(cfg.data, family=family, decode=cfg.target != "text")
    spec = ModelSpec(cfg.model, family.name, cfg.dtype)
    precision = precision_of(spec)  # float32 master weights for a bf16 model (precision.py)
    model = load_policy(spec, dtype=precision.master)
    processor = AutoProcessor.from_pretrained(cfg.model)
    model_dir, history = run_sft(model, family, processor, rows, cfg.output_dir, cfg, precision=precision)
    if history:
        print(f"loss {history[0]['loss']:.4f} -> {history[-1]['loss']:.4f}")
    print(f"wrote {model_dir}")
    return 0


SFT = Command(
    "sft",
    help="supervised fine-tuning on a manifest (TRL SFTTrainer, loss on the target only)",
    description="SFT of an audio LLM on a JSONL manifest with TRL's SFTTrainer and grpo-audio's audio collator: "
    "the target is the row's answer (or caption), or with target=think a <think>...</think><answer>...</answer> "
    "chain of thought (cold start). Prompt and audio are masked. target=text trains on the whole text of each row "
    "without its audio (a language warm-up). Example: grpo-audio sft model=CKPT data=train.jsonl output_dir=OUT "
    "target=think epochs=2",
    run=run_sft_command,
    schema=SFTCommandConfig,
)


# ---- eval ---------------------------------------------------------------------------------------------------
def run_eval(cfg: EvalCommandConfig, log: CommandLog) -> int:
    from .eval import evaluate_model  # imported when the command runs: --help stays fast

    out, predictions_out = output_file(cfg.out, "out"), output_file(cfg.predictions_out, "predictions_out")
    bench = load_benchmark(  # a bad file or row is the user's: one line, exit status 2
        cfg.data,
        family=family_of_checkpoint(cfg.model),
        fields=cfg.fields or None,
        audio_root=cfg.audio_root or None,
        answer_format=cfg.answer_format,
        think=cfg.think,
        bad_rows=cfg.bad_rows,
    )
    if not bench.rows:
        raise ConfigError(f"data={cfg.data}: no row passed validation; nothing to evaluate")
    rows = bench.rows[: cfg.max_rows] if cfg.max_rows else bench.rows
    shown = f"{len(rows)} rows" + (f" of {len(bench.rows)}" if len(rows) < len(bench.rows) else "")
    print(f"{bench.layout} layout: {shown}")
    result = evaluate_model(
        cfg.model,
        rows,
        engine=cfg.engine,
        max_new_tokens=cfg.max_new_tokens,
        prefer=cfg.answer_format,
        dtype=cfg.dtype,
        batch_size=cfg.batch_size,
    )
    print("\n".join(result.lines()))
    if out is not None:
        out.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        print(f"report written to {out}")
    if predictions_out is not None:
        completions = {r.id: r.completion for r in result.results}
        export = write_predictions(bench, completions, predictions_out, prefer=cfg.answer_format)
        print(export.message(right=sum(bool(r.correct) for r in result.results)))
    return 0


def output_file(value: str, key: str) -> Path | None:
    """The file the setting ``key`` names (None when empty), its folder made before any compute is spent.

    Raises:
        ConfigError: the path is a folder, or its folder cannot be made or written to.
    """
    if not value:
        return None
    path = Path(value)
    if path.is_dir():
        raise ConfigError(f"{key}={value}: a folder; name the file to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{key}={value}: its folder cannot be made ({e.strerror})") from None
    if not os.access(path.parent, os.W_OK):
        raise ConfigError(f"{key}={value}: its folder {path.parent} is not writable")
    return path


EVAL = Command(
    "eval",
    help="accuracy per question type and benchmark axis on an MCQ / open-answer set (manifest, MMAU, MMAR, "
    "MuChoMusic, or any JSON/JSONL/CSV with a field map)",
    description="Greedy completions for every row, scored with mcq_accuracy (MCQ rows) or answer_accuracy (open "
    "rows); prints overall accuracy, per task and per benchmark axis, and the format rate. The layout is detected "
    "from the file's fields. predictions_out=FILE writes the source items back with the prediction field the "
    "benchmark's official scorer reads. Example: grpo-audio eval model=CKPT data=mmau-test-mini.json engine=hf",
    run=run_eval,
    schema=EvalCommandConfig,
)


# ---- synth --------------------------------------------------------------------------------------------------
def run_synth(cfg: SynthCommandConfig, log: CommandLog) -> int:
    log.log_to(cfg.output_dir, header(cfg))
    space, formats = cfg.label_space(prefix=""), checked_answer_formats(cfg.answer_formats, prefix="")
    paths = write_corpus(cfg.output_dir, cfg.n, cfg.seed, cfg.n_eval, space, n_rl=cfg.n_rl, answer_formats=formats)
    for name, path in paths.items():
        rows = len(json.loads(path.read_text())) if path.suffix == ".json" else sum(1 for _ in path.open())
        print(f"{name:9s} {rows} rows  {path}")
    return 0


SYNTH = Command(
    "synth",
    help="write the synthetic music-theory corpus (WAV clips + skills/think/rl/eval JSONL manifests)",
    description="Render numpy-synthesized clips with exact ground truth (chords, keys, tempo, meter, instruments) "
    "and write skills.jsonl, think.jsonl, rl.jsonl and a held-out eval.jsonl. Same seed, same bytes. Example: "
    "grpo-audio synth output_dir=data/synth n=200 n_eval=50",
    run=run_synth,
    schema=SynthCommandConfig,
)


# ---- generate -----------------------------------------------------------------------------------------------
def generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", help="checkpoint directory")
    p.add_argument("manifest", help="JSONL manifest")
    p.add_argument("out", help="output JSONL")
    p.add_argument("--engine", choices=ENGINES, default="vllm", help="generation engine (default vllm)")
    p.add_argument("--n", type=int, default=1, help="completions per row (default 1)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="completion length cap (default 256)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 for greedy (default 1.0)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")


def run_generate(args: argparse.Namespace, log: CommandLog) -> int:
    from .rollout import SamplingConfig, generate_manifest  # imported when the command runs: --help stays fast

    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    count = generate_manifest(args.model_dir, args.manifest, args.out, engine=args.engine, n=args.n, sampling=sampling)
    print(f"wrote {count} completions to {args.out}")
    return 0


GENERATE = Command(
    "generate",
    help="sample completions with audio for every row of a manifest (vLLM or transformers)",
    description="Load a checkpoint, validate the manifest, sample N completions per row and write one JSONL line "
    "per completion (id, completion, finish reason, token count, reference answer).",
    run=run_generate,
    arguments=generate_arguments,
)


# ---- check-data ---------------------------------------------------------------------------------------------
def check_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="a manifest or benchmark file (audio paths relative to it or to --audio-root)")
    p.add_argument("--family", choices=sorted(FAMILIES), default=None, help="apply this family's rate and limit")
    p.add_argument(
        "--long-audio",
        choices=LONG_AUDIO,
        default="truncate",
        help="audio over the limit: truncate (reported) or reject (default truncate)",
    )
    p.add_argument("--max-seconds", type=float, default=None, help="override the family's audio length limit")
    p.add_argument("--bad-rows", choices=BAD_ROWS, default="raise", help=help_of(EvalCommandConfig, "bad_rows"))
    p.add_argument("--fields", default=None, metavar="MAP", help=help_of(EvalCommandConfig, "fields"))
    p.add_argument("--audio-root", default=None, help=help_of(EvalCommandConfig, "audio_root"))
    p.add_argument(
        "--model",
        default=None,
        metavar="DIR",
        help="a checkpoint: its family, and each prompt with its audio tokens checked against its context",
    )
    p.add_argument(
        "--max-model-len",
        type=int,
        default=0,
        help="the engine's context (rollout.max_model_len; default 0: the model's own)",
    )
    p.add_argument(
        "--max-new-tokens", type=int, default=256, help="the completion's room (rollout.max_new_tokens; default 256)"
    )


def run_check_data(args: argparse.Namespace, log: CommandLog) -> int:
    try:
        return check_data(
            args.data,
            family=args.family,
            long_audio=args.long_audio,
            max_seconds=args.max_seconds,
            bad_rows=args.bad_rows,
            fields=args.fields,
            audio_root=args.audio_root,
            model=args.model,
            max_model_len=args.max_model_len,
            max_new_tokens=args.max_new_tokens,
        )
    except ValueError as e:  # a missing file, a layout no file fits, a family unknown: one line, exit status 2
        if isinstance(e, UserError):
            raise
        raise ConfigError(str(e)) from None


CHECK_DATA = Command(
    "check-data",
    help="validate a data file up front (every layout eval reads): every row's fields, answer and audio",
    description="Decode every row's audio and check its fields, answer and length against the model family's "
    "limit; print one line per row. Exit status 1 if any row is bad (with --bad-rows skip: if no row is good).",
    run=run_check_data,
    arguments=check_data_arguments,
)


# ---- plan ---------------------------------------------------------------------------------------------------
def plan_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="a run or recipe YAML (its model, lengths, micro-batch, dtype, engine share)")
    p.add_argument("settings", nargs="*", metavar="key=value", help="overrides of the YAML's settings")
    p.add_argument("--gpus", type=int, required=True, help="GPUs the policy is spread over")
    p.add_argument("--gpu-memory", type=float, required=True, help="one GPU's memory in GiB (e.g. 80)")
    p.add_argument("--audio-seconds", type=float, default=30.0, help="the longest clip of a prompt (default 30)")


def run_plan(args: argparse.Namespace, log: CommandLog) -> int:
    from .plan import plan_memory, plan_table  # imported when the command runs: --help stays fast

    cfg = load_config(args.config, args.settings, schema=RecipeConfig)
    if cfg.tiny_model and not cfg.model.path:
        raise ConfigError(
            f"{args.config} builds its model (tiny_model={cfg.tiny_model}) when it runs: plan from that checkpoint "
            "(model.path=OUTPUT_DIR/base) once it exists"
        )
    plans = plan_memory(cfg, args.gpus, args.gpu_memory, args.audio_seconds)
    print(plan_table(cfg, plans, args.gpus, args.gpu_memory))
    return 0


PLAN = Command(
    "plan",
    help="per-GPU memory of a run for DDP, FSDP2 and FSDP2 with CPU offload, and what fits",
    description="Count the model's parameters on the meta device (a local checkpoint or a known one's published "
    "shape) and print, per GPU, weights, gradients, AdamW state, reference, activations and logits of one "
    "micro-batch at the configured lengths, and the rollout engine's share, for each strategy (grpo_audio/plan.py).",
    run=run_plan,
    arguments=plan_arguments,
)


# ---- tiny-model ---------------------------------------------------------------------------------------------
def tiny_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("family", choices=sorted(FAMILIES), help="model family")
    p.add_argument("out", help="output directory (replaced if it exists)")
    p.add_argument(
        "--size",
        choices=list(SIZES),
        default="test",
        help="test: fastest; demo: the embedded recipe's model; bench: the benchmarks' model; scale: the FSDP2 "
        "memory comparison's (default test)",
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


def run_tiny_model(args: argparse.Namespace, log: CommandLog) -> int:
    from .models.tiny import build_tiny_model  # imported when the command runs: --help stays fast
    from .recipe.calibrate import standardize_checkpoint  # imported when the command runs: --help stays fast

    out = build_tiny_model(args.family, args.out, size=args.size, seed=args.seed)
    print(f"wrote a {args.size}-size {args.family} checkpoint to {out}")
    if args.standardize_on:
        spread = standardize_checkpoint(out, args.standardize_on)
        print(f"audio embeddings standardised on {spread['tokens']} frames of {', '.join(args.standardize_on)}")
    return 0


TINY_MODEL = Command(
    "tiny-model",
    help="build a tiny random checkpoint of a model family locally (no download)",
    description="Build a small random model of FAMILY with a locally trained tokenizer, the family's processor "
    "and chat template, loadable by transformers and vLLM. Same seed, same bytes.",
    run=run_tiny_model,
    arguments=tiny_model_arguments,
)


# ---- config-help --------------------------------------------------------------------------------------------
def config_help_arguments(p: argparse.ArgumentParser) -> None:
    names = [c.name for c in COMMANDS if c.schema is not None]
    p.add_argument("command", nargs="?", default="train", choices=names, help="whose config (default train)")


def run_config_help(args: argparse.Namespace, log: CommandLog) -> int:
    schema = next(c.schema for c in COMMANDS if c.name == args.command)
    print("\n".join(describe(schema)))
    return 0


CONFIG_HELP = Command(
    "config-help",
    help="list every config key of a command (default train) with its type, default and help",
    description="Print a command's config schema: one line per key (dotted), its type, default, help and choices.",
    run=run_config_help,
    arguments=config_help_arguments,
)

VERBOSE = ("-v", "--verbose")
# The errors a user's input causes: each names its cause. The types that do not derive from UserError predate it.
USER_ERRORS = (UserError, FileNotFoundError)  # a missing file is the user's too
COMMANDS = (RECIPE, TRAIN, PLAN, SFT, EVAL, SYNTH, GENERATE, CHECK_DATA, TINY_MODEL, CONFIG_HELP)


# ---- the parser and the entry point -------------------------------------------------------------------------
def header(cfg: Any) -> str:
    """The log file's first lines: the command line and the config it resolved to."""
    resolved = OmegaConf.to_yaml(OmegaConf.structured(cfg)).rstrip()
    return f"$ grpo-audio {shlex.join(sys.argv[1:])}\n{resolved}\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grpo-audio",
        description="GRPO reinforcement learning for audio-language models (Music Flamingo, Audio Flamingo 3, "
        "Qwen2-Audio): tiny local checkpoints, rollouts through vLLM with audio, custom rewards.",
    )
    # -v / --verbose is taken anywhere on the line (main strips it); declared here for --help.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(*VERBOSE, action="store_true", help="show every library's output too (vLLM, transformers)")
    parser.add_argument(*VERBOSE, action="store_true", help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.description, parents=[common])
        if command.schema is not None:
            what = "YAML file" + ("" if command.config_required else " (optional)")
            p.add_argument(
                "settings",
                nargs="+" if command.config_required else "*",
                metavar="CONFIG | key=value",
                help=f"a {what} mirroring the command's config, then key=value overrides "
                f"(`grpo-audio config-help {command.name}` lists the keys)",
            )
        else:
            command.arguments(p)
        p.set_defaults(command_spec=command)
    return parser


def load_command_config(command: Command, settings: list[str]) -> Any:
    """The command's typed config from ``[CONFIG.yaml] key=value ...``."""
    path = settings[0] if settings and "=" not in settings[0] else None
    if command.config_required and path is None:
        raise ConfigError(f"grpo-audio {command.name}: the first argument must be a YAML config file")
    return load_config(path, settings[1:] if path else settings, schema=command.schema)


def main(argv: list[str] | None = None) -> int:
    """Run a command. Errors leave as exceptions; one the user caused (``USER_ERRORS``: ``ConfigError``,
    ``RewardError``, ``DataError``, ...) is shown as one line naming the cause, its traceback in the log file."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = any(a in VERBOSE for a in argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args([a for a in argv if a not in VERBOSE])
    if unknown and hasattr(args, "settings") and all("=" in a and not a.startswith("-") for a in unknown):
        args.settings += unknown  # key=value after a command's options (argparse stops at the first option)
        unknown = []
    if unknown:
        flags = [a for a in unknown if a.startswith("--")]
        hint = ""
        if flags and args.command_spec.schema is not None:
            key = flags[0].lstrip("-").replace("-", "_")
            hint = f"; this command takes key=value settings: {key}=... (`grpo-audio config-help {args.command}`)"
        parser.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    command: Command = args.command_spec
    with CommandLog(verbose=verbose, user_errors=USER_ERRORS) as log:
        if command.schema is None:
            return command.run(args, log)
        return command.run(load_command_config(command, args.settings), log)


def entry() -> None:
    """The ``grpo-audio`` executable: :func:`main`, with an error the user caused (a bad config, data or reward, a
    refused output folder, a missing file) in one line (exit status 2; :func:`main` says it) rather than a
    traceback, and Ctrl-C in one line too (exit status 130, as a shell's)."""
    try:
        status = main()
    except USER_ERRORS:
        status = 2
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback; what was written before it stays
        if int(os.environ.get("RANK", "0")) == 0:
            print("grpo-audio: interrupted; completed stages and saved checkpoints are kept", file=sys.stderr)
        status = 130
    sys.exit(status)


if __name__ == "__main__":
    entry()

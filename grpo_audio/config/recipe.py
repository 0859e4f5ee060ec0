"""The schema of a recipe (``grpo-audio recipe``): :class:`RecipeConfig`, a run's config plus its stages, the
synthetic corpus and the evaluations after each stage; and the settings the supervised and evaluation commands
share with it (:class:`SupervisedSettings`, :class:`CorpusConfig`, :class:`EvalSettings`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..data.synthetic import LabelSpace
from ..errors import ConfigError
from ..models.base import SIZES
from ..rewards.matching import ANSWER_FORMATS
from .fields import COUNT, ENGINES, HF_BATCH_SIZE, NON_NEGATIVE, POSITIVE, Range, setting
from .run import RunConfig

STAGE_KINDS = ("text_pretrain", "sft", "cold_start", "grpo", "eval")
TARGETS = ("answer", "think", "auto", "text")  # what a supervised stage trains on: sft.target_text


@dataclass
class SupervisedSettings:
    """How long and how a supervised stage trains: what a recipe's stage sets and :class:`SFTConfig` extends."""

    epochs: float = setting(1.0, help="Supervised stages: epochs over the rows.", within=NON_NEGATIVE)
    max_steps: int = setting(
        -1,
        help="Supervised stages: optimiser steps (overrides epochs when > 0); a GRPO stage: use grpo_overrides.",
        within=Range(-1),
    )
    lr: float = setting(1e-4, help="Supervised stages: peak learning rate.", within=POSITIVE)
    batch_size: int = setting(8, help="Supervised stages: rows per optimiser step.", within=COUNT)
    freeze_audio_encoder: bool = setting(
        False,
        help="Supervised stages: keep the audio encoder fixed; its output for each clip is then computed once and "
        "reused.",
    )
    # TRL's SFTConfig turns it on by default; the small models here run faster without it.
    gradient_checkpointing: bool = setting(
        False, help="Supervised stages: recompute activations in the backward pass (less memory, ~30% slower steps)."
    )


@dataclass
class SFTConfig(SupervisedSettings):
    """Settings of one supervised stage, ``grpo-audio sft``'s or a recipe's (TRL ``SFTConfig`` fields, named as
    grpo-audio names them)."""

    target: str = setting("answer", help="What the loss is on (see target_text).", choices=TARGETS)
    warmup_ratio: float = setting(0.03, help="Fraction of the steps the learning rate warms up over.")
    lr_scheduler: str = setting("cosine", help="transformers scheduler name.")
    weight_decay: float = setting(0.0, help="AdamW weight decay.")
    max_grad_norm: float = setting(1.0, help="Gradient clipping norm.")
    seed: int = setting(0, help="Seed of the data order and dropout.")
    logging_steps: int = setting(10, help="Log the loss every N steps.")
    cache_audio: bool = setting(
        True,
        help="Compute each clip's log-mel features (and, with the encoder frozen, its encoder output) once, not "
        "every epoch (audio_cache.py; 1.5 MB of features per 30 s window, plus the encoder output).",
    )
    score_labels_only: bool = setting(
        True,
        help="TRL's fused LM head projects only the positions with a label, on every device (TRL does so only where "
        "it runs Triton kernels); the same loss and gradients, less compute where most positions are audio.",
    )


@dataclass
class StageConfig(SupervisedSettings):
    """One stage of a recipe; each training stage starts from the previous stage's model."""

    name: str = setting(help="Stage name (its folder under output_dir); required.")
    kind: str = setting(help="What the stage does.", choices=STAGE_KINDS)
    data: str = setting(
        "",
        help="Manifest for the stage ('synthetic:NAME' = the recipe's synthetic NAME.jsonl); text_pretrain, sft and "
        "cold_start take several, comma-separated.",
    )
    replay: str = setting(
        "",
        help="Manifests (comma-separated) whose rows are trained on too, each on its chain of thought and answer "
        "where it has a chain, on its answer otherwise. SFT stages: replay_ratio x as many as the stage's own, drawn "
        "with the recipe's seed (a cold start on chains alone overwrites the direct answers sft taught). GRPO "
        "stages: data.replay, grpo.replay_rows a step at weight grpo.replay_coef (set in grpo_overrides).",
    )
    replay_ratio: float = setting(
        1.0, help="SFT stages: replayed rows per row of the stage's own data.", within=NON_NEGATIVE
    )
    grpo_overrides: dict[str, Any] = setting(
        help="GRPO stage: dotted overrides of the recipe's run settings, e.g. {train.max_steps: 20}.", factory=dict
    )
    evaluate: bool = setting(
        True,
        help="Evaluate the stage's model on the held-out split after it (false: the report shows the stage without "
        "numbers, e.g. where a model still answers at chance); not for a stage the sampled evaluation runs after "
        "(eval.samples_at), nor for an 'eval' stage.",
    )


@dataclass
class CorpusConfig:
    """The synthetic music-theory corpus (``data/synthetic.py``): how many clips, drawn from which labels."""

    n: int = setting(400, help="Training clips.", within=COUNT)
    n_eval: int = setting(100, help="Held-out clips.", within=NON_NEGATIVE)
    n_rl: int = setting(
        0,
        help="Clips of their own for the GRPO prompts (rl.jsonl), unseen in SFT (0: the training clips).",
        within=NON_NEGATIVE,
    )
    seed: int = setting(0, help="Corpus seed.", within=NON_NEGATIVE)
    chord_qualities: list[str] = setting(
        help="Chord qualities the chord clips draw from (default: all seven: major, minor, diminished, augmented, "
        "dominant/major/minor seventh).",
        factory=list,
    )
    tempo_step: int = setting(4, help="Tempo grid step in BPM over 64-160 (4: 25 tempi; 16: 7 tempi).", within=COUNT)
    registers: list[int] = setting(
        help="MIDI notes of the C that pitched clips are built up from, one drawn per clip (default: 48, 60, 72; "
        "C2-C6 allowed). Notes from C5 (72) up are resolved by the Whisper front end without overtones.",
        factory=list,
    )
    answer_formats: list[str] = setting(
        help="How multiple-choice rows ask for the answer, one drawn per row: 'letter' (the choice's letter) and "
        "'text' (its text), as `grpo-audio eval` asks a benchmark (default: both).",
        factory=lambda: list(ANSWER_FORMATS),
    )

    def label_space(self, prefix: str = "synthetic.") -> LabelSpace:
        """The corpus's ``data.synthetic.LabelSpace``; a bad value raises, naming the field (under ``prefix``)."""
        optional = {"chord_qualities": tuple(self.chord_qualities), "registers": tuple(self.registers)}
        try:
            return LabelSpace(tempo_step=self.tempo_step, **{k: v for k, v in optional.items() if v})
        except ValueError as e:
            raise ConfigError(f"{prefix}{e}") from None


def checked_answer_formats(formats: list[str], prefix: str = "synthetic.") -> tuple[str, ...]:
    """A corpus's ``answer_formats``: one or more of ``ANSWER_FORMATS``, else ``ConfigError`` naming the field."""
    if not formats or any(f not in ANSWER_FORMATS for f in formats):
        raise ConfigError(f"{prefix}answer_formats: {list(formats)}: choose one or more of {list(ANSWER_FORMATS)}")
    return tuple(formats)


@dataclass
class SyntheticConfig(CorpusConfig):
    """The synthetic music-theory corpus a recipe can generate for itself."""

    enabled: bool = setting(False, help="Generate the corpus into OUTPUT_DIR/data before the stages.")


@dataclass
class FinalEvalConfig:
    """One more evaluation file the recipe's last model is scored on, asked as ``grpo-audio eval`` asks it."""

    data: str = setting(
        help="A benchmark file in any layout `grpo-audio eval` reads (MMAU, MMAR, MuChoMusic, a manifest), or "
        "'synthetic:eval_mmau.json' (the held-out synthetic questions as an MMAU test-mini file)."
    )
    answer_format: str = setting(
        "letter", help="What the prompts ask for: the choice's letter or its text.", choices=ANSWER_FORMATS
    )
    think: bool = setting(False, help="The prompts also ask for <think> reasoning, then an <answer> block.")
    max_rows: int = setting(0, help="Score the file's first N questions only (0 = all).", within=NON_NEGATIVE)


@dataclass
class EvalSettings:
    """How a model is evaluated on a file (greedy): what `grpo-audio eval` and the recipe's evaluations share."""

    data: str = setting("synthetic:eval", help="Eval manifest (or 'synthetic:eval').")
    max_rows: int = setting(0, help="Evaluate the first N rows only (0 = all).", within=NON_NEGATIVE)
    max_new_tokens: int = setting(128, help="Completion length cap at evaluation.", within=COUNT)
    engine: str = setting("hf", help="Engine for evaluation (greedy decoding).", choices=ENGINES)
    batch_size: int = setting(
        HF_BATCH_SIZE,
        help="The hf engine's prompts per generate call (greedy and sampled; a sampled prompt's k completions go "
        "together); vLLM schedules its own batches.",
        within=COUNT,
    )
    answer_format: str = setting(
        "letter",
        help="What a benchmark file's prompts ask for: the choice's letter or its text (MMAU's and MMAR's scorers "
        "credit the text); also how a bare token that is both a letter and a choice's text is read.",
        choices=ANSWER_FORMATS,
    )


@dataclass
class RecipeEvalConfig(EvalSettings):
    """Evaluation after each training stage."""

    samples: int = setting(
        0,
        help="k: also sample k completions per eval prompt at the rollout temperature, for the sampled reward and "
        "pass@1 / pass@k with 95% bootstrap intervals, and GRPO stages' paired difference from the stage before "
        "(eval/sampled.py); 0 skips it.",
        within=NON_NEGATIVE,
    )
    base: bool = setting(True, help="Evaluate the base model too, before the first stage (the report's 'base' row).")
    samples_at: str = setting(
        "grpo",
        help="Stages with the sampled evaluation (eval.samples): 'grpo', each GRPO stage and the stage it starts "
        "from (what the paired difference compares), or 'all'.",
        choices=("grpo", "all"),
    )
    final: list[FinalEvalConfig] = setting(
        help="Files the last stage's model is also scored on (greedy, as `grpo-audio eval`): the report's table "
        "'The last model on other evaluation files'.",
        factory=list,
    )


@dataclass
class RecipeConfig(RunConfig):
    """A recipe: stages (sft -> cold_start -> grpo -> eval) run in order from one YAML.

    It is a GRPO run's config (``RunConfig``: model, lora, data, rollout, grpo, train, rewards, which every GRPO stage
    starts from) plus the recipe's own settings. Each GRPO stage's run takes ``data.train`` and ``data.replay`` from
    the stage (``stages[i].data``, ``stages[i].replay``) and ``data.eval`` from ``eval.data``: a recipe that sets
    them is refused (``recipe.checks.check_recipe_data``); the rest of ``data`` applies to every GRPO stage.
    """

    tiny_model: str = setting(
        "",
        help="Build a tiny checkpoint of model.family of this size as the base model ('' = use model.path).",
        choices=("", *SIZES),
    )
    standardize_audio: bool = setting(
        True,
        help="With tiny_model: rescale the fresh projector so the audio embeddings of up to 200 training clips "
        "(the first audio stage's data) have mean 0 and variance 1 per channel (recipe.calibrate).",
    )
    audio_cache_gb: float = setting(
        4.0,
        help="Memory for the log-mel features and frozen-encoder outputs every stage shares (audio_cache.py; a 30 s "
        "window's features take 1.5 MB).",
        within=NON_NEGATIVE,
    )
    synthetic: SyntheticConfig = setting(help="Synthetic corpus generation.", factory=SyntheticConfig)
    eval: RecipeEvalConfig = setting(help="Evaluation after each training stage.", factory=RecipeEvalConfig)
    stages: list[StageConfig] = setting(help="The stages, in order.", factory=list)

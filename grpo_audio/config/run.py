"""The schema of a GRPO run (``grpo-audio train``): :class:`RunConfig` and its sections, one dataclass each, and the
checks a run's settings need beyond their types (:func:`check_parallel`, :func:`check_model_path`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..audio import LONG_AUDIO
from ..data.schema import BAD_ROWS
from ..errors import ConfigError
from ..models import FAMILIES
from ..rewards.registry import ON_ERROR
from .fields import (
    COUNT,
    DTYPES,
    ENGINES,
    FRACTION,
    IS_MODES,
    LOSS_TYPES,
    MASTER_DTYPES,
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY_BELOW_1,
    SCALE_REWARDS,
    SHARE,
    STRATEGIES,
    Range,
    setting,
)


@dataclass
class ModelConfig:
    """Which checkpoint to train and how to load it."""

    path: str = setting(help="Model directory (save_pretrained layout) or hub id; required.")
    family: str = setting(help="Model family adapter; required.", choices=tuple(FAMILIES))
    dtype: str = setting(
        "float32",
        help="The dtype the model computes in everywhere: training, supervised stages, evaluation and the rollout "
        "engine (precision.py).",
        choices=DTYPES,
    )
    master_dtype: str = setting(
        "float32",
        help="The dtype trained weights and AdamW's state are kept in. float32: a bfloat16 / float16 model is loaded "
        "in float32 and computes in model.dtype (torch.autocast; FSDP2 gathers in it), so that small updates land. "
        "model: kept in model.dtype (pure bf16, less memory; warned at start, since at lr 1e-6 an update rounds to "
        "nothing for almost every weight).",
        choices=MASTER_DTYPES,
    )
    attn_implementation: str = setting(
        "sdpa", help="transformers attention kernel.", choices=("sdpa", "eager", "flash_attention_2")
    )
    trust_remote_code: bool = setting(False, help="Allow code from the checkpoint directory to run (off by default).")
    freeze_audio_encoder: bool = setting(
        False,
        help="Keep the audio encoder's weights fixed; its output for each clip is then computed once and reused "
        "(audio_cache.py).",
    )
    freeze_projector: bool = setting(False, help="Keep the audio-to-text projector's weights fixed.")
    gradient_checkpointing: bool = setting(
        False,
        help="Recompute each decoder layer's and encoder block's activations in the backward pass to save memory "
        "(both logprob paths support it).",
    )


@dataclass
class LoraConfig:
    """Optional LoRA adapters (peft) on the language model."""

    enabled: bool = setting(False, help="Train LoRA adapters instead of the full model.")
    r: int = setting(16, help="LoRA rank.", within=COUNT)
    alpha: int = setting(32, help="LoRA scaling numerator (scale = alpha / r).", within=POSITIVE)
    dropout: float = setting(0.0, help="Dropout on the LoRA branch.", within=PROBABILITY_BELOW_1)
    target_modules: list[str] = setting(
        help="Module name suffixes that get adapters.",
        factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )


@dataclass
class DataConfig:
    """Where the rows come from and what happens to bad or over-long ones."""

    train: str = setting("", help="Training manifest (JSONL) or dataset path.")
    eval: str = setting("", help="Held-out manifest used for evaluation; empty disables evaluation.")
    train_tasks: list[str] = setting(
        help="Train on the rows of these tasks only (a row's `task`, e.g. [chord, key]); empty: every row.",
        factory=list,
    )
    replay: str = setting(
        "",
        help="Supervised manifests (comma-separated) replayed beside the policy loss with weight grpo.replay_coef "
        "(PPO-ptx's mix; replay.py): each row trained on its chain of thought and answer, else on its answer (or "
        "caption).",
    )
    bad_rows: str = setting("raise", help="What to do with rows that fail validation.", choices=BAD_ROWS)
    long_audio: str = setting(
        "truncate",
        help="Audio longer than the family's limit: cut it (counted warning) or reject the row.",
        choices=LONG_AUDIO,
    )
    max_audio_seconds: float = setting(
        0.0, help="Override the family's audio length limit; 0 uses the family's.", within=NON_NEGATIVE
    )


@dataclass
class RolloutConfig:
    """How completions are sampled."""

    engine: str = setting("vllm", help="Generation engine.", choices=ENGINES)
    max_new_tokens: int = setting(256, help="Completion length cap.", within=COUNT)
    temperature: float = setting(1.0, help="Sampling temperature.", within=NON_NEGATIVE)
    top_p: float = setting(1.0, help="Nucleus sampling mass.", within=FRACTION)
    top_k: int = setting(-1, help="Top-k sampling; -1 (or 0) disables it.", within=Range(-1))
    gpu_memory_utilization: float = setting(
        0.3,
        help="vLLM's memory fraction (of the GPU, or of the NUMA node's RAM on CPU, where 0.9 fails).",
        within=FRACTION,
    )
    tensor_parallel_size: int = setting(1, help="vLLM tensor-parallel degree for rollouts.", within=COUNT)
    max_model_len: int = setting(
        4096, help="vLLM context length (prompt with audio tokens + completion).", within=COUNT
    )
    enforce_eager: bool = setting(True, help="Skip CUDA-graph capture in vLLM (faster start, slower decode).")


@dataclass
class GRPOConfig:
    """The algorithm's knobs (see loss.py / advantages.py for the maths)."""

    num_generations: int = setting(8, help="G: completions sampled per prompt (the group).", within=Range(2))
    beta: float = setting(
        0.0,
        help="KL coefficient to the reference policy (k3 estimator); 0 loads no reference model.",
        within=NON_NEGATIVE,
    )
    epsilon: float = setting(
        0.2,
        help="Lower clip range of the importance ratio (gmpo: of its log, the paper uses 0.4; cispo, sapo: unused).",
        within=NON_NEGATIVE,
    )
    epsilon_high: float = setting(
        0.2,
        help="Upper clip range (DAPO clip-higher uses e.g. 0.28; gmpo: of the log ratio; cispo: see cispo_max_ratio, "
        "which TRL calls epsilon_high; sapo: unused).",
        within=NON_NEGATIVE,
    )
    loss_type: str = setting(
        "dapo",
        help="Policy loss and its aggregation (loss.py): the GRPO family, or CISPO, SAPO and GMPO.",
        choices=LOSS_TYPES,
    )
    cispo_max_ratio: float = setting(
        5.0, help="cispo: upper bound of the detached importance weight (ScaleRL's epsilon_max).", within=POSITIVE
    )
    sapo_temperature_pos: float = setting(
        1.0, help="sapo: gate temperature for positive advantages (arXiv 2511.20347).", within=POSITIVE
    )
    sapo_temperature_neg: float = setting(
        1.05, help="sapo: gate temperature for zero and negative advantages.", within=POSITIVE
    )
    scale_rewards: str = setting(
        "group",
        help="Advantage normalisation: group std (GRPO), batch std, or none (Dr. GRPO).",
        choices=SCALE_REWARDS,
    )
    num_iterations: int = setting(1, help="mu: optimisation passes over each batch of rollouts.", within=COUNT)
    shared_prefix: bool = setting(
        True, help="Logprob passes run each prompt and its audio once per group (false: per sample, the reference)."
    )
    std_floor: float = setting(
        0.0, help="Lower bound on the reward std used to scale advantages.", within=NON_NEGATIVE
    )
    negative_weight: float = setting(
        1.0,
        help="Factor on negative advantages (1: GRPO; 0: successes only, positive-sample reinforcement, which "
        "sharpens the policy; arXiv 2506.01347).",
        within=NON_NEGATIVE,
    )
    dynamic_sampling: bool = setting(False, help="Drop groups with equal rewards and refill from new prompts (DAPO).")
    replay_coef: float = setting(
        0.0,
        help="Weight of the replayed rows' mean token negative log-likelihood (data.replay) in each update; 0: none.",
        within=NON_NEGATIVE,
    )
    replay_rows: int = setting(
        8,
        help="Rows of data.replay per step over all processes (the number of processes must divide it).",
        within=COUNT,
    )
    max_resample_rounds: int = setting(
        2, help="Extra rollout rounds dynamic sampling may spend per step.", within=NON_NEGATIVE
    )
    is_mode: str = setting(
        "token_truncate",
        help="Rollout/trainer importance-sampling correction.",
        choices=IS_MODES,
    )
    is_cap: float = setting(2.0, help="Upper bound of the importance-sampling ratio.", within=POSITIVE)
    is_ratio_band: list[float] = setting(
        help="[low, high]: warn when a step's mean importance-sampling ratio (trainer vs rollout engine, before "
        "truncation) leaves this band: the two no longer compute the same distribution.",
        factory=lambda: [0.8, 1.25],
    )
    reward_on_error: str = setting(
        "raise",
        help="A reward that raises or returns bad values: stop, or count and use 0 / drop it.",
        choices=ON_ERROR,
    )


@dataclass
class RewardSpec:
    """One reward function: a registry name or a dotted path, its weight and its settings."""

    name: str = setting(help="Name in grpo_audio.rewards.REWARDS, or 'package.module:function'; required.")
    weight: float = setting(1.0, help="Weight in the total reward.")
    kwargs: dict[str, Any] = setting(help="Settings passed to the reward's factory.", factory=dict)
    tasks: list[str] = setting(
        help="Row tasks the reward applies to (e.g. [caption]); other rows get None. Empty: all rows.", factory=list
    )


@dataclass
class TrainConfig:
    """Optimisation schedule and bookkeeping."""

    lr: float = setting(1e-6, help="Peak learning rate.", within=POSITIVE)
    max_steps: int = setting(100, help="Number of optimiser steps.", within=COUNT)
    prompts_per_step: int = setting(
        8,
        help="Prompts per step over all processes (each sampled G times); each process takes an equal share, so "
        "the number of processes must divide it.",
        within=COUNT,
    )
    warmup_ratio: float = setting(0.03, help="Fraction of steps with linear warm-up (paper: 0.03).", within=SHARE)
    lr_scheduler: str = setting("cosine", help="Learning-rate schedule.", choices=("cosine", "linear", "constant"))
    max_grad_norm: float = setting(1.0, help="Gradient clipping norm.", within=POSITIVE)
    micro_batch_size: int = setting(
        8, help="Completions per forward/backward; gradients accumulate over the whole rollout batch.", within=COUNT
    )
    weight_decay: float = setting(0.0, help="AdamW weight decay.", within=NON_NEGATIVE)
    eval_every: int = setting(0, help="Evaluate every N steps; 0 disables.", within=NON_NEGATIVE)
    eval_rows: int = setting(64, help="Rows of the eval set used per evaluation (0 = all).", within=NON_NEGATIVE)
    eval_temperature: float = setting(
        0.0, help="Sampling temperature at evaluation (0 = greedy).", within=NON_NEGATIVE
    )
    eval_generations: int = setting(
        1,
        help="Completions per eval prompt (TRL's num_generations_eval); the eval metrics average over them. With "
        "eval_temperature = rollout.temperature this estimates the reward the policy earns as it samples.",
        within=COUNT,
    )
    samples_per_eval: int = setting(
        8, help="Sample completions written to samples.jsonl per evaluation.", within=NON_NEGATIVE
    )
    save_every: int = setting(0, help="Checkpoint every N steps; 0 saves only at the end.", within=NON_NEGATIVE)
    keep_last: int = setting(2, help="Number of checkpoints kept.", within=COUNT)
    resume: str = setting(
        "auto",
        help="Resume from this run's newest complete checkpoint ('auto'), a checkpoint path, or 'never' (a new run).",
    )
    overwrite: bool = setting(
        False,
        help="Let a new run start in an output_dir holding another run's checkpoints, removing them (otherwise it "
        "is refused, naming them).",
    )
    max_skipped_steps: int = setting(
        3,
        help="A step whose loss or gradient norm is NaN/Inf is skipped (no update, no sync, no checkpoint); this "
        "many in a row stop the run with an error naming the step.",
        within=NON_NEGATIVE,
    )


@dataclass
class ParallelConfig:
    """How several processes (torchrun) share the policy: ``parallel.py``."""

    strategy: str = setting(
        "ddp",
        help="none: one process; ddp: every process holds the whole model; fsdp2: parameters, gradients and "
        "optimiser state sharded per decoder layer / encoder block (torch fully_shard).",
        choices=STRATEGIES,
    )
    compute_dtype: str = setting(
        "",
        help="fsdp2: gather parameters in this dtype for compute, reduce gradients in float32 (mixed precision); "
        "empty: the weights' own dtype.",
        choices=("", *DTYPES),
    )
    cpu_offload: bool = setting(
        False, help="fsdp2: keep sharded parameters, gradients and optimiser state in CPU memory."
    )


@dataclass
class RunConfig:
    """A GRPO run: the top-level schema of a training YAML."""

    output_dir: str = setting(help="Where checkpoints, metrics and plots go; required.")
    seed: int = setting(0, help="Seed for sampling, data order and initialisation.", within=NON_NEGATIVE)
    model: ModelConfig = setting(help="Model to train.", factory=ModelConfig)
    lora: LoraConfig = setting(help="Optional LoRA adapters.", factory=LoraConfig)
    data: DataConfig = setting(help="Training and evaluation data.", factory=DataConfig)
    rollout: RolloutConfig = setting(help="Completion sampling.", factory=RolloutConfig)
    grpo: GRPOConfig = setting(help="Algorithm settings.", factory=GRPOConfig)
    train: TrainConfig = setting(help="Optimisation and bookkeeping.", factory=TrainConfig)
    parallel: ParallelConfig = setting(help="Several processes: DDP or FSDP2.", factory=ParallelConfig)
    rewards: list[RewardSpec] = setting(help="Reward functions and weights.", factory=list)


def check_model_path(path: str, key: str = "model.path") -> None:
    """``path`` is a model folder (``save_pretrained`` layout, with its ``config.json``); nothing is fetched from a
    hub at run time. Raises ``ConfigError`` naming ``key`` otherwise."""
    if not (Path(path) / "config.json").is_file():
        why = "no such folder" if not Path(path).exists() else "no config.json in it"
        raise ConfigError(f"{key}={path!r}: not a model folder ({why}); give a local checkpoint directory")


def check_parallel(cfg: RunConfig, world_size: int | None = None) -> None:
    """What a run's ``parallel`` and batch settings need from the processes it is launched on (``world_size``,
    torchrun's by default), checked before anything loads.

    Raises:
        ConfigError: see ``parallel.check_settings``; a batch that does not split over the processes; dynamic
            sampling on several processes; a replay weight without replay data, or replay data without a weight.
    """
    from ..parallel import check_settings, launched_processes  # imported when checked: it imports torch

    world = launched_processes() if world_size is None else world_size
    try:
        check_settings(cfg.parallel.strategy, cfg.parallel.compute_dtype, cfg.parallel.cpu_offload)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if cfg.train.prompts_per_step % world:
        raise ConfigError(f"train.prompts_per_step={cfg.train.prompts_per_step} does not split over {world} processes")
    if cfg.grpo.dynamic_sampling and world > 1:
        # Refilled groups differ per process, and DDP and FSDP2 need the same passes on every process.
        raise ConfigError("grpo.dynamic_sampling supports one process only for now")
    replay = [spec for spec in cfg.data.replay.split(",") if spec.strip()]
    if cfg.grpo.replay_coef > 0 and not replay:
        raise ConfigError(f"grpo.replay_coef={cfg.grpo.replay_coef}: data.replay names no manifest to replay")
    if cfg.data.replay.strip() and cfg.grpo.replay_coef == 0:
        raise ConfigError(f"data.replay={cfg.data.replay!r}: grpo.replay_coef is 0, so no row of it would be trained")
    if cfg.grpo.replay_coef > 0 and cfg.grpo.replay_rows % world:
        raise ConfigError(f"grpo.replay_rows={cfg.grpo.replay_rows} does not split over {world} processes")

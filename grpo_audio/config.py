"""Structured configuration: nested dataclasses, loaded from YAML plus ``key=value`` overrides with omegaconf.

The YAML files mirror these dataclasses exactly. Loading goes through omegaconf's structured configs, so an
unknown key, a value of the wrong type or a missing required field fails at load time with a
:class:`ConfigError` that names the key and, for unknown keys, the valid ones. Fields whose value is one of a
fixed set declare ``choices`` in their metadata, and numbers with a natural range (a fraction, a count, a rate)
declare it as a :class:`Range` (``within``); both are checked the same way, in every schema. A file that is not
valid YAML fails naming the file and line; ``key=`` (nothing after the '=') sets a text or list field to its empty
value.

Every field carries a one-line ``help`` string (``grpo-audio config-help`` prints them all).

Usage::

    cfg = load_config("examples/music_flamingo/tiny.yaml", ["grpo.num_generations=4", "train.lr=1e-5"])
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from .advantages import SCALE_REWARDS
from .audio import LONG_AUDIO
from .data.schema import BAD_ROWS
from .data.synthetic import LabelSpace
from .errors import UserError
from .loss import IS_MODES, LOSS_TYPES
from .models import FAMILIES
from .models.tiny import SIZES
from .parallel import STRATEGIES, check_settings, launched_processes
from .rewards.matching import ANSWER_FORMATS
from .rewards.registry import ON_ERROR, check_reward_spec
from .rollout import ENGINES, HF_BATCH_SIZE

T = TypeVar("T")


DTYPES = ("float32", "bfloat16", "float16")
MASTER_DTYPES = ("float32", "model")


class ConfigError(UserError, ValueError):
    """A configuration could not be loaded: the message names the offending key."""


@dataclass(frozen=True)
class Range:
    """The values a number may take: from ``low`` to ``high`` (None: unbounded), each end included unless open.

    >>> FRACTION, 0.0 in FRACTION, 1.0 in FRACTION, str(COUNT)
    (Range('(0, 1]'), False, True, '>= 1')
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        return self.side(value) is None

    def side(self, value: float) -> str | None:
        """'below' or 'above' for a value outside the range, None inside."""
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return "below"
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return "above"
        return None

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"

    def __repr__(self) -> str:
        return f"Range({str(self)!r})"


NON_NEGATIVE = Range(0)
POSITIVE = Range(0, low_open=True)
COUNT = Range(1)
FRACTION = Range(0, 1, low_open=True)  # a share that cannot be nothing: memory, nucleus mass
SHARE = Range(0, 1)
PROBABILITY_BELOW_1 = Range(0, 1, high_open=True)  # dropout: 1 would drop everything


def setting(
    default: Any = MISSING,
    help: str = "",
    choices: tuple[str, ...] | None = None,
    factory: Any = None,
    within: Range | None = None,
) -> Any:
    """A dataclass field of a config schema, with its help string (and optional fixed choices, or the range of a
    number) in its metadata; ``MISSING`` (the default) makes it required. ``load_config`` checks both."""
    meta: dict[str, Any] = {"help": help}
    if choices is not None:
        meta["choices"] = choices
    if within is not None:
        meta["range"] = within
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


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
    epsilon: float = setting(0.2, help="Lower clip range of the importance ratio.", within=NON_NEGATIVE)
    epsilon_high: float = setting(0.2, help="Upper clip range (DAPO clip-higher uses e.g. 0.28).", within=NON_NEGATIVE)
    loss_type: str = setting("dapo", help="Loss aggregation.", choices=LOSS_TYPES)
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


def _unknown_key_message(node_cls: type | None, full_key: str, key: str) -> str:
    """``node_cls`` is the dataclass the unknown ``key`` was found in (None if not known)."""
    valid = [f.name for f in dataclasses.fields(node_cls)] if node_cls is not None else []
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"unknown config key '{full_key}'.{hint} Valid keys here: {', '.join(valid)}."


def _node_class(schema: type, full_key: str) -> type | None:
    node_cls: type | None = schema
    for part in re.sub(r"\[\d+\]", "", full_key).split(".")[:-1]:
        node_cls = _resolve_field_type(node_cls, part) if node_cls is not None else None
    return node_cls


def _resolve_field_type(cls: type, name: str) -> type | None:
    hints = _type_hints(cls)
    t = hints.get(name)
    if t is not None and dataclasses.is_dataclass(t):
        return t
    origin_args = getattr(t, "__args__", None)
    if origin_args and dataclasses.is_dataclass(origin_args[0]):  # list[RewardSpec]
        return origin_args[0]
    return None


def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_values(obj: Any, prefix: str = "") -> None:
    """Each field's value against its ``choices`` and ``range``, recursing into sections and lists of them."""
    if isinstance(obj, list):
        for i, item in enumerate(obj):
            check_values(item, f"{prefix}[{i}]")
        return
    if not dataclasses.is_dataclass(obj):
        return
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}.{f.name}" if prefix else f.name
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(f"config key '{key}' = {value!r} is not one of: {', '.join(choices)}.")
        within = f.metadata.get("range")
        if within is not None and (side := within.side(value)):
            raise ConfigError(f"config key '{key}' = {value!r} is {side} its range, {within}.")
        check_values(value, key)


def to_object(cfg: DictConfig, schema: type[T]) -> T:
    """Turn a merged omegaconf node into the dataclass instance, translating omegaconf's errors."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"missing required config key(s): {', '.join(missing)}.")
    try:
        obj = OmegaConf.to_object(cfg)
    except MissingMandatoryValue as e:  # pragma: no cover - caught by missing_keys above
        raise ConfigError(f"missing required config key '{e.full_key}'.") from None
    check_values(obj)
    return obj  # type: ignore[return-value]


def _check_keys(schema: type, data: Any, source: str, prefix: str = "") -> None:
    """Find unknown keys ourselves, with their full path: omegaconf loses the path inside list items; and a
    true/false setting given anything but true or false (omegaconf would read 2 as true, 0 and "off" as false)."""
    if not isinstance(data, dict):
        return
    valid = {f.name for f in dataclasses.fields(schema)}
    hints = _type_hints(schema)
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in valid:
            raise ConfigError(f"{source}: {_unknown_key_message(schema, full, str(key))}")
        if hints[key] is bool and not isinstance(value, bool):
            raise ConfigError(f"{source}: config key '{full}' has the wrong type: {value!r} is not true or false")
        sub = _resolve_field_type(schema, key)
        if sub is None:
            continue
        if isinstance(value, list):
            for i, item in enumerate(value):
                _check_keys(sub, item, source, f"{full}[{i}].")
        else:
            _check_keys(sub, value, source, f"{full}.")


def merge_config(schema: type, base: DictConfig, other: DictConfig | ListConfig, source: str) -> DictConfig:
    """``other`` merged into ``base`` (a structured config of ``schema``); errors name the key and ``source``."""
    _check_keys(schema, OmegaConf.to_container(other), source)
    try:
        return OmegaConf.merge(base, other)  # type: ignore[return-value]
    except ConfigKeyError as e:
        node = _node_class(schema, e.full_key)
        raise ConfigError(f"{source}: {_unknown_key_message(node, e.full_key, str(e.key))}") from None
    except ValidationError as e:
        raise ConfigError(f"{source}: config key '{e.full_key}' has the wrong type: {e.msg.splitlines()[0]}") from None
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"{source}: config key '{key}': {str(e).splitlines()[0]}") from None


_LIST_ITEM = re.compile(r"\[\d+\]|(?:^|\.)\d+(?:\.|$)")  # stages[1].epochs or stages.1.epochs


def set_list_item(schema: type, cfg: DictConfig, override: str, source: str) -> None:
    """Apply one ``key=value`` override whose key goes through an item of a list (``stages[1].epochs=2``, or
    ``stages.1.epochs=2``) to ``cfg`` (a structured config of ``schema``), in place: the value is read as YAML, as
    every override's is, and checked against the field's type.

    Raises:
        ConfigError: the index is outside the list, a key is unknown (with the valid keys), or the value has the
            wrong type; the message names the key and ``source``.
    """
    key, text = override.split("=", 1)
    parts = re.sub(r"\[(\d+)\]", r".\1", key).split(".")
    if parts[-1].isdigit():
        raise ConfigError(f"{source}: config key '{key}': set a list item's fields one by one ({key}.FIELD=VALUE)")
    node: Any = cfg
    for depth, part in enumerate(parts[:-1]):
        if part.isdigit():
            if not isinstance(node, ListConfig) or int(part) >= len(node):
                where = ".".join(parts[:depth])
                size = len(node) if isinstance(node, ListConfig) else 0
                raise ConfigError(f"{source}: config key '{key}': '{where}' has {size} items, no item {part}")
            node = node[int(part)]
        elif isinstance(node, DictConfig) and part in node:
            node = node[part]
        else:
            break  # OmegaConf.update names the unknown key below
    leaf = re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", ".".join(parts))  # stages[1].epochs
    value = _override_value(schema, leaf, text, source)
    node_cls = _node_class(schema, leaf)
    if node_cls is not None:  # unknown keys and true/false settings as a YAML file's are checked
        _check_keys(node_cls, {parts[-1]: value}, source, leaf[: len(leaf) - len(parts[-1])])
    try:
        OmegaConf.update(cfg, ".".join(parts), value, merge=True)
    except (ConfigKeyError, ConfigAttributeError) as e:
        message = _unknown_key_message(_node_class(schema, e.full_key), key, str(e.key))
        raise ConfigError(f"{source}: {message}") from None
    except ValidationError as e:
        raise ConfigError(f"{source}: config key '{key}' has the wrong type: {e.msg.splitlines()[0]}") from None


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    schema: type[T] = RunConfig,  # type: ignore[assignment]
) -> T:
    """Load a YAML file (optional) and ``key=value`` overrides against a dataclass schema.

    Args:
        path: YAML file mirroring ``schema``; None starts from the schema's defaults.
        overrides: dot-list overrides, e.g. ``["grpo.beta=0.04", "model.path=/ckpt"]``.
        schema: the top-level dataclass (``RunConfig`` for a GRPO run).

    Returns:
        An instance of ``schema``.

    Raises:
        ConfigError: unknown key (with the valid keys), wrong type, missing required field, a value outside
            a field's choices, or a reward that does not exist or does not take its ``kwargs``; the message names
            the key.
    """
    cfg: DictConfig = OmegaConf.structured(schema)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        cfg = merge_config(schema, cfg, _read_yaml(path), str(path))
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"overrides must be key=value, got: {', '.join(bad)}")
        items = [o for o in overrides if _LIST_ITEM.search(o.split("=", 1)[0])]
        plain = [o for o in overrides if o not in items]
        if plain:
            cfg = merge_config(schema, cfg, _read_overrides(schema, plain, "command line"), "command line")
        for override in items:
            set_list_item(schema, cfg, override, "command line")
    obj = to_object(cfg, schema)
    _check_rewards(obj)
    return obj


def _read_yaml(path: Path) -> DictConfig:
    """A config file's settings; a file that is not YAML, or not a mapping of keys, fails naming the file (and the
    line and column of the fault)."""
    try:
        data = OmegaConf.load(path)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML: {_yaml_problem(e)}") from e
    except OSError as e:  # omegaconf's word for a file holding a single value
        raise ConfigError(f"{path}: cannot be read as a config: {e}") from e
    if not isinstance(data, DictConfig):
        raise ConfigError(f"{path}: a config file is a mapping of keys (key: value), not a list")
    return data


def _yaml_problem(e: yaml.YAMLError) -> str:
    """What a YAML parser says is wrong, on one line ("found duplicate key seed", "did not find expected ',' ...")."""
    problem, context = getattr(e, "problem", None), getattr(e, "context", None)
    if problem is None:
        return str(e).splitlines()[0]
    return f"{context}: {problem}" if context else problem


def _read_overrides(schema: type, overrides: list[str], source: str) -> DictConfig:
    """``key=value`` overrides as one config node, each value read by :func:`_override_value`."""
    node = OmegaConf.create()
    for override in overrides:
        key, text = override.split("=", 1)
        OmegaConf.update(node, key, _override_value(schema, key, text, source), merge=True)
    return node


_EMPTY: dict[type, Any] = {str: "", list: []}


def _override_value(schema: type, key: str, text: str, source: str) -> Any:
    """The value of the override ``key=text``, read as YAML as omegaconf reads it, except that ``key=`` (nothing
    after the '=', which YAML reads as null and no field takes) sets a text or list field to its empty value.

    Raises:
        ConfigError: the text is not valid YAML, or ``key=`` for a field that has no empty value (a number, a flag,
            a mapping, whose overrides merge into it).
    """
    if not text.strip():
        node = _node_class(schema, key)
        hint = _type_hints(node).get(re.sub(r"\[\d+\]", "", key).split(".")[-1]) if node is not None else None
        origin = typing.get_origin(hint) or hint
        if origin in _EMPTY:
            return type(_EMPTY[origin])()
        if hint is not None:
            raise ConfigError(f"{source}: config key '{key}' needs a value ({getattr(hint, '__name__', hint)})")
        return None  # an unknown key: named as one when it is merged
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist([f"value={text}"]))["value"]
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: config key '{key}': {text!r} is not valid YAML: {_yaml_problem(e)}") from e


def _check_rewards(cfg: Any) -> None:
    """Each reward spec's name and settings, checked against the reward's factory now rather than in the run."""
    for i, spec in enumerate(getattr(cfg, "rewards", None) or []):
        try:
            check_reward_spec(spec.name, dict(spec.kwargs))
        except ValueError as e:
            raise ConfigError(f"rewards[{i}]: {e}") from None


def help_of(schema: type, name: str) -> str:
    """The help string of ``schema``'s field ``name`` (for a command-line flag that sets the same thing)."""
    return next(f.metadata["help"] for f in dataclasses.fields(schema) if f.name == name)


def describe(schema: type = RunConfig, prefix: str = "") -> list[str]:
    """One line per field, ``key (type, default): help [choices]`` (or its range: ``[>= 1]``, ``[in (0, 1]]``),
    recursing into nested sections."""
    lines: list[str] = []
    hints = _type_hints(schema)
    for f in dataclasses.fields(schema):
        key = f"{prefix}{f.name}"
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            lines.append(f"{key}: {f.metadata['help']}")
            lines.extend(describe(t, key + "."))
            continue
        if f.default is not dataclasses.MISSING and f.default is not MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "required"
        tname = getattr(t, "__name__", str(t))
        choices = f.metadata.get("choices")
        within = f.metadata.get("range")
        extra = f" [{' | '.join(choices)}]" if choices else ""
        if within is not None:  # [>= 1], [in (0, 1]]
            extra = f" [{within}]" if within.low is None or within.high is None else f" [in {within}]"
        lines.append(f"{key} ({tname}, {default}): {f.metadata['help']}{extra}")
        sub = _resolve_field_type(schema, f.name)
        if sub is not None:
            lines.extend(describe(sub, key + "[]."))
    return lines


STAGE_KINDS = ("text_pretrain", "sft", "cold_start", "grpo", "eval")


@dataclass
class SupervisedSettings:
    """How long and how a supervised stage trains: what a recipe's stage sets and ``sft.SFTConfig`` extends."""

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
        "(sampled_eval.py); 0 skips it.",
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
    starts from; ``data.train`` / ``data.eval`` / ``data.replay`` are set by each stage) plus the recipe's own
    settings.
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

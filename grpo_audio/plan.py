"""A memory plan: what one GPU holds during a GRPO run, per strategy, before anything is launched.

``grpo-audio plan CONFIG.yaml --gpus N --gpu-memory GB`` prints, for DDP, FSDP2 and FSDP2 with CPU offload, the
per-GPU memory of the policy's weights, gradients and AdamW state, the reference policy, the activations of one
micro-batch at the configured lengths, the logits, and the rollout engine's share, and says which fit.

How each term is counted:

- parameters are counted exactly on the model built on the meta device (no memory, no download): from
  ``model.path`` when it is a local checkpoint, else from the published shape of a known checkpoint
  (:data:`KNOWN_SHAPES`); trainable ones follow ``model.freeze_*`` and ``lora``;
- weights in ``model.dtype``; gradients the same; AdamW's two moments in the parameters' dtype (torch keeps them
  so); DDP keeps a second copy of the gradients in its communication buckets; FSDP2 divides parameters, gradients
  and optimiser state by N, and holds whole, while they compute, the root unit and two units (the one running and
  the one prefetched; ``parallel.shard_units``), in ``parallel.compute_dtype`` if set;
- activations: the tensors autograd saves, per token and layer, measured on transformers' Qwen2 decoder layer
  (10 h + 4 i + 2 h_kv + 2 head_dim values; sdpa attention, so no sequence-squared term) and on the audio encoder's
  block (9 h + 2 i), times the tokens of one micro-batch on the logprob path (shared prefix: the prompt once, then
  G completions attending to its keys; per sample: G prompt + completion sequences); under activation
  checkpointing each layer keeps its input only and one layer's activations exist again in the backward pass;
  one more layer's worth stands for the backward pass's working gradients;
- logits: the completions' logits over the vocabulary in ``model.dtype`` and three float32 copies (the float
  upcast, the filtered logits and the log-softmax) at the peak of ``logprobs._token_logprobs``;
- the engine: ``rollout.gpu_memory_utilization`` of the GPU, which vLLM takes for itself; with the transformers
  engine under FSDP2, the whole copy of the policy it samples from (``rollout/hf_engine.py``).

A strategy fits when its total is at most :data:`USABLE` of the GPU: the rest is for CUDA's context, NCCL's
buffers and the allocator's fragmentation.

It is a plan, not a measurement: the allocator's fragmentation, NCCL buffers and CUDA's context (about 0.5-1 GB)
come on top. ``tests/test_plan.py`` checks it against the measured peak of the bench-size model on the CPU.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import ConfigError, RunConfig
from .models import ModelFamily, family_of_checkpoint, get_family
from .models.base import TinySize
from .parallel import shard_units

GB = 1 << 30
USABLE = 0.95  # of a GPU's memory, for what the plan counts
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
WINDOW_SECONDS = 30.0  # the Whisper-style encoders read audio in 30 s windows
PROMPT_TEXT_TOKENS = 64  # chat template and question around the audio tokens
AUDIO_TOKENS_PER_SECOND = {"audio_flamingo3": 25, "music_flamingo": 25, "qwen2_audio": 25}

# The published shapes of the real checkpoints (their config.json), for a plan without a local copy.
_QWEN25_7B_WHISPER = TinySize(
    vocab_size=152064, text_hidden=3584, text_layers=28, text_heads=28, text_kv_heads=4, text_intermediate=18944,
    audio_hidden=1280, audio_layers=32, audio_heads=20, audio_intermediate=5120, max_position_embeddings=32768,
)  # fmt: skip
KNOWN_SHAPES: dict[str, TinySize] = {
    "nvidia/music-flamingo-2601-hf": _QWEN25_7B_WHISPER,
    "nvidia/audio-flamingo-3-hf": _QWEN25_7B_WHISPER,
    "Qwen/Qwen2-Audio-7B-Instruct": TinySize(
        vocab_size=156032,
        text_hidden=4096,
        text_layers=32,
        text_heads=32,
        text_kv_heads=32,
        text_intermediate=11008,
        audio_hidden=1280,
        audio_layers=32,
        audio_heads=20,
        audio_intermediate=5120,
        max_position_embeddings=8192,
    ),  # fmt: skip
}


@dataclass
class ModelShape:
    """Parameter counts and dimensions of a model, from its meta-device copy.

    Attributes:
        params: all parameters; ``trainable``: those the run trains (LoRA adapters only, with LoRA).
        lora: parameters LoRA adds (0 without it).
        root: parameters outside every FSDP2 unit (norms, projector, what stays whole); ``largest_unit``: the
            largest unit's.
        text: hidden, intermediate, layers, heads, kv heads, vocabulary of the language model.
        audio: hidden, intermediate, layers and positions per 30 s window of the audio encoder.
    """

    params: int
    trainable: int
    lora: int
    root: int
    largest_unit: int
    text: dict[str, int]
    audio: dict[str, int]


@dataclass
class StrategyPlan:
    """Per-GPU memory of one strategy, in bytes, and whether it fits."""

    strategy: str
    weights: float
    gradients: float
    optimizer: float
    reference: float
    activations: float
    logits: float
    engine: float

    @property
    def total(self) -> float:
        return (
            self.weights + self.gradients + self.optimizer + self.reference + self.activations + self.logits
        ) + self.engine


def model_shape(cfg: RunConfig) -> ModelShape:
    """The shape of ``cfg.model`` (local checkpoint or :data:`KNOWN_SHAPES`), with the run's trainable parameters.

    Raises:
        ConfigError: ``model.path`` is neither a local checkpoint nor a known checkpoint name, or a checkpoint of
            another family than ``model.family``.
    """
    family = get_family(cfg.model.family)
    with torch.device("meta"):
        model = family.model_class()(_config(cfg.model.path, family))
    text, audio = model.config.text_config, model.config.audio_config
    encoder = family.audio_encoder(model)
    keep_whole = (encoder,) if cfg.model.freeze_audio_encoder else ()
    units = [sum(p.numel() for p in m.parameters()) for _, m in shard_units(model, keep_whole)]
    params = sum(p.numel() for p in model.parameters())
    frozen = 0
    if cfg.model.freeze_audio_encoder:
        frozen += sum(p.numel() for p in encoder.parameters())
    if cfg.model.freeze_projector:
        frozen += sum(p.numel() for n, p in model.named_parameters() if n.startswith(family.projector_prefixes))
    lora = 0
    if cfg.lora.enabled:
        language_model = family.language_model(model)
        for name, module in language_model.named_modules():
            if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in cfg.lora.target_modules:
                lora += cfg.lora.r * (module.in_features + module.out_features)
    return ModelShape(
        params=params,
        trainable=lora if cfg.lora.enabled else params - frozen,
        lora=lora,
        root=params - sum(units),
        largest_unit=max(units, default=0),
        text={
            "hidden": text.hidden_size,
            "intermediate": text.intermediate_size,
            "layers": text.num_hidden_layers,
            "heads": text.num_attention_heads,
            "kv_heads": text.num_key_value_heads,
            "vocab": text.vocab_size,
        },
        audio={
            "hidden": audio.hidden_size,
            "intermediate": audio.intermediate_size,
            "layers": audio.num_hidden_layers,
            "positions": audio.max_source_positions,
        },
    )


def _config(path: str, family: type[ModelFamily]) -> Any:
    if (Path(path) / "config.json").is_file():
        from transformers import AutoConfig

        found = family_of_checkpoint(path)
        if found is not family:
            raise ConfigError(f"model.path '{path}' is a {found.name} checkpoint, but model.family is {family.name}")
        return AutoConfig.from_pretrained(path)
    if path in KNOWN_SHAPES:
        return family.tiny_config(KNOWN_SHAPES[path], defaultdict(int))
    raise ConfigError(
        f"model.path '{path}': no config.json there and not a known checkpoint ({', '.join(KNOWN_SHAPES)}); "
        "give a local checkpoint directory"
    )


def activation_bytes(cfg: RunConfig, shape: ModelShape, audio_seconds: float) -> tuple[float, float]:
    """(activations, logits) in bytes of one micro-batch at the configured lengths (see the module docstring)."""
    b = DTYPE_BYTES[cfg.parallel.compute_dtype or cfg.model.dtype]
    t, a = shape.text, shape.audio
    g, c = cfg.grpo.num_generations, cfg.rollout.max_new_tokens
    windows = math.ceil(audio_seconds / WINDOW_SECONDS)
    p = round(audio_seconds * AUDIO_TOKENS_PER_SECOND.get(cfg.model.family, 25)) + PROMPT_TEXT_TOKENS
    kv = t["hidden"] // t["heads"] * t["kv_heads"]
    per_token = 10 * t["hidden"] + 4 * t["intermediate"] + 2 * kv + 2 * (t["hidden"] // t["heads"])
    per_position = 9 * a["hidden"] + 2 * a["intermediate"]
    if cfg.grpo.shared_prefix:
        groups = max(1, cfg.train.micro_batch_size // g)
        passes = [groups * p, groups * g * c]  # tokens of the prompt pass, of the completions pass
        completions = groups * g
        prompt_keys = groups * g * p  # the prompt's keys and values, repeated for each completion
        clips = groups
    else:
        completions = max(1, min(cfg.train.micro_batch_size, g))
        passes = [completions * (p + c)]
        prompt_keys = 0
        clips = completions
    positions = clips * windows * a["positions"]
    if cfg.model.gradient_checkpointing:
        kept = sum(passes) * t["hidden"] * t["layers"] + positions * a["hidden"] * a["layers"]
        kept += 2 * (clips * p) * kv * t["layers"]  # the prompt's cache, kept for the completions pass
        layer = max(max(passes) * per_token + 2 * prompt_keys * kv, positions // max(1, a["layers"]) * per_position)
        again = 2 * layer  # one layer recomputed, and its gradients
    else:
        kept = sum(passes) * per_token * t["layers"] + positions * per_position * a["layers"]
        kept += 2 * prompt_keys * kv * t["layers"]
        again = max(passes) * per_token  # the backward pass's working gradients of one layer
    kept += positions * 4 * a["hidden"] + clips * windows * 128 * 2 * a["positions"]  # conv front end, features
    logits = completions * c * t["vocab"] * (b + 3 * 4)
    return (kept + again) * b, float(logits)


def plan_memory(cfg: RunConfig, gpus: int, gpu_memory_gb: float, audio_seconds: float = 30.0) -> list[StrategyPlan]:
    """Per-GPU memory of the run ``cfg`` on ``gpus`` GPUs for DDP, FSDP2 and FSDP2 with CPU offload.

    Args:
        cfg: the run (model, lora, lengths, micro-batch, checkpointing, dtype, engine share).
        gpus: N, the processes the policy is spread over.
        gpu_memory_gb: one GPU's memory, GiB (the engine's share is a fraction of it).
        audio_seconds: the longest clip of a prompt.

    Raises:
        ConfigError: fewer than one GPU, no memory, or no model shape (see :func:`model_shape`).
    """
    if gpus < 1:
        raise ConfigError(f"--gpus must be at least 1, got {gpus}")
    if gpu_memory_gb <= 0:
        raise ConfigError(f"--gpu-memory must be positive (GiB), got {gpu_memory_gb:g}")
    shape = model_shape(cfg)
    b = DTYPE_BYTES[cfg.model.dtype]
    bc = DTYPE_BYTES[cfg.parallel.compute_dtype or cfg.model.dtype]
    activations, logits = activation_bytes(cfg, shape, audio_seconds)
    engine = cfg.rollout.gpu_memory_utilization * gpu_memory_gb * GB if cfg.rollout.engine == "vllm" else 0.0
    # The transformers engine samples from the policy itself, or under FSDP2 (sharded) from a whole copy.
    copy = shape.params * b if cfg.rollout.engine == "hf" and gpus > 1 else 0.0
    reference = shape.params * b if cfg.grpo.beta and not cfg.lora.enabled else 0.0
    gathered = (shape.root + 2 * shape.largest_unit) * bc
    common = {"activations": activations, "logits": logits}
    plans = [
        StrategyPlan(
            "ddp",
            weights=shape.params * b,
            gradients=(2 if gpus > 1 else 1) * shape.trainable * b,  # DDP's buckets: only with several processes
            optimizer=2 * shape.trainable * b,
            reference=reference,
            engine=engine,
            **common,
        ),
        StrategyPlan(
            "fsdp2",
            weights=shape.params * b / gpus + gathered,
            gradients=shape.trainable * b / gpus + shape.largest_unit * bc,
            optimizer=2 * shape.trainable * b / gpus,
            reference=reference / gpus,
            engine=engine + copy,
            **common,
        ),
        StrategyPlan(
            "fsdp2+offload",
            weights=gathered,
            gradients=shape.largest_unit * bc,
            optimizer=0.0,
            reference=0.0,
            engine=engine + copy,
            **common,
        ),
    ]
    return plans


def plan_table(cfg: RunConfig, plans: list[StrategyPlan], gpus: int, gpu_memory_gb: float) -> str:
    """The plan as a table (GiB, or MiB for a model under 1 GiB a GPU), with what fits and the shape it was
    computed for."""
    shape = model_shape(cfg)
    unit, name = (GB, "GiB") if max(p.total for p in plans) >= GB else (1 << 20, "MiB")
    lines = [
        f"model {cfg.model.path} ({cfg.model.family}): {shape.params / 1e9:.2f} B parameters, "
        f"{shape.trainable / 1e9:.2f} B trained, {cfg.model.dtype}"
        + (", activation checkpointing" if cfg.model.gradient_checkpointing else "")
        + f"; {gpus} GPU(s) of {gpu_memory_gb:g} GiB; in {name} a GPU; fits: at most {USABLE:.0%} of the GPU",
        "",
        "| strategy | weights | gradients | optimizer | reference | activations | logits | engine | total | fits |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in plans:
        cells = [p.weights, p.gradients, p.optimizer, p.reference, p.activations, p.logits, p.engine, p.total]
        fits = "yes" if p.total <= USABLE * gpu_memory_gb * GB else "no"
        lines.append(f"| {p.strategy} | " + " | ".join(f"{x / unit:.1f}" for x in cells) + f" | {fits} |")
    return "\n".join(lines)

"""The policy a GRPO run trains, made from the loaded model, and the reference it is kept close to.

``prepare_policy`` freezes what the config keeps fixed (audio encoder, projector), puts LoRA adapters on the
language model (where the family adapter says it lives) and turns activation checkpointing on;
``reference_copy`` is the frozen copy the KL term compares with (none without a KL term, nor with LoRA, whose
reference is the policy with its adapters off).
"""

from __future__ import annotations

import copy
from typing import Any

from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model

from .config import LoraConfig, ModelConfig
from .logprobs import enable_checkpointing
from .models import ModelFamily


def prepare_policy(model: Any, family: type[ModelFamily], settings: ModelConfig, lora: LoraConfig) -> Any:
    """``model`` made ready to train, in train mode: the audio encoder's and the projector's weights fixed when
    ``settings`` says so, LoRA adapters on the language model's ``lora.target_modules`` (the model PEFT-wrapped),
    activation checkpointing with ``settings.gradient_checkpointing``."""
    for name, p in model.named_parameters():
        if settings.freeze_audio_encoder and name.startswith(family.audio_encoder_prefixes):
            p.requires_grad_(False)
        if settings.freeze_projector and name.startswith(family.projector_prefixes):
            p.requires_grad_(False)
    if lora.enabled:
        adapters = PeftLoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=family.lora_target_pattern(lora.target_modules),
        )
        model = get_peft_model(model, adapters)
    if settings.gradient_checkpointing:
        enable_checkpointing(model)
    model.train()
    return model


def reference_copy(policy: Any, beta: float, lora: bool) -> Any:
    """A frozen copy of ``policy`` in eval mode, the KL term's reference; None when ``beta`` is 0 (no KL term) or
    with ``lora`` (the reference is the base model: the policy with its adapters disabled)."""
    if beta == 0.0 or lora:
        return None
    ref = copy.deepcopy(policy).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref

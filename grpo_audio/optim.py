"""A GRPO run's optimiser and learning-rate schedule: AdamW over the trainable parameters, stepped once per
iteration over each batch (``grpo.num_iterations`` a step), with linear warm-up then the configured decay."""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import get_scheduler

from .config import ConfigError, TrainConfig


def build_optimizer(parameters: list[torch.nn.Parameter], train: TrainConfig, num_iterations: int) -> tuple[Any, Any]:
    """AdamW over the ``parameters`` that train, and its schedule over ``train.max_steps`` x ``num_iterations``
    optimiser steps (``train.warmup_ratio`` of them warming up).

    Raises:
        ConfigError: no parameter trains (every part frozen, or LoRA without targets).
    """
    trainable = [p for p in parameters if p.requires_grad]
    if not trainable:
        raise ConfigError("no trainable parameters: check model.freeze_* and lora settings")
    optimizer = torch.optim.AdamW(trainable, lr=train.lr, weight_decay=train.weight_decay)
    total = train.max_steps * num_iterations
    warmup = math.ceil(train.warmup_ratio * total)
    name = "constant_with_warmup" if train.lr_scheduler == "constant" else train.lr_scheduler
    return optimizer, get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total)

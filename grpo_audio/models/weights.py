"""Policy weights in the checkpoint layout both transformers and vLLM load, LoRA folded in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .base import ModelFamily


@torch.no_grad()
def checkpoint_state_dict(model: Any, family: type[ModelFamily]) -> dict[str, torch.Tensor]:
    """The model's weights under checkpoint names, with LoRA adapters folded in.

    For a PEFT model, each adapted layer's weight is ``W + delta`` computed on a copy (peft's
    ``get_delta_weight``); the model itself is never merged. In-place merge/unmerge (what TRL does) is not
    bit-exact in floating point, so the base weights would drift a little with every sync.
    """
    is_peft = hasattr(model, "get_base_model") and hasattr(model, "peft_config")
    base = model.get_base_model() if is_peft else model
    deltas: dict[str, torch.Tensor] = {}
    if is_peft:
        from peft.tuners.lora import LoraLayer

        for module_name, module in base.named_modules():
            if isinstance(module, LoraLayer):
                active = [a for a in module.active_adapters if a in module.lora_A]
                if active and not module.merged:
                    deltas[f"{module_name}.base_layer.weight"] = sum(module.get_delta_weight(a) for a in active)
    out = {}
    for name, tensor in base.state_dict().items():
        if "lora_" in name or ".original_module." in name:
            continue
        if name in deltas:
            tensor = tensor + deltas[name].to(tensor.dtype)
        name = name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
        out[family.to_checkpoint_key(name)] = tensor.detach().to("cpu").contiguous().clone()
    return out


def save_model_dir(model: Any, family: type[ModelFamily], processor: Any, out: str | Path) -> Path:
    """Write a directory that loads with transformers (``from_pretrained``) and with vLLM: config, generation
    config, processor files and one ``model.safetensors`` in the checkpoint layout (LoRA folded in)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = model.get_base_model() if hasattr(model, "get_base_model") and hasattr(model, "peft_config") else model
    base.config.save_pretrained(out)
    if getattr(base, "generation_config", None) is not None:
        base.generation_config.save_pretrained(out)
    if processor is not None:
        processor.save_pretrained(out)
    for old in out.glob("model*.safetensors*"):
        old.unlink()
    tensors = dict(sorted(checkpoint_state_dict(model, family).items()))
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    config["architectures"] = [family.model_class_name]
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out

"""Policy weights in the checkpoint layout both transformers and vLLM load, LoRA folded in."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..parallel import full_tensor
from .base import ModelFamily


@torch.no_grad()
def checkpoint_tensors(
    model: Any, family: type[ModelFamily], dtype: torch.dtype | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """The model's weights under checkpoint names, one whole CPU tensor at a time, LoRA adapters folded in; floating
    tensors in ``dtype`` when given (float32 master weights written for a bf16 engine or checkpoint).

    Under FSDP2 each tensor is gathered from its shards when it is reached (``parallel.full_state``), so at most one
    tensor (a LoRA layer: its weight and adapters) is whole at a time; every process must iterate to the end, in
    step. For a PEFT model, each adapted layer's weight is ``W + scale * B @ A`` computed on a copy (peft's
    ``get_delta_weight``, on the gathered adapters); the model itself is never merged. In-place merge/unmerge (what
    TRL does) is not bit-exact in floating point, so the base weights would drift a little with every sync.
    """
    is_peft = hasattr(model, "get_base_model") and hasattr(model, "peft_config")
    base = model.get_base_model() if is_peft else model
    lora_layers: dict[str, Any] = {}
    if is_peft:
        from peft.tuners.lora import LoraLayer

        lora_layers = {f"{n}.base_layer.weight": m for n, m in base.named_modules() if isinstance(m, LoraLayer)}
    state = dict(full_state_items(base))
    for name in list(state):
        if "lora_" in name or ".original_module." in name:
            continue
        tensor = state[name]()
        layer = lora_layers.get(name)
        if layer is not None and not layer.merged:
            for adapter in (a for a in layer.active_adapters if a in layer.lora_A):
                a = state[f"{name.removesuffix('base_layer.weight')}lora_A.{adapter}.weight"]()
                b = state[f"{name.removesuffix('base_layer.weight')}lora_B.{adapter}.weight"]()
                delta = (b.float() @ a.float()) * layer.scaling[adapter]
                tensor = tensor + (delta.T if layer.fan_in_fan_out else delta).to(tensor.dtype)
        name = name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
        tensor = tensor.detach().to("cpu")
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        yield family.to_checkpoint_key(name), tensor.contiguous().clone()


def full_state_items(module: Any) -> Iterator[tuple[str, Any]]:
    """(name, thunk) per state-dict entry: calling the thunk gathers that one tensor (a collective under FSDP2:
    every process calls the same thunks in the same order)."""
    for name, tensor in module.state_dict().items():
        yield name, (lambda t=tensor: full_tensor(t))


def checkpoint_state_dict(model: Any, family: type[ModelFamily]) -> dict[str, torch.Tensor]:
    """:func:`checkpoint_tensors` as one dict (the whole model in memory: for small models and tests)."""
    return dict(checkpoint_tensors(model, family))


def write_safetensors(
    tensors: Iterable[tuple[str, torch.Tensor]], out: str | Path, max_file_bytes: int = 2 << 30, write: bool = True
) -> list[Path]:
    """Write ``tensors`` into ``out`` as ``model.safetensors``, or, past ``max_file_bytes``, as
    ``model-0000i-of-0000n.safetensors`` files with a ``model.safetensors.index.json`` (the layout transformers and
    vLLM load), keeping at most one file's tensors in memory. ``write=False`` consumes the iterator (the gathering
    collectives) and writes nothing: the other processes of a sharded model.

    Returns:
        the files written.
    """
    out = Path(out)
    parts: list[Path] = []
    weight_map: dict[str, str] = {}
    chunk: dict[str, torch.Tensor] = {}
    size = total = 0

    def flush() -> None:
        nonlocal chunk, size
        if chunk and write:
            path = out / f".part-{len(parts):05d}.safetensors"
            save_file(dict(sorted(chunk.items())), str(path), metadata={"format": "pt"})
            weight_map.update({k: path.name for k in chunk})
            parts.append(path)
        chunk, size = {}, 0

    for name, tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if chunk and size + nbytes > max_file_bytes:
            flush()
        chunk[name] = tensor
        size += nbytes
        total += nbytes
    flush()
    if not write:
        return []
    if len(parts) == 1:
        final = [parts[0].rename(out / "model.safetensors")]
    else:
        names = {p.name: f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors" for i, p in enumerate(parts)}
        final = [p.rename(out / names[p.name]) for p in parts]
        index = {"metadata": {"total_size": total}, "weight_map": {k: names[v] for k, v in sorted(weight_map.items())}}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return final


def save_model_dir(
    model: Any,
    family: type[ModelFamily],
    processor: Any,
    out: str | Path,
    write: bool = True,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a directory that loads with transformers (``from_pretrained``) and with vLLM: config, generation
    config, processor files and the weights in the checkpoint layout (LoRA folded in; several files past 2 GiB),
    in ``dtype`` when given (the compute dtype of a run that keeps float32 master weights), else the weights' own.

    Under FSDP2 every process calls it (the weights are gathered tensor by tensor); only the one with ``write``
    (the main process) writes.
    """
    out = Path(out)
    base = model.get_base_model() if hasattr(model, "get_base_model") and hasattr(model, "peft_config") else model
    if write:
        out.mkdir(parents=True, exist_ok=True)
        base.config.save_pretrained(out)
        if getattr(base, "generation_config", None) is not None:
            base.generation_config.save_pretrained(out)
        if processor is not None:
            processor.save_pretrained(out)
        for old in out.glob("model*.safetensors*"):
            old.unlink()
    write_safetensors(checkpoint_tensors(model, family, dtype), out, write=write)
    if write:
        config = json.loads((out / "config.json").read_text())
        config["architectures"] = [family.model_class_name]
        if dtype is not None:
            config["dtype"] = str(dtype).removeprefix("torch.")
        (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out

"""Model families: one adapter per family (its transformers classes, prompt format, audio encoder and projector
names, checkpoint layout), the vLLM plugin for Music Flamingo, tiny local checkpoints and saving. It imports
nothing of data or training.

Adding a family is a checklist; a test holds each step for every registered family:

1. One module here with a ``ModelFamily`` subclass (``base.py``) and one line in ``FAMILIES``. It names the
   transformers model and processor classes and the architecture vLLM serves; the audio token, the text that
   stands for a clip and the processor's feature keys; where the language model, output head, audio encoder and
   projector live; the longest audio and ``audio_token_count`` (the processor's own arithmetic); a
   ``checkpoint_key_map`` from transformers' in-memory names to the layout vLLM loads (``(("^", ""),)`` where they
   already agree); and ``tiny_config`` (text head_dim 64 for vLLM's CPU attention, untied embeddings in both the
   top-level and the text config). ``tests/models/test_tiny.py`` checks the attributes, head_dim and tying;
   ``tests/models/test_checklist.py`` fails while ``tiny_config`` or ``audio_token_count`` is the base class's or
   the key map is empty.
2. ``grpo-audio tiny-model NAME OUT`` builds it locally: it loads in transformers with no missing or unexpected
   key, generates with audio, and the same seed gives the same bytes (``tests/models/test_tiny.py``).
3. Every family test runs over ``FAMILIES`` (``tests.conftest.FAMILY_NAMES``): vLLM against transformers
   logprobs to 1e-4, the audio token count vLLM places for every clip length (first and repeated requests),
   greedy decoding, weight sync (full and LoRA), the shared prefix against the per-sample path with and without
   activation checkpointing and with LoRA, the transformers engine, the audio caches, the collators and the
   sampled evaluation. A family that fails one is not done.
4. Its figures: ``benchmarks/family_figures.py --family NAME`` (parity, token counts) and
   ``benchmarks/logprob_pass.py --family NAME`` (the shared-prefix speed-up) fill its row of the families table
   in ``benchmarks/results.md``; the family, with its longest audio, goes in the README's families table and in
   ``docs/models.md``'s. ``tests/models/test_checklist.py`` reads all three (the row's parity at most 1e-4 and
   its speed-up given).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .audio_flamingo3 import AudioFlamingo3
from .base import ModelFamily, TinySize, unwrap_peft
from .music_flamingo import MusicFlamingo
from .qwen2_audio import Qwen2Audio

if TYPE_CHECKING:
    import torch

FAMILIES: dict[str, type[ModelFamily]] = {
    MusicFlamingo.name: MusicFlamingo,
    AudioFlamingo3.name: AudioFlamingo3,
    Qwen2Audio.name: Qwen2Audio,
}


def get_family(name: str) -> type[ModelFamily]:
    """The adapter registered under ``name``; a clear error lists the known families."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family '{name}'; known families: {', '.join(FAMILIES)}") from None


def family_of_architecture(architecture: str) -> type[ModelFamily]:
    """The adapter whose transformers class is ``architecture`` (as written in a checkpoint's config.json)."""
    for fam in FAMILIES.values():
        if fam.model_class_name == architecture:
            return fam
    raise ValueError(f"no model family serves architecture '{architecture}'; known families: {', '.join(FAMILIES)}")


@dataclass
class ModelSpec:
    """What :func:`load_policy` reads, for a checkpoint loaded outside a run's config (evaluation, benchmarks);
    a run's ``config.ModelConfig`` has the same fields."""

    path: str | Path
    family: str
    dtype: str = "float32"
    attn_implementation: str = "sdpa"
    trust_remote_code: bool = False


def load_policy(model: Any, path: str | Path | None = None, dtype: torch.dtype | None = None) -> Any:
    """The one way a model is loaded to train or evaluate: ``model.family``'s transformers class from ``path``
    (default ``model.path``), its parameters in ``dtype`` (default ``model.dtype``; trainers pass the master dtype,
    ``precision.precision_of``), with ``model.attn_implementation`` ('' = the class's default) and
    ``model.trust_remote_code``.

    Args:
        model: a ``config.ModelConfig`` (any object with those fields).

    Raises:
        ValueError: unknown family.
    """
    # transformers reads a dtype by its name too: the registry imports no torch (config, ``grpo-audio --help``).
    kwargs = {"dtype": dtype or model.dtype, "trust_remote_code": model.trust_remote_code}
    if model.attn_implementation:
        kwargs["attn_implementation"] = model.attn_implementation
    return get_family(model.family).model_class().from_pretrained(path or model.path, **kwargs)


def family_of_model(model: Any) -> type[ModelFamily]:
    """The adapter of a loaded transformers model (also PEFT-wrapped, or of a class derived from the family's, as
    FSDP2 derives one), from its class."""
    served = {fam.model_class_name: fam for fam in FAMILIES.values()}
    classes = type(unwrap_peft(model)).__mro__
    found = next((served[c.__name__] for c in classes if c.__name__ in served), None)
    if found is None:
        raise ValueError(f"no model family serves {classes[0].__name__}; known families: {', '.join(FAMILIES)}")
    return found


def family_of_checkpoint(model_dir: str | Path) -> type[ModelFamily]:
    """The adapter for a checkpoint directory, from the architecture in its ``config.json``."""
    config = Path(model_dir) / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"not a checkpoint directory (no config.json): {model_dir}")
    return family_of_architecture(json.loads(config.read_text())["architectures"][0])


__all__ = [
    "FAMILIES",
    "ModelFamily",
    "ModelSpec",
    "TinySize",
    "family_of_architecture",
    "family_of_checkpoint",
    "family_of_model",
    "get_family",
    "load_policy",
    "unwrap_peft",
]

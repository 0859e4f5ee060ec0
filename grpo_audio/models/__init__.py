"""Model-family adapters. Adding a family: one module with a ``ModelFamily`` subclass and one line below."""

from __future__ import annotations

from .audio_flamingo3 import AudioFlamingo3
from .base import ModelFamily, TinySize
from .music_flamingo import MusicFlamingo
from .qwen2_audio import Qwen2Audio

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


__all__ = ["FAMILIES", "ModelFamily", "TinySize", "family_of_architecture", "get_family"]

"""vLLM plugin entry point (``vllm.general_plugins``): registers the model architectures vLLM lacks.

vLLM calls :func:`register` in every process it starts, possibly several times; registration is lazy (a
module path), so nothing heavy is imported until vLLM builds the model.
"""

from __future__ import annotations

ARCHITECTURES = {
    "MusicFlamingoForConditionalGeneration": (
        "grpo_audio.models.vllm_music_flamingo:MusicFlamingoForConditionalGeneration"
    ),
}


def register() -> None:
    from vllm import ModelRegistry

    supported = set(ModelRegistry.get_supported_archs())
    for arch, path in ARCHITECTURES.items():
        if arch not in supported:
            ModelRegistry.register_model(arch, path)

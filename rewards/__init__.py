"""Reward functions for GRPO on audio-language models, importable as ``grpo_audio.rewards``.

Every reward has TRL's signature, ``f(prompts, completions, **columns) -> list[float | None]``, and depends on
nothing in the trainer.
"""

"""Music Flamingo (``nvidia/music-flamingo-2601-hf``, arXiv 2511.10289): Audio Flamingo 3 plus rotary time
embeddings (RoTE) on the encoder output and ``<|sound_bos|>``/``<|sound_eos|>`` around each clip's tokens.

Audio is cut into 30 s windows, up to 40 (20 minutes).
"""

from __future__ import annotations

from typing import Any

from .audio_flamingo3 import AudioFlamingo3
from .base import TinySize, qwen2_text_config


class MusicFlamingo(AudioFlamingo3):
    name = "music_flamingo"
    model_class_name = "MusicFlamingoForConditionalGeneration"
    processor_class_name = "MusicFlamingoProcessor"
    vllm_architecture = "MusicFlamingoForConditionalGeneration"
    audio_special_tokens = ("<sound>", "<|sound_bos|>", "<|sound_eos|>")
    max_audio_seconds = 1200.0
    audio_framing_tokens = 2  # <|sound_bos|> and <|sound_eos|> around each clip's <sound> tokens

    @classmethod
    def tiny_config(cls, size: TinySize, token_ids: dict[str, int]) -> Any:
        from transformers import MusicFlamingoConfig

        return MusicFlamingoConfig(
            audio_config=cls.audio_config(size),
            text_config=qwen2_text_config(size, token_ids),
            audio_token_id=token_ids["<sound>"],
            audio_bos_token_id=token_ids["<|sound_bos|>"],
            audio_eos_token_id=token_ids["<|sound_eos|>"],
            # The paper's RoTE uses a fifth of the encoder width; a quarter keeps the rotary width even for
            # the tiny encoders' power-of-two widths.
            rope_parameters={"rope_type": "default", "rope_theta": 1200.0, "partial_rotary_factor": 0.25},
            tie_word_embeddings=False,
        )

    @classmethod
    def processor_kwargs(cls) -> dict[str, Any]:
        return {
            "audio_token": "<sound>",
            "audio_bos_token": "<|sound_bos|>",
            "audio_eos_token": "<|sound_eos|>",
            "max_audio_len": int(cls.max_audio_seconds),
        }

"""Audio Flamingo 3 (``nvidia/audio-flamingo-3-hf``): Whisper-style encoder + MLP projector + Qwen2.

Audio is cut into 30 s windows (at most 20, i.e. 10 minutes); each window gives 750 ``<sound>`` tokens.
"""

from __future__ import annotations

from typing import Any

from .base import AF3_STYLE_KEY_MAP, ModelFamily, TinySize, qwen2_text_config, whisper_audio_tokens

WINDOW_SECONDS = 30  # the feature extractor's chunk_length


class AudioFlamingo3(ModelFamily):
    name = "audio_flamingo3"
    model_class_name = "AudioFlamingo3ForConditionalGeneration"
    processor_class_name = "AudioFlamingo3Processor"
    vllm_architecture = "AudioFlamingo3ForConditionalGeneration"
    audio_special_tokens = ("<sound>",)
    audio_token = "<sound>"
    audio_prompt_text = "<sound>"
    audio_feature_keys = ("input_features", "input_features_mask")
    audio_encoder_prefixes = ("model.audio_tower.",)
    projector_prefixes = ("model.multi_modal_projector.",)
    language_model_name = "model.language_model"
    lm_head_name = "lm_head"
    max_audio_seconds = 600.0
    checkpoint_key_map = AF3_STYLE_KEY_MAP

    @classmethod
    def audio_token_count(cls, seconds: float) -> int:
        # The processor keeps whole 30 s windows up to max_audio_len and counts the mask over all of them at once.
        windows = int(cls.max_audio_seconds // WINDOW_SECONDS)
        return whisper_audio_tokens(seconds, windows * WINDOW_SECONDS, cls.sampling_rate)

    @classmethod
    def audio_config(cls, size: TinySize) -> dict[str, Any]:
        return {
            "model_type": "audioflamingo3_encoder",
            "num_mel_bins": 128,
            "hidden_size": size.audio_hidden,
            "num_hidden_layers": size.audio_layers,
            "num_attention_heads": size.audio_heads,
            "intermediate_size": size.audio_intermediate,
            "max_source_positions": 1500,  # 30 s of 10 ms mel frames after the stride-2 conv
        }

    @classmethod
    def tiny_config(cls, size: TinySize, token_ids: dict[str, int]) -> Any:
        from transformers import AudioFlamingo3Config

        return AudioFlamingo3Config(
            audio_config=cls.audio_config(size),
            text_config=qwen2_text_config(size, token_ids),
            audio_token_id=token_ids["<sound>"],
            tie_word_embeddings=False,
        )

    @classmethod
    def processor_kwargs(cls) -> dict[str, Any]:
        return {"audio_token": "<sound>", "max_audio_len": int(cls.max_audio_seconds)}

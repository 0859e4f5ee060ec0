"""Qwen2-Audio (``Qwen/Qwen2-Audio-7B-Instruct``): Whisper-style encoder + linear projector + Qwen2.

The feature extractor pads or cuts every clip to 30 s (750 ``<|AUDIO|>`` tokens at most).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import AF3_STYLE_KEY_MAP, ModelFamily, TinySize, qwen2_text_config, whisper_audio_tokens


class Qwen2Audio(ModelFamily):
    name = "qwen2_audio"
    model_class_name = "Qwen2AudioForConditionalGeneration"
    processor_class_name = "Qwen2AudioProcessor"
    vllm_architecture = "Qwen2AudioForConditionalGeneration"
    audio_special_tokens = ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>")
    audio_token = "<|AUDIO|>"
    audio_prompt_text = "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    audio_feature_keys = ("input_features", "feature_attention_mask")
    audio_encoder_prefixes = ("model.audio_tower.",)
    projector_prefixes = ("model.multi_modal_projector.",)
    language_model_name = "model.language_model"
    lm_head_name = "lm_head"
    max_audio_seconds = 30.0
    checkpoint_key_map = AF3_STYLE_KEY_MAP

    @classmethod
    def audio_token_count(cls, seconds: float) -> int:
        # The feature extractor cuts every clip to its 30 s window.
        return whisper_audio_tokens(seconds, 30.0, cls.sampling_rate)

    @classmethod
    def tiny_config(cls, size: TinySize, token_ids: dict[str, int]) -> Any:
        from transformers import Qwen2AudioConfig

        return Qwen2AudioConfig(
            audio_config={
                "model_type": "qwen2_audio_encoder",
                "num_mel_bins": 128,
                "d_model": size.audio_hidden,
                "encoder_layers": size.audio_layers,
                "encoder_attention_heads": size.audio_heads,
                "encoder_ffn_dim": size.audio_intermediate,
                "max_source_positions": 1500,
            },
            text_config=qwen2_text_config(size, token_ids),
            audio_token_index=token_ids["<|AUDIO|>"],
            tie_word_embeddings=False,
        )

    @classmethod
    def processor_kwargs(cls) -> dict[str, Any]:
        return {"audio_token": "<|AUDIO|>", "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>"}

    @classmethod
    def process(cls, processor: Any, texts: list[str], audios: list[np.ndarray], **kwargs: Any) -> Any:
        # Unlike the Flamingo processors, Qwen2-Audio's pads text only when asked (it always pads audio to 30 s).
        kwargs.setdefault("padding", True)
        kwargs.setdefault("padding_side", "left")
        return super().process(processor, texts, audios, **kwargs)

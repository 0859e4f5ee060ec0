"""Music Flamingo in vLLM: vLLM's Audio Flamingo 3 model plus the rotary time embedding (RoTE).

vLLM (0.32) has no ``MusicFlamingoForConditionalGeneration``: it falls back to its Transformers backend, which
fails because transformers' ``get_audio_features`` needs ``input_ids`` to rebuild each window's timestamps.
Those timestamps only depend on each 30 s window's index within its audio clip, and vLLM's Audio Flamingo 3
processor already counts windows per clip (``chunk_counts``), so this model is vLLM's AF3 model with one more
step between the encoder and the projector: the rotary time embedding, mirroring
``transformers.models.musicflamingo.modeling_musicflamingo`` (``MusicFlamingoRotaryEmbedding`` and
``apply_rotary_time_emb``). Prompts get the ``<|sound_bos|>``/``<|sound_eos|>`` framing transformers' processor
puts around each clip's ``<sound>`` tokens.

Registered through vLLM's plugin entry point (``grpo_audio.models.vllm_plugin:register``), so
``vllm.LLM(model=<music flamingo checkpoint>)`` works once grpo-audio is installed.

``GRPO_AUDIO_MF_ROTE=0`` disables the time embedding (a debugging switch: the parity tests use it to show that
they detect a missing embedding).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
from torch import nn
from transformers import MusicFlamingoConfig, MusicFlamingoProcessor
from vllm.model_executor.models.audioflamingo3 import (
    AudioFlamingo3DummyInputsBuilder,
    AudioFlamingo3ForConditionalGeneration,
    AudioFlamingo3MultiModalProcessor,
    AudioFlamingo3ProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.processing.processor import PromptReplacement, PromptUpdate, PromptUpdateDetails

# Each encoder output row covers 4 mel frames (stride-2 conv, then 2x average pooling).
ENCODER_DOWNSAMPLING = 4


class RotaryTimeEmbedding(nn.Module):
    """Music Flamingo's rotary time embedding over encoder outputs, from the window count of each clip.

    For encoder row ``t`` of window ``w`` (0-based within its clip), with ``S`` rows per window, the timestamp
    is ``(w * S + t) * frame_step * 4`` seconds; the first half of the rotary channels turn with the window
    index, the second half with the row index, both scaled by the timestamp (as transformers computes them).
    """

    def __init__(self, config: MusicFlamingoConfig):
        super().__init__()
        rope = config.rope_parameters
        self.max_positions = float(rope["rope_theta"])  # transformers uses rope_theta as max_position_embeddings
        dim = int(config.audio_config.hidden_size * rope.get("partial_rotary_factor", 1.0))
        inv_freq = 1.0 / (rope["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.frame_step = float(config.audio_frame_step) * ENCODER_DOWNSAMPLING

    def forward(self, hidden_states: torch.Tensor, window_index: torch.Tensor) -> torch.Tensor:
        """Rotate ``hidden_states`` [W, S, D] where ``window_index`` [W] is each row's window within its clip."""
        _, seq_len, _ = hidden_states.shape
        inv_freq = self.inv_freq.to(hidden_states.device)
        positions = torch.arange(int(self.max_positions), device=inv_freq.device, dtype=inv_freq.dtype)
        position_angles = (positions / self.max_positions * (2 * math.pi)).unsqueeze(-1) * inv_freq
        position_angles = torch.repeat_interleave(position_angles, 2, dim=-1)[:seq_len]  # [S, dim]

        window_long = window_index.to(device=inv_freq.device, dtype=torch.long)
        window_index = window_long.to(inv_freq.dtype)
        window_freqs = torch.repeat_interleave((window_index / self.max_positions).unsqueeze(-1) * inv_freq, 2, -1)
        window_freqs, time_freqs = torch.broadcast_tensors(window_freqs[:, None, :], position_angles[None])
        freqs = torch.cat((window_freqs, time_freqs), dim=-1)  # [W, S, 2*dim]
        # Same operation order as transformers: the angles reach thousands of radians, so float32 rounding of
        # the timestamps shows in the output.
        frame_offsets = torch.arange(seq_len, device=inv_freq.device, dtype=torch.float32) * self.frame_step
        timestamps = window_long.unsqueeze(1) * seq_len * self.frame_step + frame_offsets  # [W, S] seconds
        freqs = freqs * (-timestamps * 2 * math.pi).to(freqs).unsqueeze(-1)
        return _apply_rotary(hidden_states, freqs.cos(), freqs.sin())


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x = x.reshape(*x.shape[:-1], -1, 2)
    x1, x2 = x.unbind(dim=-1)
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def _apply_rotary(hidden_states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    dtype = hidden_states.dtype
    h = hidden_states.to(torch.float64)
    cos, sin = cos.to(h), sin.to(h)
    rot = cos.shape[-1]
    rotated = h[..., :rot] * cos + _rotate_half(h[..., :rot]) * sin
    return torch.cat((rotated, h[..., rot:]), dim=-1).to(dtype)


def window_indices(chunk_counts: list[int], device: torch.device | None = None) -> torch.Tensor:
    """[sum(chunk_counts)] index of each window within its clip, e.g. [2, 1] -> [0, 1, 0]."""
    return torch.cat([torch.arange(int(c), device=device) for c in chunk_counts])


class MusicFlamingoProcessingInfo(AudioFlamingo3ProcessingInfo):
    def get_hf_config(self):
        return self.ctx.get_hf_config(MusicFlamingoConfig)

    def get_hf_processor(self, **kwargs: object):
        return self.ctx.get_hf_processor(MusicFlamingoProcessor, **kwargs)


class MusicFlamingoMultiModalProcessor(AudioFlamingo3MultiModalProcessor):
    """AF3's processor with each clip's audio tokens framed by ``<|sound_bos|>`` ... ``<|sound_eos|>``."""

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs) -> Sequence[PromptUpdate]:
        (base,) = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        processor = self.info.get_hf_processor(**hf_processor_mm_kwargs)
        bos, eos, audio = processor.audio_bos_token_id, processor.audio_eos_token_id, processor.audio_token_id

        def replacement(item_idx: int) -> PromptUpdateDetails:
            inner = base.replacement(item_idx).full
            return PromptUpdateDetails.select_token_id([bos, *inner, eos], embed_token_id=audio)

        return [PromptReplacement(modality="audio", target=base.target, replacement=replacement)]


@MULTIMODAL_REGISTRY.register_processor(
    MusicFlamingoMultiModalProcessor, info=MusicFlamingoProcessingInfo, dummy_inputs=AudioFlamingo3DummyInputsBuilder
)
class MusicFlamingoForConditionalGeneration(AudioFlamingo3ForConditionalGeneration):
    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.pos_emb = RotaryTimeEmbedding(self.config)
        self.use_rote = os.environ.get("GRPO_AUDIO_MF_ROTE", "1") != "0"

    def _process_audio_input(self, audio_input) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if audio_input.type == "audio_embeds":
            return super()._process_audio_input(audio_input)
        input_features, feature_attention_mask, chunk_counts = self._normalize_audio_feature_inputs(audio_input)
        hidden_states = self._encode_audio_features(input_features, feature_attention_mask)  # [W, S, D]
        if self.use_rote:
            hidden_states = self.pos_emb(hidden_states, window_indices(chunk_counts, hidden_states.device))
        audio_features = self.multi_modal_projector(hidden_states)
        return self._group_audio_embeddings(audio_features, feature_attention_mask, chunk_counts)

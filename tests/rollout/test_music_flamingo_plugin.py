"""grpo-audio's vLLM plugin for Music Flamingo: the rotary time embedding, and proof the parity test has teeth."""

from __future__ import annotations

import os

import pytest
import torch

from grpo_audio.models import get_family
from grpo_audio.models.vllm_music_flamingo import RotaryTimeEmbedding, window_indices
from tests.rollout.helpers import chord_clip, hf_logprobs, rows_for


def test_rotary_time_embedding_equals_transformers(tiny_checkpoint):
    """Our RoTE from window counts equals transformers' RoTE from input_ids, on clips of 2 windows and 1."""
    from transformers import MusicFlamingoConfig
    from transformers.models.musicflamingo.modeling_musicflamingo import (
        MusicFlamingoModel,
        apply_rotary_time_emb,
    )

    config = MusicFlamingoConfig.from_pretrained(tiny_checkpoint("music_flamingo"))
    hf = MusicFlamingoModel(config).eval()
    seq_len, dim = 750, config.audio_config.hidden_size
    post_lengths = torch.tensor([750, 375, 500])  # clip 0: windows 0 and 1; clip 1: one window
    audio = config.audio_token_id
    other = audio + 100
    input_ids = torch.tensor([[other] + [audio] * 1125 + [other] * 2, [other] * 2 + [audio] * 500 + [other] * 626])
    timestamps = hf._build_audio_timestamps(input_ids, post_lengths, seq_len)
    hidden = torch.randn(3, seq_len, dim)
    cos, sin = hf.pos_emb(timestamps, seq_len=seq_len)
    want = apply_rotary_time_emb(hidden, cos, sin)

    ours = RotaryTimeEmbedding(config)(hidden, window_indices([2, 1]))
    assert torch.allclose(ours, want, atol=1e-6)
    assert not torch.allclose(ours, RotaryTimeEmbedding(config)(hidden, window_indices([1, 1, 1])), atol=1e-3)


def test_parity_fails_without_the_time_embedding(tiny_checkpoint, monkeypatch):
    """The same teacher-forced parity check as the engine tests, with RoTE switched off in the plugin: the
    logprobs must disagree, so the parity test would catch a plugin that forgot the embedding."""
    from transformers import AutoProcessor

    from grpo_audio.rollout.vllm_engine import VLLMEngine

    family = get_family("music_flamingo")
    path = tiny_checkpoint(family.name)
    processor = AutoProcessor.from_pretrained(path)
    model = family.model_class().from_pretrained(path).eval()
    rows = rows_for([chord_clip(45.0), chord_clip(3.0, 330.0)])
    tok = processor.tokenizer
    comps = [tok("<answer>C major</answer>", add_special_tokens=False)["input_ids"]] * 2
    want = hf_logprobs(model, family, processor, rows, comps)

    monkeypatch.setenv("GRPO_AUDIO_MF_ROTE", "0")  # read by the engine's model when it is built
    engine = VLLMEngine(path, max_model_len=2048)
    try:
        got = engine.completion_logprobs(rows, comps)
    finally:
        engine.close()
    diffs = [(torch.tensor(g) - w).abs().max().item() for g, w in zip(got, want, strict=True)]
    assert max(diffs) > 1e-2, diffs
    assert os.environ["GRPO_AUDIO_MF_ROTE"] == "0"


def test_plugin_is_registered_through_the_entry_point():
    from importlib.metadata import entry_points

    eps = [ep for ep in entry_points(group="vllm.general_plugins") if ep.name == "grpo_audio"]
    assert eps and eps[0].value == "grpo_audio.models.vllm_plugin:register"
    from vllm import ModelRegistry

    eps[0].load()()
    assert "MusicFlamingoForConditionalGeneration" in ModelRegistry.get_supported_archs()
    with pytest.raises(ValueError):
        get_family("music_flamingo_v2")

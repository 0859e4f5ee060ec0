"""Tiny checkpoints: load in transformers, generate with audio, deterministic per seed."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open

from grpo_audio.models import FAMILIES, get_family
from grpo_audio.models.tiny import TINY_MARKER, build_tiny_model
from tests.conftest import FAMILY_NAMES, sine


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_loads_in_transformers_and_generates_with_audio(family, tiny_checkpoint):
    from transformers import AutoProcessor

    path = tiny_checkpoint(family)
    fam = get_family(family)
    processor = AutoProcessor.from_pretrained(path)
    assert type(processor).__name__ == fam.processor_class_name
    model, info = fam.model_class().from_pretrained(path, output_loading_info=True)
    # Every weight on disk is used and none is left at random init: the checkpoint layout is one transformers reads.
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    names = [n for n, _ in model.named_parameters()]
    assert any(n.startswith(fam.audio_encoder_prefixes) for n in names)
    assert any(n.startswith(fam.projector_prefixes) for n in names)
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        assert {fam.to_checkpoint_key(k) for k in model.state_dict()} == set(f.keys())

    prompt = fam.render_prompt(processor, fam.build_messages("Which chord is played?"))
    assert fam.count_audio_slots(prompt) == 1
    inputs = fam.process(processor, [prompt], [sine(2.0)])
    n_audio = int((inputs["input_ids"] == processor.tokenizer.convert_tokens_to_ids(fam.audio_token)).sum())
    assert n_audio == 50  # 2 s at 25 audio tokens per second after the conv stride and pooling
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_checkpoint_layout_is_the_one_vllm_loads(family, tiny_checkpoint):
    path = tiny_checkpoint(family)
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert not [k for k in keys if k.startswith("language_model.model.model.")]
    assert "language_model.lm_head.weight" in keys
    assert any(k.startswith("language_model.model.layers.0.") for k in keys)
    assert any(k.startswith("audio_tower.") for k in keys)
    config = json.loads((path / "config.json").read_text())
    # vLLM and transformers must agree on tying (DESIGN.md): both untied.
    assert config["tie_word_embeddings"] is False and config["text_config"]["tie_word_embeddings"] is False
    head_dim = config["text_config"]["hidden_size"] // config["text_config"]["num_attention_heads"]
    assert head_dim == 64  # what vLLM's CPU attention supports


def test_tokenizer_has_tags_and_family_tokens(tiny_checkpoint):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_checkpoint("music_flamingo"))
    for t in ("<think>", "</think>", "<answer>", "</answer>", "<sound>", "<|sound_bos|>", "<|im_end|>"):
        ids = tok.encode(t, add_special_tokens=False)
        assert len(ids) == 1, (t, ids)
    text = "<think>C, E and G: a C major triad.</think><answer>C major</answer>"
    assert tok.decode(tok.encode(text), skip_special_tokens=True) == text


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_same_seed_same_bytes_different_seed_different_weights(family, tmp_path):
    a = build_tiny_model(family, tmp_path / "a", seed=3)
    b = build_tiny_model(family, tmp_path / "b", seed=3)
    c = build_tiny_model(family, tmp_path / "c", seed=4)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


def test_a_folder_that_is_not_a_tiny_build_is_refused_and_kept(tmp_path, tiny_checkpoint):
    from grpo_audio.config import ConfigError

    notes = tmp_path / "runs" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("mine")
    trained = tmp_path / "trained"
    shutil.copytree(tiny_checkpoint("music_flamingo"), trained)
    (trained / TINY_MARKER).unlink()  # a checkpoint a run saved has no marker
    for out in (notes.parent, trained, notes):
        with pytest.raises(ConfigError, match="is not a tiny checkpoint built here"):
            build_tiny_model("audio_flamingo3", out)
    assert notes.read_text() == "mine" and (trained / "model.safetensors").is_file()
    # An earlier tiny build and an empty folder are replaced.
    again = build_tiny_model("qwen2_audio", shutil.copytree(tiny_checkpoint("music_flamingo"), tmp_path / "again"))
    assert json.loads((again / TINY_MARKER).read_text())["family"] == "qwen2_audio"
    (tmp_path / "empty").mkdir()
    assert (build_tiny_model("qwen2_audio", tmp_path / "empty") / TINY_MARKER).is_file()


def test_unknown_family_and_size_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="known families: music_flamingo"):
        build_tiny_model("whisper", tmp_path / "x")
    with pytest.raises(ValueError, match="choose one of: test, demo"):
        build_tiny_model("qwen2_audio", tmp_path / "x", size="huge")


def test_registry_adapters_declare_everything():
    for name, fam in FAMILIES.items():
        assert fam.name == name
        for attr in (
            "model_class_name",
            "processor_class_name",
            "vllm_architecture",
            "audio_token",
            "audio_feature_keys",
            "audio_encoder_prefixes",
            "projector_prefixes",
            "max_audio_seconds",
        ):
            assert getattr(fam, attr), (name, attr)
        fam.model_class()
        fam.processor_class()

"""The audio cache returns what the uncached code computes, bit for bit (log-mel batches; a frozen encoder's
loss and gradients), and computes each window once."""

from __future__ import annotations

import math

import pytest
import torch

from grpo_audio.audio_cache import AudioCache, CachedFeatureExtractor
from grpo_audio.data.collate import collate_prompts, collate_sequences
from grpo_audio.data.schema import Row
from grpo_audio.models import get_family
from tests.conftest import FAMILY_NAMES, sine


@pytest.mark.parametrize("family_name", FAMILY_NAMES)
def test_cached_batches_equal_uncached_ones(family_name, tiny_checkpoint, tmp_path):
    from transformers import AutoProcessor

    family = get_family(family_name)
    processor = AutoProcessor.from_pretrained(tiny_checkpoint(family_name))
    cached = AudioCache().features(processor)
    assert cached is not processor and not isinstance(processor.feature_extractor, CachedFeatureExtractor)
    # 45 s spans two 30 s windows for the Flamingos; a clip repeated in the batch is computed once.
    clips = [sine(2.0, 440), sine(45.0, 220), sine(3.5, 330), sine(2.0, 440)]
    rows = [Row(id=f"r{i}", prompt=f"Question {i}?", audio=f"clip{i}.wav") for i in range(len(clips))]
    reference = collate_prompts(family, processor, rows, clips)
    for _ in range(2):
        got = collate_prompts(family, cached, rows, clips)
        assert torch.equal(got.input_ids, reference.input_ids)
        assert got.audio.keys() == reference.audio.keys()
        for key in reference.audio:
            assert torch.equal(got.audio[key], reference.audio[key]), key
    fe = cached.feature_extractor
    # the feature extractor's windows: each clip, cut to the family's longest audio, in chunk_length pieces
    seconds = [min(len(c) / 16000, family.max_audio_seconds) for c in clips]
    windows = sum(math.ceil(s / fe.chunk_length) for s in seconds)
    assert fe.misses == windows - 1  # the repeated clip is one entry
    assert fe.hits == 2 * windows - fe.misses
    # The original processor still saves (the copy shares its tokenizer, not its extractor).
    processor.save_pretrained(tmp_path / "saved")
    assert AutoProcessor.from_pretrained(tmp_path / "saved").feature_extractor.chunk_length == fe.chunk_length


def test_cache_keeps_within_its_byte_budget(tiny_checkpoint):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_checkpoint("music_flamingo"))
    one_window = 128 * 3000 * 4 + 3000 * 4  # float32 features + int32 mask
    fe = CachedFeatureExtractor(processor.feature_extractor, AudioCache(max_bytes=2 * one_window))
    kwargs = {"sampling_rate": 16000, "return_tensors": "pt", "return_attention_mask": True, "padding": "max_length"}
    for freq in (200, 300, 400, 200):
        fe([sine(1.0, freq)], **kwargs)
    assert len(fe.cache) == 2 and fe.misses == 4  # 200 Hz was dropped before it came back
    assert fe.extractor([sine(1.0, 300)], **kwargs)["input_features"].shape == (1, 128, 3000)


def test_a_shared_store_serves_the_next_stage_and_only_the_same_front_end(tiny_checkpoint):
    from transformers import AutoProcessor

    family = get_family("music_flamingo")
    path = tiny_checkpoint("music_flamingo")
    store = AudioCache(1 << 30)
    clips = [sine(2.0, 440), sine(3.0, 220)]
    rows = [Row(id=f"r{i}", prompt="Q?", audio=f"c{i}.wav") for i in range(2)]
    first = store.features(AutoProcessor.from_pretrained(path))
    reference = collate_prompts(family, first, rows, clips)
    second = store.features(AutoProcessor.from_pretrained(path))
    got = collate_prompts(family, second, rows, clips)
    assert first.feature_extractor.misses == 2 and second.feature_extractor.misses == 0
    assert second.feature_extractor.hits == 2 and torch.equal(
        got.audio["input_features"], reference.audio["input_features"]
    )
    other = AutoProcessor.from_pretrained(path)
    other.feature_extractor.dither = 0.5  # a different front end setting: its own entries
    third = store.features(other)
    collate_prompts(family, third, rows, clips)
    assert third.feature_extractor.misses == 2 and len(store) == 4


def _loss_and_grads(model, inputs):
    model.zero_grad()
    loss = model(**inputs).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family_name", FAMILY_NAMES)
def test_cached_encoder_gives_the_same_loss_and_gradients(family_name, tiny_checkpoint):
    from transformers import AutoProcessor

    family = get_family(family_name)
    path = tiny_checkpoint(family_name)
    processor = AutoProcessor.from_pretrained(path)
    model = family.model_class().from_pretrained(path).train()
    clips = [sine(2.0, 440), sine(31.0 if family_name != "qwen2_audio" else 5.0, 220), sine(2.0, 440)]
    rows = [Row(id=f"r{i}", prompt="What is it?", audio=f"c{i}.wav") for i in range(3)]
    inputs = collate_sequences(family, processor, rows, clips, ["a sine", "a low sine", "a sine"]).model_inputs(True)
    encoder = family.audio_encoder(model)
    with pytest.raises(ValueError, match="trainable parameters"):
        with AudioCache().encoder(model, family):
            pass
    encoder.requires_grad_(False)
    reference = _loss_and_grads(model, inputs)
    with AudioCache().encoder(model, family) as cache:
        first = _loss_and_grads(model, inputs)
        second = _loss_and_grads(model, inputs)
    windows = next(iter(v for k, v in inputs.items() if k == "input_features")).shape[0]
    assert cache.misses == windows - 1 and cache.hits == windows + 1  # the repeated clip is computed once
    for got in (first, second):
        assert torch.equal(got[0], reference[0])
        assert got[1].keys() == reference[1].keys() and reference[1]
        for name, grad in reference[1].items():
            torch.testing.assert_close(got[1][name], grad, rtol=1e-5, atol=1e-7, msg=name)
    assert "forward" not in vars(encoder)  # the model is as it was outside the block


def test_a_shared_store_carries_outputs_to_the_next_stage_only_for_the_same_weights(tiny_checkpoint):
    from transformers import AutoProcessor

    family = get_family("music_flamingo")
    path = tiny_checkpoint("music_flamingo")
    processor = AutoProcessor.from_pretrained(path)
    rows = [Row(id=f"r{i}", prompt="What is it?", audio=f"c{i}.wav") for i in range(2)]
    inputs = collate_sequences(family, processor, rows, [sine(2.0, 440), sine(3.0, 220)], ["a", "b"]).model_inputs(
        True
    )
    store = AudioCache(1 << 30)

    def stage(model):
        family.audio_encoder(model).requires_grad_(False)
        with store.encoder(model, family) as cache:
            loss = model(**inputs).loss.detach()
        return cache, loss

    first, loss = stage(family.model_class().from_pretrained(path))
    assert first.misses == 2 and first.hits == 0 and len(store) == 2
    second, again = stage(family.model_class().from_pretrained(path))  # the next stage reloads the same weights
    assert second.misses == 0 and second.hits == 2 and torch.equal(again, loss)
    changed = family.model_class().from_pretrained(path)
    with torch.no_grad():
        next(family.audio_encoder(changed).parameters()).add_(0.01)
    third, _ = stage(changed)
    assert third.misses == 2 and third.hits == 0  # another encoder never reads the first one's outputs

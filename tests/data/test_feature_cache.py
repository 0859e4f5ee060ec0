"""The log-mel cache returns the feature extractor's own output, bit for bit, and computes each window once."""

from __future__ import annotations

import pytest
import torch

from grpo_audio.data.collate import collate_prompts
from grpo_audio.data.feature_cache import CachedFeatureExtractor, cache_features
from grpo_audio.data.schema import Row
from grpo_audio.models import get_family
from tests.conftest import sine


@pytest.mark.parametrize("family_name", ["music_flamingo", "qwen2_audio"])
def test_cached_batches_equal_uncached_ones(family_name, tiny_checkpoint, tmp_path):
    from transformers import AutoProcessor

    family = get_family(family_name)
    processor = AutoProcessor.from_pretrained(tiny_checkpoint(family_name))
    cached = cache_features(processor)
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
    windows = 5 if family_name == "music_flamingo" else 4
    assert fe.misses == windows - 1  # the repeated clip is one entry
    assert fe.hits == 2 * windows - fe.misses
    # The original processor still saves (the copy shares its tokenizer, not its extractor).
    processor.save_pretrained(tmp_path / "saved")
    assert AutoProcessor.from_pretrained(tmp_path / "saved").feature_extractor.chunk_length == fe.chunk_length


def test_cache_keeps_within_its_byte_budget(tiny_checkpoint):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_checkpoint("music_flamingo"))
    one_window = 128 * 3000 * 4 + 3000 * 4  # float32 features + int32 mask
    fe = CachedFeatureExtractor(processor.feature_extractor, max_bytes=2 * one_window)
    kwargs = {"sampling_rate": 16000, "return_tensors": "pt", "return_attention_mask": True, "padding": "max_length"}
    for freq in (200, 300, 400, 200):
        fe([sine(1.0, freq)], **kwargs)
    assert len(fe._store) == 2 and fe.misses == 4  # 200 Hz was dropped before it came back
    assert fe.extractor([sine(1.0, 300)], **kwargs)["input_features"].shape == (1, 128, 3000)


def test_a_shared_store_serves_the_next_stage_and_only_the_same_front_end(tiny_checkpoint):
    from transformers import AutoProcessor

    from grpo_audio.lru import LRUBytes

    family = get_family("music_flamingo")
    path = tiny_checkpoint("music_flamingo")
    store = LRUBytes(1 << 30)
    clips = [sine(2.0, 440), sine(3.0, 220)]
    rows = [Row(id=f"r{i}", prompt="Q?", audio=f"c{i}.wav") for i in range(2)]
    first = cache_features(AutoProcessor.from_pretrained(path), store=store)
    reference = collate_prompts(family, first, rows, clips)
    second = cache_features(AutoProcessor.from_pretrained(path), store=store)
    got = collate_prompts(family, second, rows, clips)
    assert first.feature_extractor.misses == 2 and second.feature_extractor.misses == 0
    assert second.feature_extractor.hits == 2 and torch.equal(
        got.audio["input_features"], reference.audio["input_features"]
    )
    other = AutoProcessor.from_pretrained(path)
    other.feature_extractor.dither = 0.5  # a different front end setting: its own entries
    third = cache_features(other, store=store)
    collate_prompts(family, third, rows, clips)
    assert third.feature_extractor.misses == 2 and len(store) == 4

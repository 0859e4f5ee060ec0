"""The frozen-encoder cache changes the time a step takes, not its loss or its gradients."""

from __future__ import annotations

import pytest
import torch

from grpo_audio.data.collate import collate_sequences
from grpo_audio.data.schema import Row
from grpo_audio.models import get_family
from grpo_audio.models.encoder_cache import audio_encoder, cached_encoder
from tests.conftest import sine


def _loss_and_grads(model, inputs):
    model.zero_grad()
    loss = model(**inputs).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family_name", ["music_flamingo", "audio_flamingo3", "qwen2_audio"])
def test_cached_encoder_gives_the_same_loss_and_gradients(family_name, tiny_checkpoint):
    from transformers import AutoProcessor

    family = get_family(family_name)
    path = tiny_checkpoint(family_name)
    processor = AutoProcessor.from_pretrained(path)
    model = family.model_class().from_pretrained(path).train()
    clips = [sine(2.0, 440), sine(31.0 if family_name != "qwen2_audio" else 5.0, 220), sine(2.0, 440)]
    rows = [Row(id=f"r{i}", prompt="What is it?", audio=f"c{i}.wav") for i in range(3)]
    inputs = collate_sequences(family, processor, rows, clips, ["a sine", "a low sine", "a sine"]).model_inputs(True)
    encoder = audio_encoder(model, family)
    with pytest.raises(ValueError, match="trainable parameters"):
        with cached_encoder(model, family):
            pass
    encoder.requires_grad_(False)
    reference = _loss_and_grads(model, inputs)
    with cached_encoder(model, family) as cache:
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

    from grpo_audio.lru import LRUBytes

    family = get_family("music_flamingo")
    path = tiny_checkpoint("music_flamingo")
    processor = AutoProcessor.from_pretrained(path)
    rows = [Row(id=f"r{i}", prompt="What is it?", audio=f"c{i}.wav") for i in range(2)]
    inputs = collate_sequences(family, processor, rows, [sine(2.0, 440), sine(3.0, 220)], ["a", "b"]).model_inputs(
        True
    )
    store = LRUBytes(1 << 30)

    def stage(model):
        audio_encoder(model, family).requires_grad_(False)
        with cached_encoder(model, family, store=store) as cache:
            loss = model(**inputs).loss.detach()
        return cache, loss

    first, loss = stage(family.model_class().from_pretrained(path))
    assert first.misses == 2 and first.hits == 0 and len(store) == 2
    second, again = stage(family.model_class().from_pretrained(path))  # the next stage reloads the same weights
    assert second.misses == 0 and second.hits == 2 and torch.equal(again, loss)
    changed = family.model_class().from_pretrained(path)
    with torch.no_grad():
        next(audio_encoder(changed, family).parameters()).add_(0.01)
    third, _ = stage(changed)
    assert third.misses == 2 and third.hits == 0  # another encoder never reads the first one's outputs

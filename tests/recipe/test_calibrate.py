"""Standardising a fresh projector: unit-variance audio embeddings, nothing else in the model changes."""

from __future__ import annotations

import pytest
import torch

from grpo_audio.data.schema import Row
from grpo_audio.models import get_family
from grpo_audio.recipe.calibrate import audio_embeddings, projector_output_layer, standardize_audio_embeddings
from tests.conftest import FAMILY_NAMES, sine


def _rows(n: int = 5) -> list[Row]:
    return [
        Row(id=f"r{i}", prompt="What is it?", audio=sine(1.0 + 0.5 * i, 110.0 * (i + 1)), sampling_rate=16000)
        for i in range(n)
    ]


@pytest.mark.parametrize("family_name", FAMILY_NAMES)
def test_audio_embeddings_come_out_standardised_and_the_rest_is_untouched(family_name, tiny_checkpoint):
    from transformers import AutoProcessor

    family = get_family(family_name)
    path = tiny_checkpoint(family_name)
    processor = AutoProcessor.from_pretrained(path)
    model = family.model_class().from_pretrained(path).eval()
    rows = _rows()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    text = processor.tokenizer("which chord is it", return_tensors="pt")
    with torch.no_grad():
        text_logits = model(**text).logits
    raw = audio_embeddings(model, family, processor, rows)

    spread = standardize_audio_embeddings(model, family, processor, rows)

    emb = audio_embeddings(model, family, processor, rows)
    assert emb.shape == raw.shape and spread["tokens"] == raw.shape[0]
    assert spread["std_max"] == pytest.approx(float(raw.std(0).max()), rel=1e-4)
    torch.testing.assert_close(emb.mean(0), torch.zeros(emb.shape[1]), atol=1e-4, rtol=0)
    torch.testing.assert_close(emb.std(0), torch.ones(emb.shape[1]), atol=1e-3, rtol=0)
    # Per channel, the new embeddings are the old ones shifted and scaled: an affine map of each channel.
    torch.testing.assert_close(emb, (raw - raw.mean(0)) / raw.std(0), atol=1e-3, rtol=1e-3)
    layer = projector_output_layer(model, family)
    names = {n for n, p in model.named_parameters() if p is layer.weight or p is layer.bias}
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == names and len(names) == 2
    with torch.no_grad():
        torch.testing.assert_close(model(**text).logits, text_logits, atol=0, rtol=0)


def test_embeddings_are_those_of_the_clips_valid_frames(tiny_checkpoint):
    """The pre-hook on the language model sees exactly the projector outputs of each clip's real frames
    (Music Flamingo's own ``get_audio_features`` drops the padding of the 30 s window)."""
    from transformers import AutoProcessor

    from grpo_audio.data.collate import collate_prompts

    family = get_family("music_flamingo")
    path = tiny_checkpoint("music_flamingo")
    processor = AutoProcessor.from_pretrained(path)
    model = family.model_class().from_pretrained(path).eval()
    rows = _rows(3)
    batch = collate_prompts(family, processor, rows, [r.load_audio(family).wave for r in rows])
    with torch.no_grad():
        reference = model.get_audio_features(
            batch.audio["input_features"], batch.audio["input_features_mask"], batch.input_ids
        ).pooler_output
    torch.testing.assert_close(audio_embeddings(model, family, processor, rows), reference)


def test_max_rows_and_std_and_an_empty_sample(tiny_checkpoint):
    from transformers import AutoProcessor

    family = get_family("audio_flamingo3")
    path = tiny_checkpoint("audio_flamingo3")
    processor = AutoProcessor.from_pretrained(path)
    model = family.model_class().from_pretrained(path)
    rows = _rows()
    first_two = audio_embeddings(model, family, processor, rows[:2]).shape[0]
    assert standardize_audio_embeddings(model, family, processor, rows, max_rows=2)["tokens"] == first_two
    standardize_audio_embeddings(model, family, processor, rows, std=0.5)
    emb = audio_embeddings(model, family, processor, rows)
    torch.testing.assert_close(emb.std(0), torch.full((emb.shape[1],), 0.5), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="at least one row"):
        standardize_audio_embeddings(model, family, processor, [])


def test_tiny_model_command_standardises_on_a_manifest(tmp_path, capsys):
    """``grpo-audio tiny-model ... --standardize-on M``: one row per clip of M, the checkpoint rewritten in place
    (and still loading)."""
    from transformers import AutoProcessor

    from grpo_audio.cli import main
    from grpo_audio.data.loaders import load_manifest
    from grpo_audio.data.synthetic import write_corpus

    skills = write_corpus(tmp_path / "data", n=5, seed=1)["skills"]  # 5 clips, 3 rows each
    out = tmp_path / "m"
    assert main(["tiny-model", "qwen2_audio", str(out), "--standardize-on", str(skills)]) == 0
    family = get_family("qwen2_audio")
    clips = list({row.audio: row for row in load_manifest(skills, family=family)}.values())
    model = family.model_class().from_pretrained(out)
    emb = audio_embeddings(model, family, AutoProcessor.from_pretrained(out), clips)
    assert f"standardised on {emb.shape[0]} frames" in capsys.readouterr().out
    torch.testing.assert_close(emb.std(0), torch.ones(emb.shape[1]), atol=1e-3, rtol=0)

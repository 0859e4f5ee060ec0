"""Collators: labels cover the target only; prompt, audio placeholders and padding are masked."""

from __future__ import annotations

import pytest
import torch

from grpo_audio.data.collate import IGNORE_INDEX, collate_prompts, collate_sequences
from grpo_audio.data.schema import Row
from grpo_audio.models import get_family
from tests.conftest import FAMILY_NAMES, sine


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_labels_mask_prompt_and_audio(family, tiny_checkpoint):
    from transformers import AutoProcessor

    fam = get_family(family)
    path = tiny_checkpoint(family)
    proc = AutoProcessor.from_pretrained(path)
    tok = proc.tokenizer
    rows = [Row(id="a", audio=None, prompt="Which chord is played?"), Row(id="b", audio=None, prompt="Key?")]
    clips = [sine(2.0), sine(5.0)]  # different audio lengths -> different prompt lengths -> padding
    targets = ["<think>C E G</think><answer>C major</answer>", "A minor"]
    batch = collate_sequences(fam, proc, rows, clips, targets)

    audio_ids = {tok.convert_tokens_to_ids(t) for t in fam.audio_special_tokens}
    assert batch.row_ids == ["a", "b"]
    for i, target in enumerate(targets):
        mask = batch.attention_mask[i].bool()
        ids, labels = batch.input_ids[i][mask], batch.labels[i][mask]
        plen = int(batch.prompt_lengths[i])
        target_ids = tok(target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert labels[plen:].tolist() == target_ids == ids[plen:].tolist()
        assert (labels[:plen] == IGNORE_INDEX).all()
        assert (batch.labels[i][~mask] == IGNORE_INDEX).all()
        is_audio = torch.tensor([t in audio_ids for t in ids.tolist()])
        assert is_audio.sum() >= 50 and (labels[is_audio] == IGNORE_INDEX).all()
        # positions restart at 0 on each row's first real token (left padding)
        assert batch.position_ids[i][mask].tolist() == list(range(int(mask.sum())))
    assert batch.attention_mask[0, 0] == 0  # the shorter row is left-padded

    prompts = collate_prompts(fam, proc, rows, clips)
    assert prompts.input_ids.shape[0] == 2 and prompts.prompts[0].count(fam.audio_token) == 1
    assert set(prompts.audio) == set(fam.audio_feature_keys)


def test_model_consumes_sequence_batch(tiny_checkpoint):
    """The batch is what the model takes: loss over labels equals the hand-computed mean target NLL."""
    from transformers import AutoProcessor

    fam = get_family("audio_flamingo3")
    path = tiny_checkpoint(fam.name)
    proc = AutoProcessor.from_pretrained(path)
    model = fam.model_class().from_pretrained(path).eval()
    rows = [Row(id="a", audio=None, prompt="Q1"), Row(id="b", audio=None, prompt="Question two")]
    batch = collate_sequences(fam, proc, rows, [sine(1.0), sine(3.0)], ["C major", "<answer>B</answer>"])
    with torch.no_grad():
        out = model(**batch.model_inputs(with_labels=True))
        logits = out.logits[:, :-1]
        labels = batch.labels[:, 1:]
        keep = labels != IGNORE_INDEX
        nll = -torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)[keep]
    assert torch.allclose(out.loss, nll.mean(), atol=1e-5)

"""The transformers engine: grouping, finish reasons, logprobs of the sampling distribution, batching."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoProcessor

from grpo_audio.models import get_family
from grpo_audio.rollout.base import PromptTooLongError, SamplingConfig
from grpo_audio.rollout.hf_engine import HFEngine, SeededSampler
from tests.conftest import FAMILY_NAMES
from tests.rollout.helpers import chord_clip, hf_logprobs, rows_for


@pytest.fixture(scope="module")
def af3(tiny_checkpoint):
    family = get_family("audio_flamingo3")
    path = tiny_checkpoint(family.name)
    return family, family.model_class().from_pretrained(path).eval(), AutoProcessor.from_pretrained(path)


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def each_family(request, tiny_checkpoint):
    family = get_family(request.param)
    path = tiny_checkpoint(family.name)
    return family, family.model_class().from_pretrained(path).eval(), AutoProcessor.from_pretrained(path)


def test_groups_logprobs_and_finish_reasons(each_family):
    family, model, processor = each_family
    rows = rows_for([chord_clip(2.0), chord_clip(40.0, 300.0), chord_clip(5.0, 150.0)])
    engine = HFEngine(model, processor, family, batch_size=2)
    batch = engine.generate(rows, n=3, sampling=SamplingConfig(max_new_tokens=4, temperature=0.7, seed=0))
    assert batch.row_index == [0, 0, 0, 1, 1, 1, 2, 2, 2] and batch.row_ids[3] == "r1"
    eos = processor.tokenizer.eos_token_id
    for ids, lps, reason in zip(batch.completion_ids, batch.logprobs, batch.finish_reason, strict=True):
        assert len(ids) == len(lps) and reason == ("stop" if ids[-1] == eos else "length")
    # logprobs are those of the sampling distribution: softmax(logits / temperature)
    model_t = TemperatureScaled(model, 0.7)
    want = hf_logprobs(
        model_t, family, processor, [rows[i] for i in batch.row_index], batch.completion_ids, exclude_audio_tokens=True
    )
    for got, w in zip(batch.logprobs, want, strict=True):
        assert (torch.tensor(got) - w).abs().max() < 1e-4


def test_batching_does_not_change_results(each_family):
    """Rows of mixed clip lengths (2 windows and 1 window for the Flamingos) split across generate calls: audio
    windows stay with their rows."""
    family, model, processor = each_family
    rows = rows_for([chord_clip(3.0), chord_clip(40.0, 300.0), chord_clip(5.0, 150.0)])
    greedy = SamplingConfig(max_new_tokens=5, temperature=0.0)
    one = HFEngine(model, processor, family, batch_size=1).generate(rows, n=1, sampling=greedy)
    two = HFEngine(model, processor, family, batch_size=2).generate(rows, n=1, sampling=greedy)
    assert one.completion_ids == two.completion_ids


def test_errors_name_the_row(af3):
    family, model, processor = af3
    rows = rows_for([chord_clip(20.0)])
    with pytest.raises(PromptTooLongError, match="row 'r0'"):
        HFEngine(model, processor, family, max_model_len=100).generate(rows, 1, SamplingConfig(temperature=0.0))
    with pytest.raises(ValueError, match="greedy decoding gives n identical"):
        HFEngine(model, processor, family).generate(rows, 2, SamplingConfig(temperature=0.0))


class TemperatureScaled(torch.nn.Module):
    """A view of a model whose logits are divided by a temperature."""

    def __init__(self, model, temperature: float):
        super().__init__()
        self.model, self.temperature = model, temperature

    def forward(self, **kwargs):
        out = self.model(**kwargs)
        out.logits = out.logits / self.temperature
        return out


def test_build_engine_and_generate_cli(af3, tiny_checkpoint, tmp_path):
    import json

    import soundfile as sf

    from grpo_audio.cli import main
    from grpo_audio.config import RolloutConfig
    from grpo_audio.rollout import SamplingConfig, build_engine

    family, model, processor = af3
    cfg = RolloutConfig(engine="hf", max_new_tokens=7, temperature=0.5, top_k=5, top_p=0.9)
    engine = build_engine(tiny_checkpoint(family.name), cfg, policy=model, processor=processor)
    assert isinstance(engine, HFEngine) and engine.model is model
    s = SamplingConfig.from_config(cfg, seed=4)
    assert (s.max_new_tokens, s.temperature, s.top_k, s.top_p, s.seed) == (7, 0.5, 5, 0.9, 4)
    loaded = build_engine(tiny_checkpoint(family.name), cfg)  # without a policy: the checkpoint, for evaluation
    assert isinstance(loaded, HFEngine) and not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())
    with pytest.raises(ValueError, match="unknown rollout engine 'sglang'"):
        build_engine(tiny_checkpoint(family.name), RolloutConfig(engine="sglang"))

    sf.write(tmp_path / "a.wav", chord_clip(2.0), 16000)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        "".join(
            json.dumps({"id": f"q{i}", "audio": "a.wav", "prompt": "Key?", "answer": "C major"}) + "\n"
            for i in range(3)
        )
    )
    out = tmp_path / "out.jsonl"
    argv = [
        "generate",
        str(tiny_checkpoint(family.name)),
        str(manifest),
        str(out),
        "--engine",
        "hf",
        "--n",
        "2",
        "--max-new-tokens",
        "3",
    ]
    assert main(argv) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(x["id"], x["sample"]) for x in lines] == [(f"q{i}", j) for i in range(3) for j in range(2)]
    assert all(x["tokens"] <= 3 and x["answer"] == "C major" for x in lines)


def test_seeded_rows_sample_the_same_alone_or_batched(af3):
    """With a seed per row, a row's completions and logprobs do not depend on the rows generated beside it."""
    family, model, processor = af3
    rows = rows_for([chord_clip(3.0), chord_clip(40.0, 300.0), chord_clip(5.0, 150.0)])
    sampling = SamplingConfig(max_new_tokens=6, temperature=1.0, top_k=20, row_seeds=[11, 12, 13])
    batched = HFEngine(model, processor, family, batch_size=3).generate(rows, n=2, sampling=sampling)
    alone = HFEngine(model, processor, family, batch_size=1).generate(
        rows[1:2], n=2, sampling=SamplingConfig(max_new_tokens=6, temperature=1.0, top_k=20, row_seeds=[12])
    )
    assert alone.completion_ids == batched.completion_ids[2:4]
    assert torch.allclose(torch.tensor(alone.logprobs), torch.tensor(batched.logprobs[2:4]), atol=1e-5)
    reseeded = SamplingConfig(max_new_tokens=6, temperature=1.0, top_k=20, row_seeds=[11, 99, 13])
    other = HFEngine(model, processor, family, batch_size=3).generate(rows, n=2, sampling=reseeded)
    assert other.completion_ids[2:4] != batched.completion_ids[2:4]  # premise: the seed decides the draws
    assert other.completion_ids[:2] == batched.completion_ids[:2]


def test_seeded_sampler_draws_from_the_warped_distribution():
    """4000 rows, one draw each from the same logits: token frequencies match softmax(logits / T) restricted to the
    top k (within 4.5 standard errors), tokens outside the top k are never drawn, and each draw's logprob is
    log p of its token."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    sampling = SamplingConfig(temperature=0.7, top_k=4)
    draws = 4000
    sampler = SeededSampler(sampling, seeds=list(range(draws)), n=1)
    noisy = sampler(torch.zeros(draws, 1, dtype=torch.long), logits.repeat(draws, 1))
    tokens = noisy.argmax(-1)
    p = torch.zeros(6)
    p[:4] = torch.softmax(logits[:4] / 0.7, -1)  # by hand: temperature, then the top 4
    freq = torch.bincount(tokens, minlength=6).float() / draws
    se = (p * (1 - p) / draws).sqrt()
    assert freq[4:].sum() == 0
    assert ((freq[:4] - p[:4]).abs() < 4.5 * se[:4]).all(), (freq, p)
    assert torch.allclose(sampler.chosen_logprobs()[:, 0], p.log()[tokens], atol=1e-6)
    again = SeededSampler(sampling, seeds=list(range(draws)), n=1)
    assert torch.equal(again(torch.zeros(draws, 1, dtype=torch.long), logits.repeat(draws, 1)).argmax(-1), tokens)

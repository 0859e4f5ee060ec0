"""Sampled evaluation (``eval/sampled.py``): pass@k against counting every k-subset, the bootstrap interval's
properties, paired differences, and the draws seeded per prompt (the same completions for a prompt in any order or
company)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from grpo_audio.eval import (
    Interval,
    PromptDraws,
    SampledResult,
    bootstrap_interval,
    paired_difference,
    pass_at_k,
    sampled_eval,
)
from grpo_audio.rewards import RewardSet
from grpo_audio.rollout.base import SamplingConfig
from tests.conftest import FAMILY_NAMES


@pytest.mark.parametrize("n,c", [(5, 0), (5, 1), (5, 2), (5, 5), (8, 3)])
def test_pass_at_k_is_the_share_of_k_subsets_holding_a_correct_one(n, c):
    samples = [1] * c + [0] * (n - c)
    for k in range(1, n + 1):
        subsets = list(itertools.combinations(samples, k))
        assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets), abs=1e-12)
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_bootstrap_interval():
    values = np.random.default_rng(0).normal(0.3, 1.0, size=400)
    interval = bootstrap_interval(values, seed=1)
    assert interval.value == pytest.approx(values.mean()) and interval.n == 400
    se = values.std(ddof=1) / math.sqrt(values.size)  # the normal approximation's 95% half-width: 1.96 se
    assert interval.low < interval.value < interval.high
    assert (interval.high - interval.low) / 2 == pytest.approx(1.96 * se, rel=0.1)
    assert bootstrap_interval(values, seed=1) == interval  # seeded
    with pytest.raises(ValueError):
        bootstrap_interval(np.array([]))


def summary(seed=0, k=4, **prompts):
    """Draws of ``k`` a prompt at temperature 1 with ``seed``; each prompt given as ``{"reward", "correct"}``."""
    draws = {i: p if isinstance(p, PromptDraws) else PromptDraws(rewards=[], **p) for i, p in prompts.items()}
    unused = Interval(0.0, 0.0, 0.0, len(draws))  # (the difference reads the prompts only)
    return SampledResult(k=k, temperature=1.0, seed=seed, reward=unused, pass_at_1=None, pass_at_k=None, prompts=draws)


def test_paired_difference_is_per_prompt():
    before = summary(
        a={"reward": 0.1, "correct": 1}, b={"reward": 0.9, "correct": 3}, c={"reward": 0.5, "correct": None}
    )
    after = summary(
        a={"reward": 0.2, "correct": 2}, b={"reward": 1.0, "correct": 4}, c={"reward": 0.6, "correct": None}
    )
    diff = paired_difference(after, before)
    # Unpaired, the two means' spread (0.1-0.9) would swamp a +0.1 change; per prompt it is exactly +0.1.
    assert (diff.value, diff.low, diff.high, diff.n) == pytest.approx((0.1, 0.1, 0.1, 3))
    assert paired_difference(after, before, field="pass_at_1").value == pytest.approx(0.25)  # over a and b only
    with pytest.raises(ValueError, match="same seed"):
        paired_difference(summary(seed=1, **after.prompts), before)


def test_draws_are_seeded_per_prompt(tiny_checkpoint):
    """A prompt's k completions are the same whatever rows share the call and in whatever order; correct counts
    agree with the per-completion score."""
    from transformers import AutoProcessor

    from grpo_audio.models import get_family
    from grpo_audio.rollout.hf_engine import HFEngine
    from tests.test_trainer import tone_rows

    family = get_family("audio_flamingo3")
    path = tiny_checkpoint("audio_flamingo3")
    engine = HFEngine(family.model_class().from_pretrained(path), AutoProcessor.from_pretrained(path), family)
    rows = tone_rows(3)
    for row in rows:
        row.choices, row.answer, row.task = ["120", "90", "60", "30"], "120", "tempo"

    def length(prompts, completions, **kw):
        return [len(c[0]["content"]) / 10 for c in completions]

    sampling = SamplingConfig(max_new_tokens=6, temperature=1.0)
    together = sampled_eval(engine, rows, RewardSet([length]), 3, sampling, seed=7)
    alone = sampled_eval(engine, rows[2:][::-1] + rows[:1], RewardSet([length]), 3, sampling, seed=7)
    for row_id in ("r0", "r2"):
        assert alone.prompts[row_id] == together.prompts[row_id]
    other = sampled_eval(engine, rows, RewardSet([length]), 3, sampling, seed=8)
    assert other.prompts != together.prompts  # premise: the seed decides the draws
    assert together.pass_at_1.n == 3 and together.reward.n == 3
    assert together.pass_at_1.value == pytest.approx(sum(p.correct for p in together.prompts.values()) / 9)
    # Each prompt keeps its draws' rewards in draw order: their mean is its reward; the draws differ.
    for p in together.prompts.values():
        assert len(p.rewards) == 3 and p.reward == pytest.approx(sum(p.rewards) / 3)
    assert any(len(set(p.rewards)) > 1 for p in together.prompts.values())


def test_rows_are_batched_task_by_task_with_the_completions_of_any_order(tiny_checkpoint, monkeypatch):
    """The engine batches rows of one task together (a batch decodes until its longest completion ends), and each
    row's completions and logprobs are those it gets batched in the order the rows came."""
    from transformers import AutoProcessor

    from grpo_audio.models import get_family
    from grpo_audio.rollout import hf_engine
    from tests.test_trainer import tone_rows

    family = get_family("audio_flamingo3")
    path = tiny_checkpoint("audio_flamingo3")
    engine = hf_engine.HFEngine(
        family.model_class().from_pretrained(path), AutoProcessor.from_pretrained(path), family, batch_size=2
    )
    rows = tone_rows(6)
    for i, row in enumerate(rows):
        row.task = ["tempo", "key"][i % 2]
        row.prompt += " Answer with a number of beats per minute." * (row.task == "tempo")  # the longer prompts
    sampling = SamplingConfig(max_new_tokens=6, temperature=1.0, row_seeds=[11, 12, 13, 14, 15, 16])
    widths: list[int] = []
    generate = engine._generate

    def spy(inputs, *args):
        widths.append(inputs["input_ids"].shape[1])
        return generate(inputs, *args)

    monkeypatch.setattr(engine, "_generate", spy)
    grouped = engine.generate(rows, n=2, sampling=sampling)
    assert hf_engine.generation_order(rows, [0] * 6) == [1, 3, 5, 0, 2, 4]  # key rows first, then tempo rows
    monkeypatch.setattr(hf_engine, "generation_order", lambda rows, lengths: list(range(len(rows))))
    arrival = engine.generate(rows, n=2, sampling=sampling)
    assert grouped.row_ids == arrival.row_ids == [r.id for r in rows for _ in range(2)]
    assert grouped.completion_ids == arrival.completion_ids
    assert len(set(map(tuple, grouped.completion_ids))) > 2  # premise: the rows' completions differ
    for a, b in zip(grouped.logprobs, arrival.logprobs, strict=True):
        assert a == pytest.approx(b, abs=1e-5)
    # The first grouped batch holds the short key prompts only, without the padding columns they all skip; each
    # batch in arrival order holds a long tempo prompt.
    assert widths[0] < widths[3] == widths[4] == widths[5] == max(widths)


@pytest.mark.parametrize("family_name", FAMILY_NAMES)
def test_a_prompts_completions_share_one_prefill_with_the_tokens_of_n_separate_ones(tiny_checkpoint, family_name):
    """n completions of a prompt decode from one prefill of it (its KV cache repeated): the same tokens and
    logprobs as ``generate`` over the prompt repeated n times, audio included, with the same per-row noise."""
    from transformers import AutoProcessor, LogitsProcessorList

    from grpo_audio.models import get_family
    from grpo_audio.rollout import hf_engine
    from grpo_audio.rollout.base import prepare_prompts
    from tests.test_trainer import tone_rows

    family = get_family(family_name)
    path = tiny_checkpoint(family_name)
    model, processor = family.model_class().from_pretrained(path).eval(), AutoProcessor.from_pretrained(path)
    engine = hf_engine.HFEngine(model, processor, family)
    rows = tone_rows(3)
    rows[1].prompt += " Answer with a number."  # rows of two lengths: left padding in the batch
    n, seeds = 3, [21, 22, 23]
    sampling = SamplingConfig(max_new_tokens=8, temperature=1.0, row_seeds=seeds)
    shared = engine.generate(rows, n=n, sampling=sampling)

    batch = prepare_prompts(family, processor, rows, None).batch
    repeated = [r for r in range(len(rows)) for _ in range(n)]
    sampler = hf_engine.SeededSampler(sampling, seeds, n)
    with torch.no_grad():
        out = model.generate(
            input_ids=batch.input_ids[repeated],
            attention_mask=batch.attention_mask[repeated],
            **batch.audio_for(repeated),
            max_new_tokens=8,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=processor.tokenizer.pad_token_id,
            suppress_tokens=engine.banned,
            logits_processor=LogitsProcessorList([sampler]),
            return_dict_in_generate=True,
        )
    separate = out.sequences[:, batch.input_ids.shape[1] :].tolist()
    assert shared.completion_ids == [s[: len(c)] for s, c in zip(separate, shared.completion_ids, strict=True)]
    assert len({tuple(c) for c in shared.completion_ids}) > n  # premise: the draws differ
    lps = sampler.chosen_logprobs().tolist()
    for a, b in zip(shared.logprobs, lps, strict=True):
        assert a == pytest.approx(b[: len(a)], abs=1e-5)
    unshared = hf_engine.HFEngine(model, processor, family, share_prefix=False).generate(rows, n=n, sampling=sampling)
    assert unshared.completion_ids == shared.completion_ids

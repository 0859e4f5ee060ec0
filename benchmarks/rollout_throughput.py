"""Rollout throughput: completion tokens/s of the vLLM engine vs the HF engine on the same checkpoint.

Setup (the acceptance benchmark): a bench-size Music Flamingo checkpoint built locally, 16 prompts with 5 s of
audio each, n = 8 completions per prompt, exactly 64 new tokens each (``ignore_eos``), float32. Runs alternate
vLLM / HF for ``--rounds`` rounds (this machine is noisy, so both are measured under the same conditions), and
the median of each is compared. Also times ``sync_weights`` (policy -> vLLM) for the same model.

Run: ``.venv/bin/python benchmarks/rollout_throughput.py [--rounds 3]``. The ratio is printed last.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--size", default="bench", choices=["test", "demo", "bench"])
    args = parser.parse_args()

    from transformers import AutoProcessor

    from grpo_audio.data.schema import Row
    from grpo_audio.data.synthetic import TASKS, make_clip
    from grpo_audio.models import ModelSpec, get_family, load_policy
    from grpo_audio.models.tiny import build_tiny_model
    from grpo_audio.rollout.base import SamplingConfig
    from grpo_audio.rollout.hf_engine import HFEngine
    from grpo_audio.rollout.vllm_engine import VLLMEngine

    torch.set_num_threads(max(1, torch.get_num_threads()))
    family = get_family("music_flamingo")
    path = build_tiny_model(family.name, Path(tempfile.mkdtemp()) / "mf", size=args.size, seed=0)
    processor = AutoProcessor.from_pretrained(path)
    model = load_policy(ModelSpec(path, family.name)).eval()
    rows = []
    for i in range(args.prompts):
        wave = make_clip(TASKS[i % len(TASKS)], f"b{i}", np.random.default_rng(i)).wave
        reps = int(np.ceil(args.seconds * 16000 / len(wave)))
        wave = np.tile(wave, reps)[: int(args.seconds * 16000)]
        rows.append(Row(id=f"b{i}", audio=wave, sampling_rate=16000, prompt="Describe this music."))
    sampling = SamplingConfig(max_new_tokens=args.tokens, temperature=1.0, seed=0, ignore_eos=True)

    vllm = VLLMEngine(path, max_model_len=1024, seed=0)
    hf = HFEngine(model, processor, family, batch_size=args.prompts)
    vllm.generate(rows[:2], n=2, sampling=sampling)  # warm-up (compilation, caches)
    rates: dict[str, list[float]] = {"vllm": [], "hf": []}
    for r in range(args.rounds):
        for name, engine in (("vllm", vllm), ("hf", hf)):
            start = time.perf_counter()
            batch = engine.generate(rows, n=args.n, sampling=sampling)
            elapsed = time.perf_counter() - start
            tokens = sum(len(c) for c in batch.completion_ids)
            assert tokens == args.prompts * args.n * args.tokens, tokens
            rates[name].append(tokens / elapsed)
            print(f"round {r}: {name:4s} {tokens} tokens in {elapsed:6.1f} s = {tokens / elapsed:7.1f} tokens/s")
    syncs = []
    for _ in range(5):
        vllm.sync_weights(model)
        syncs.append(vllm.last_sync_s)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"sync_weights ({n_params / 1e6:.1f} M parameters, float32): median {statistics.median(syncs):.3f} s "
        f"over {len(syncs)}"
    )
    vllm.close()
    v, h = statistics.median(rates["vllm"]), statistics.median(rates["hf"])
    print(f"median tokens/s: vllm {v:.1f}, hf {h:.1f}")
    print(f"ratio vllm/hf: {v / h:.2f}x")


if __name__ == "__main__":
    main()

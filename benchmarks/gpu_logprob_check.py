"""GPU check of the training side: shared-prefix vs per-sample logprob passes in float32 and bf16 on CUDA.

For a bench-size and a larger Music Flamingo built locally (random weights), one prompt with 30 s of audio and
G = 8 completions of 128 tokens: the largest logprob and gradient differences between the two paths, and the
forward + backward time of each (alternating, medians). Needs torch, transformers and tokenizers only (audio
I/O modules are stubbed: this check feeds arrays directly).

Run: ``python benchmarks/gpu_logprob_check.py`` on a CUDA machine.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import importlib.machinery  # noqa: E402

for name in ("soundfile", "soxr"):  # not installed on the GPU image; unused by this check
    if name not in sys.modules:
        stub = types.ModuleType(name)
        stub.__spec__ = importlib.machinery.ModuleSpec(name, None)
        sys.modules[name] = stub

import numpy as np  # noqa: E402
import torch  # noqa: E402


def run(size: str, dtype: torch.dtype, reps: int = 5, audio_s: float = 30.0, g: int = 8, c: int = 128) -> None:
    from transformers import AutoProcessor

    from grpo_audio.data.collate import collate_prompts
    from grpo_audio.data.schema import Row
    from grpo_audio.logprobs import completion_logprobs, shared_prefix_logprobs
    from grpo_audio.models import ModelSpec, get_family, load_policy
    from grpo_audio.models.base import TinySize
    from grpo_audio.models.tiny import SIZES, build_tiny_model

    if size == "large":  # ~0.5 B-parameter language model, still random
        SIZES["large"] = TinySize(
            vocab_size=0,
            text_hidden=1536,
            text_layers=16,
            text_heads=12,
            text_kv_heads=2,
            text_intermediate=6144,
            audio_hidden=1280,
            audio_layers=8,
            audio_heads=20,
            audio_intermediate=5120,
        )
    family = get_family("music_flamingo")
    path = build_tiny_model(family.name, Path(tempfile.mkdtemp()) / size, size=size, seed=0)
    processor = AutoProcessor.from_pretrained(path)
    model = load_policy(ModelSpec(path, family.name, str(dtype).removeprefix("torch."))).cuda()
    t = np.arange(int(audio_s * 16000)) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 0.5 * t))).astype(np.float32)
    rows = [Row(id="g", audio=wave, sampling_rate=16000, prompt="Describe this music in detail.")]
    prompts = collate_prompts(family, processor, rows, [wave])
    ids = torch.randint(20, 500, (g, c), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    pad = processor.tokenizer.pad_token_id

    def one(shared: bool):
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        start = time.perf_counter()
        if shared:
            lps, _ = shared_prefix_logprobs(model, prompts, [0], g, ids, mask, pad)
        else:
            lps, _ = completion_logprobs(model, prompts, [0] * g, ids, mask, pad)
        lps.sum().backward()
        torch.cuda.synchronize()
        grads = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}
        return time.perf_counter() - start, lps.detach().float(), grads

    one(True), one(False)  # warm-up
    times = {True: [], False: []}
    for _ in range(reps):
        for shared in (True, False):
            dt, lps, grads = one(shared)
            times[shared].append(dt)
            if shared:
                lps_s, g_s = lps, grads
            else:
                lps_p, g_p = lps, grads
    diff = (lps_s - lps_p).abs().max().item()
    rel = max(((g_s[n] - g_p[n]).norm() / g_p[n].norm().clamp(min=1e-12)).item() for n in g_p)
    ts, tp = statistics.median(times[True]), statistics.median(times[False])
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"{size:5s} {n_params:7.1f}M {str(dtype):15s} P={int(prompts.attention_mask.sum())} G={g} C={c}: "
        f"max |dlogp| {diff:.2e}, max grad rel diff {rel:.2e}, shared {ts * 1000:.1f} ms, "
        f"per-sample {tp * 1000:.1f} ms, ratio {tp / ts:.2f}x",
        flush=True,
    )


if __name__ == "__main__":
    print(torch.cuda.get_device_name(), torch.__version__)
    if "--long" in sys.argv:  # longer audio and larger groups, bf16, the larger model
        for audio_s, g in ((30.0, 16), (120.0, 8), (120.0, 16)):
            run("large", torch.bfloat16, audio_s=audio_s, g=g)
    else:
        for size in ("bench", "large"):
            for dtype in (torch.float32, torch.bfloat16):
                run(size, dtype)

"""Per-family figures: vLLM against transformers, for every registered family (or ``--family``).

For each family a test-size checkpoint is built locally (float32) and served by the vLLM engine. It prints:

- teacher-forced parity: the largest difference between vLLM's per-token logprobs (``prompt_logprobs``) and the
  trainer's (``logprobs.completion_logprobs``, the per-sample path) for two fixed completions, on a 3 s clip and
  on a 45 s clip (past the 30 s window of the Whisper-style encoders: two windows, or the cut to 30 s);
- audio token counts: for clips from 0.1 s to past the family's limit, whether vLLM's processor places as many
  audio tokens as transformers' processor, on a first request and a repeated one (vLLM's processor cache), and the
  count at the limit.

The shared-prefix speed-up of each family comes from ``benchmarks/logprob_pass.py --family NAME``.

Run: ``.venv/bin/python benchmarks/family_figures.py [--family NAME]``; one line per family is printed last.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

CLIP_SECONDS = (0.1, 0.37, 1.0, 2.5, 29.99, 30.0, 30.01, 45.0)


def chord(seconds: float, freq: float = 220.0, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.2 * sum(np.sin(2 * np.pi * freq * r * t) for r in (1.0, 1.26, 1.5))).astype(np.float32)


def figures(name: str, root: Path) -> dict:
    from transformers import AutoProcessor

    from grpo_audio.data.collate import collate_prompts
    from grpo_audio.data.schema import Row
    from grpo_audio.logprobs import completion_logprobs
    from grpo_audio.models import ModelSpec, get_family, load_policy
    from grpo_audio.models.tiny import build_tiny_model
    from grpo_audio.rollout.vllm_engine import VLLMEngine

    family = get_family(name)
    path = build_tiny_model(name, root / name, size="test", seed=0)
    processor = AutoProcessor.from_pretrained(path)
    model = load_policy(ModelSpec(path, name)).eval()
    tok = processor.tokenizer
    completions = [
        tok("<think>C E G</think><answer>C major</answer>", add_special_tokens=False)["input_ids"]
        + [tok.eos_token_id],
        tok("<answer>B</answer>", add_special_tokens=False)["input_ids"],
    ]
    engine = VLLMEngine(path, max_model_len=2048, seed=0)
    try:
        parity = {}
        for seconds in (3.0, 45.0):
            rows = [Row(id=f"r{i}", audio=chord(seconds), sampling_rate=16000, prompt="Which chord?") for i in (0, 1)]
            got = engine.completion_logprobs(rows, completions)
            prompts = collate_prompts(family, processor, rows, [r.audio for r in rows])
            width = max(map(len, completions))
            ids = torch.tensor([c + [tok.pad_token_id] * (width - len(c)) for c in completions])
            mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in completions])
            with torch.no_grad():
                want, _ = completion_logprobs(model, prompts, [0, 1], ids, mask, tok.pad_token_id)
            parity[seconds] = max(
                (torch.tensor(g) - w[: len(g)]).abs().max().item() for g, w in zip(got, want, strict=True)
            )
        prompt = family.render_prompt(processor, family.build_messages("Which chord is played?"))
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        audio_id = tok.convert_tokens_to_ids(family.audio_token)
        lengths = sorted({*CLIP_SECONDS, family.max_audio_seconds, family.max_audio_seconds + 5.0})
        agree, at_limit = 0, 0
        for seconds in lengths:
            clip = chord(seconds)
            placed = [
                engine.llm.renderer._process_multimodal(list(prompt_ids), {"audio": (clip, 16000)}, None, None)
                for _ in range(2)
            ]
            want = int((family.process(processor, [prompt], [clip])["input_ids"] == audio_id).sum())
            agree += all(p["prompt_token_ids"].count(audio_id) == want for p in placed)
            at_limit = want if seconds == family.max_audio_seconds else at_limit
    finally:
        engine.close()
    return {
        "parity_3s": parity[3.0],
        "parity_45s": parity[45.0],
        "agree": agree,
        "lengths": len(lengths),
        "tokens_at_limit": at_limit,
    }


def main() -> None:
    from grpo_audio.models import FAMILIES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(FAMILIES), help="one family (default: every registered one)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp())
    results = {name: figures(name, root) for name in ([args.family] if args.family else FAMILIES)}
    for name, r in results.items():
        print(
            f"{name}: vLLM vs transformers logprobs max |diff| {r['parity_3s']:.1e} (3 s), {r['parity_45s']:.1e} "
            f"(45 s); audio tokens equal for {r['agree']}/{r['lengths']} clip lengths, first and repeated requests; "
            f"{r['tokens_at_limit']} at the limit",
            flush=True,
        )


if __name__ == "__main__":
    main()

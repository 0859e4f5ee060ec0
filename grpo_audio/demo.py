"""``make demo``: the smallest real end-to-end job that exists today.

Builds a demo-size Audio Flamingo 3 checkpoint locally, renders chords as audio, samples G completions per
prompt with the audio through vLLM (``multi_modal_data``), decodes greedily in vLLM and in transformers and
checks they agree, and writes ``report.json``. The model is untrained, so the text is noise: what this shows is
the audio path into vLLM, its speed and its agreement with transformers.

Run: ``grpo-audio demo --out demo_out`` (or ``make demo``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .models import get_family
from .models.tiny import build_tiny_model
from .music_vocab import CHORD_QUALITIES, PITCH_CLASSES

SAMPLE_RATE = 16000


def render_chord(root: int, quality: str, seconds: float = 5.0, sr: int = SAMPLE_RATE) -> np.ndarray:
    """A sustained chord (root pitch class 0-11 above C4, quality from CHORD_QUALITIES) as float32 mono."""
    t = np.arange(int(seconds * sr)) / sr
    wave = np.zeros_like(t)
    for semitones in CHORD_QUALITIES[quality]:
        freq = 261.63 * 2 ** ((root + semitones) / 12)
        wave += np.sin(2 * np.pi * freq * t) + 0.3 * np.sin(4 * np.pi * freq * t)
    envelope = np.minimum(1.0, t / 0.02) * np.exp(-t / seconds)
    wave *= envelope
    return (0.8 * wave / np.abs(wave).max()).astype(np.float32)


def run_demo(out: str | Path, engine: str = "vllm", num_prompts: int = 8, n: int = 4, max_tokens: int = 32) -> dict:
    """Build, generate, compare, report. Returns the report dict (also written to ``out/report.json``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    family = get_family("audio_flamingo3")
    model_dir = build_tiny_model(family.name, out / "model", size="demo", seed=0)
    print(f"[demo] built a demo-size {family.name} checkpoint in {model_dir} ({time.perf_counter() - t0:.1f} s)")

    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    qualities = list(CHORD_QUALITIES)
    clips, labels = [], []
    for i in range(num_prompts):
        root, quality = (5 * i) % 12, qualities[i % len(qualities)]
        clips.append(render_chord(root, quality))
        labels.append(f"{PITCH_CLASSES[root]} {quality}")
    prompt = family.render_prompt(processor, family.build_messages("Which chord is played?"))

    report: dict = {"family": family.name, "model_dir": str(model_dir), "prompts": num_prompts, "n": n}
    hf_greedy = _hf_greedy(family, model_dir, processor, prompt, clips, max_tokens)
    if engine == "vllm":
        report.update(_vllm_generate(model_dir, prompt, clips, n, max_tokens))
        agree = [a == b for a, b in zip(report.pop("greedy_token_ids"), hf_greedy, strict=True)]
        report["greedy_agreement_vllm_vs_transformers"] = sum(agree) / len(agree)
    report["samples"] = [
        {"clip": labels[i], "completion": c} for i, c in enumerate(report.get("completions", [])[:: max(n, 1)])
    ]
    report.pop("completions", None)
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    for key, value in report.items():
        if key != "samples":
            print(f"[demo] {key}: {value}")
    print(f"[demo] report written to {out / 'report.json'}")
    return report


def _hf_greedy(family, model_dir: Path, processor, prompt: str, clips: list[np.ndarray], max_tokens: int):
    import torch

    model = family.model_class().from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = []
    with torch.no_grad():
        for clip in clips:
            inputs = family.process(processor, [prompt], [clip])
            gen = model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False)
            ids.append(gen[0, inputs["input_ids"].shape[1] :].tolist())
    eos = model.generation_config.eos_token_id
    return [seq[: seq.index(eos) + 1] if eos in seq else seq for seq in ids]


def _vllm_generate(model_dir: Path, prompt: str, clips: list[np.ndarray], n: int, max_tokens: int) -> dict:
    from vllm import LLM, SamplingParams

    t = time.perf_counter()
    llm = LLM(
        model=str(model_dir),
        dtype="float32",
        max_model_len=2048,
        gpu_memory_utilization=0.3,
        enforce_eager=True,
        seed=0,
        limit_mm_per_prompt={"audio": 1},
    )
    start_s = time.perf_counter() - t
    requests = [{"prompt": prompt, "multi_modal_data": {"audio": (clip, SAMPLE_RATE)}} for clip in clips]
    llm.generate(requests[:1], SamplingParams(max_tokens=4))  # warm-up
    t = time.perf_counter()
    outs = llm.generate(requests, SamplingParams(n=n, temperature=1.0, max_tokens=max_tokens, seed=0))
    sample_s = time.perf_counter() - t
    completions = [c.text for o in outs for c in o.outputs]
    tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
    greedy = llm.generate(requests, SamplingParams(temperature=0.0, max_tokens=max_tokens))
    return {
        "vllm_start_s": round(start_s, 1),
        "completion_tokens": tokens,
        "completion_tokens_per_s": round(tokens / sample_s, 1),
        "audio_tokens_per_prompt": outs[0].prompt_token_ids.count(_sound_id(model_dir)),
        "completions": completions,
        "greedy_token_ids": [list(o.outputs[0].token_ids) for o in greedy],
    }


def _sound_id(model_dir: Path) -> int:
    return json.loads((model_dir / "config.json").read_text())["audio_token_id"]

"""Rollout engines: vLLM (with audio) and transformers ``generate`` behind one interface.

This package owns sampling completions for prompts with audio: the engines, their sampling settings and the
batch they return. ``build_engine`` makes the engine a run's config asks for (sampling from the policy being
trained); ``load_engine`` one for a checkpoint directory (evaluation, generation).

vLLM is imported only where its engine is built: it is a heavy dependency, and the transformers engine and
everything else in the package work without it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoProcessor

from ..audio_cache import AudioCache
from ..config.fields import ENGINES, HF_BATCH_SIZE
from ..data.loaders import load_manifest
from ..models import ModelFamily, ModelSpec, family_of_checkpoint, load_policy
from .base import PromptTooLongError, RolloutBatch, RolloutEngine, SamplingConfig
from .hf_engine import HFEngine

__all__ = [
    "PromptTooLongError",
    "RolloutBatch",
    "RolloutEngine",
    "SamplingConfig",
    "build_engine",
    "load_engine",
    "sampling_config",
]


def sampling_config(rollout: Any, seed: int | None = None) -> SamplingConfig:
    """Sampling settings from a ``RolloutConfig``."""
    return SamplingConfig(
        max_new_tokens=rollout.max_new_tokens,
        temperature=rollout.temperature,
        top_p=rollout.top_p,
        top_k=rollout.top_k,
        seed=seed,
    )


def build_engine(
    rollout: Any,
    model_dir: str | Path,
    family: type[ModelFamily],
    model: Any = None,
    processor: Any = None,
    dtype: str = "float32",
    seed: int = 0,
    own_weights: bool = False,
) -> RolloutEngine:
    """The engine ``rollout.engine`` names (``vllm`` or ``hf``; ``hf`` samples from ``model`` itself, or with
    ``own_weights`` from ``model`` as its own copy, see ``HFEngine``); prompts' batches are built with
    ``processor`` (loaded from ``model_dir`` by the vLLM engine when None)."""
    if rollout.engine == "vllm":
        from .vllm_engine import VLLMEngine  # vLLM only when asked for (see the package docstring)

        return VLLMEngine(
            model_dir,
            family=family,
            dtype=dtype,
            max_model_len=rollout.max_model_len,
            gpu_memory_utilization=rollout.gpu_memory_utilization,
            tensor_parallel_size=rollout.tensor_parallel_size,
            seed=seed,
            enforce_eager=rollout.enforce_eager,
            processor=processor,
        )
    if rollout.engine == "hf":
        if model is None or processor is None:
            raise ValueError("the hf engine samples from the policy: pass model and processor")
        return HFEngine(
            model,
            processor,
            family,
            max_model_len=rollout.max_model_len,
            own_weights=own_weights,
            compute_dtype=getattr(torch, dtype),  # float32 master weights of a bf16 run sample in bf16
        )
    raise ValueError(f"unknown rollout engine '{rollout.engine}'; choose one of: {', '.join(ENGINES)}")


def load_engine(
    model_dir: str | Path,
    engine: str = "vllm",
    max_model_len: int = 4096,
    audio_cache: AudioCache | None = None,
    dtype: str = "float32",
    batch_size: int = HF_BATCH_SIZE,
) -> RolloutEngine:
    """An engine sampling from the checkpoint in ``model_dir`` (its family read from its ``config.json``).

    Args:
        engine: ``vllm`` or ``hf`` (transformers ``generate``; the model in eval mode, without gradients).
        max_model_len: prompt + completion tokens at most.
        audio_cache: the ``hf`` engine's log-mel features go through it (see ``audio_cache.py``).
        dtype: the weights' dtype in either engine (``float32``, ``bfloat16``, ``float16``).
        batch_size: the ``hf`` engine's prompts per ``generate`` call (vLLM schedules its own batches).

    Raises:
        FileNotFoundError: ``model_dir`` has no ``config.json``.
    """
    family = family_of_checkpoint(model_dir)
    if engine == "vllm":
        from .vllm_engine import VLLMEngine  # vLLM only when asked for (see the package docstring)

        return VLLMEngine(model_dir, family=family, max_model_len=max_model_len, dtype=dtype)
    if engine != "hf":
        raise ValueError(f"unknown rollout engine '{engine}'; choose one of: {', '.join(ENGINES)}")
    model = load_policy(ModelSpec(model_dir, family.name, dtype)).eval().requires_grad_(False)
    processor = AutoProcessor.from_pretrained(model_dir)
    if audio_cache is not None:
        processor = audio_cache.features(processor)
    return HFEngine(model, processor, family, max_model_len=max_model_len, batch_size=batch_size)


def generate_manifest(
    model_dir: str | Path,
    manifest: str | Path,
    out: str | Path,
    engine: str = "vllm",
    n: int = 1,
    sampling: SamplingConfig | None = None,
    batch_prompts: int = 16,
    max_model_len: int = 4096,
) -> int:
    """Sample completions for every row of a manifest and write them as JSONL (one line per completion).

    Returns the number of completions written.
    """
    rows = load_manifest(manifest, family=family_of_checkpoint(model_dir))
    sampling = sampling or SamplingConfig()
    eng = load_engine(model_dir, engine, max_model_len)
    written = 0
    with open(out, "w", encoding="utf-8") as f:
        for start in range(0, len(rows), batch_prompts):
            chunk = rows[start : start + batch_prompts]
            batch = eng.generate(chunk, n=n, sampling=sampling)
            for i in range(len(batch)):
                row = chunk[batch.row_index[i]]
                record = {
                    "id": row.id,
                    "sample": i % n,
                    "completion": batch.completion_text[i],
                    "finish_reason": batch.finish_reason[i],
                    "tokens": len(batch.completion_ids[i]),
                    "answer": row.answer,
                }
                f.write(json.dumps(record) + "\n")
                written += 1
            print(f"[generate] {min(start + batch_prompts, len(rows))}/{len(rows)} rows", flush=True)
    if hasattr(eng, "close"):
        eng.close()
    return written

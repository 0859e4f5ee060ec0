"""Rollout engines: vLLM (with audio) and transformers ``generate`` behind one interface.

This package owns sampling completions for prompts with audio: the engines, their sampling settings and the
batch they return. ``build_engine`` makes the engine a ``RolloutConfig`` asks for, from a checkpoint directory
(evaluation, generation) or sampling from the policy being trained.

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
from ..config import ENGINES, HF_BATCH_SIZE, RolloutConfig
from ..data.loaders import load_manifest
from ..models import ModelSpec, family_of_checkpoint, load_policy
from .base import PromptTooLongError, RolloutBatch, RolloutEngine, SamplingConfig
from .hf_engine import HFEngine

__all__ = [
    "PromptTooLongError",
    "RolloutBatch",
    "RolloutEngine",
    "SamplingConfig",
    "build_engine",
]


def build_engine(
    model_dir: str | Path,
    rollout: RolloutConfig,
    *,
    dtype: str = "float32",
    seed: int = 0,
    policy: Any = None,
    processor: Any = None,
    own_weights: bool = False,
    audio_cache: AudioCache | None = None,
    batch_size: int = HF_BATCH_SIZE,
) -> RolloutEngine:
    """The engine ``rollout.engine`` names, for the checkpoint in ``model_dir`` (its family read from its
    ``config.json``): the one way an engine is made, for training, evaluation and generation.

    Args:
        model_dir: the checkpoint the engine starts from (vLLM loads it; ``hf`` loads it unless given ``policy``).
        rollout: the engine (``vllm`` or ``hf``) and its settings (context length, vLLM's memory share, tensor
            parallelism, eager mode).
        dtype: the dtype the engine computes in (``model.dtype``; float32 master weights of a bf16 run sample in
            bf16).
        seed: vLLM's seed.
        policy: ``hf`` only: sample from this model (the policy being trained, or with ``own_weights`` its own
            copy, see ``HFEngine``) instead of loading ``model_dir`` (in eval mode, without gradients).
        processor: builds the prompts' batches (loaded from ``model_dir`` when None).
        audio_cache: ``hf``: a processor loaded here computes its log-mel features through it (``audio_cache.py``).
        batch_size: the ``hf`` engine's prompts per ``generate`` call (vLLM schedules its own batches).

    Raises:
        FileNotFoundError: ``model_dir`` has no ``config.json``.
        ValueError: an unknown engine.
    """
    if rollout.engine not in ENGINES:
        raise ValueError(f"unknown rollout engine '{rollout.engine}'; choose one of: {', '.join(ENGINES)}")
    family = family_of_checkpoint(model_dir)
    if processor is None and rollout.engine == "hf":
        processor = AutoProcessor.from_pretrained(model_dir)
        processor = audio_cache.features(processor) if audio_cache is not None else processor
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
    if policy is None:
        policy = load_policy(ModelSpec(model_dir, family.name, dtype)).eval().requires_grad_(False)
    return HFEngine(
        policy,
        processor,
        family,
        max_model_len=rollout.max_model_len,
        batch_size=batch_size,
        own_weights=own_weights,
        compute_dtype=getattr(torch, dtype),
    )


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
    eng = build_engine(model_dir, RolloutConfig(engine=engine, max_model_len=max_model_len))
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

"""Rollout engines: vLLM (with audio) and transformers ``generate`` behind one interface.

``build_engine`` makes the engine a config asks for; ``sampling_config`` turns the config's sampling fields into
a :class:`SamplingConfig`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..models import ModelFamily
from .base import PromptTooLongError, RolloutBatch, RolloutEngine, SamplingConfig

__all__ = ["PromptTooLongError", "RolloutBatch", "RolloutEngine", "SamplingConfig", "build_engine", "sampling_config"]


def sampling_config(rollout: Any, seed: int | None = None) -> SamplingConfig:
    """Sampling settings from a ``RolloutConfig``."""
    return SamplingConfig(
        max_new_tokens=rollout.max_new_tokens,
        temperature=rollout.temperature,
        top_p=rollout.top_p,
        top_k=rollout.top_k,
        seed=seed,
    )


ENGINES = ("vllm", "hf")


def build_engine(
    rollout: Any,
    model_dir: str | Path,
    family: type[ModelFamily],
    model: Any = None,
    processor: Any = None,
    dtype: str = "float32",
    seed: int = 0,
) -> RolloutEngine:
    """The engine ``rollout.engine`` names (``vllm`` or ``hf``; ``hf`` samples from ``model`` itself)."""
    if rollout.engine == "vllm":
        from .vllm_engine import VLLMEngine

        return VLLMEngine(
            model_dir,
            family=family,
            dtype=dtype,
            max_model_len=rollout.max_model_len,
            gpu_memory_utilization=rollout.gpu_memory_utilization,
            tensor_parallel_size=rollout.tensor_parallel_size,
            seed=seed,
            enforce_eager=rollout.enforce_eager,
        )
    if rollout.engine == "hf":
        from .hf_engine import HFEngine

        if model is None or processor is None:
            raise ValueError("the hf engine samples from the policy: pass model and processor")
        return HFEngine(model, processor, family, max_model_len=rollout.max_model_len)
    raise ValueError(f"unknown rollout engine '{rollout.engine}'; choose vllm or hf")


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
    import json

    from transformers import AutoProcessor

    from ..data.loaders import load_manifest
    from ..models import family_of_checkpoint

    family = family_of_checkpoint(model_dir)
    rows = load_manifest(manifest, family=family)
    sampling = sampling or SamplingConfig()
    if engine == "vllm":
        from .vllm_engine import VLLMEngine

        eng: Any = VLLMEngine(model_dir, family=family, max_model_len=max_model_len)
    else:
        from .hf_engine import HFEngine

        model = family.model_class().from_pretrained(model_dir).eval()
        eng = HFEngine(model, AutoProcessor.from_pretrained(model_dir), family, max_model_len=max_model_len)
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

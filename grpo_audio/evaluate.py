"""Evaluation: accuracy per question type on MCQ and open-answer sets, format rate, reward means.

Inputs: a grpo-audio JSONL manifest (the synthetic ``eval.jsonl`` among them) or a music-benchmark JSON in the
MuChoMusic / MMAU layout: a list of items with an audio path, a question, its choices and the answer (letter or
choice text), and a category::

    [{"id": "q1", "audio_path": "audio/q1.wav", "question": "Which instrument ...?",
      "choices": ["piano", "violin", "flute", "drums"], "answer": "violin", "category": "instrument"}, ...]

(``audio``/``audio_path``/``audio_id``, ``question``/``prompt``, ``choices``/``options``, ``answer``/``label``,
``category``/``task``/``question_type`` are all read.) MCQ rows are scored with ``mcq_accuracy``, open rows with
``answer_accuracy``; both read the last ``<answer>`` block, or the text outside think blocks.

Run: ``grpo-audio eval MODEL_DIR DATA [--engine vllm|hf] [--out report.json]``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from .data.schema import Row
from .rewards import answer_accuracy, format_reward, mcq_accuracy

MCQ_SUFFIX = "Answer with the letter of the correct choice."


def load_benchmark_json(path: str | Path, family: Any = None, think: bool = False) -> list[Row]:
    """Rows from a MuChoMusic / MMAU style JSON list (audio paths relative to the JSON file)."""
    from .data.loaders import from_records

    path = Path(path)
    items = json.loads(path.read_text())
    if isinstance(items, dict):
        items = items.get("data") or list(items.values())
    suffix = MCQ_SUFFIX + (
        " Think step by step inside <think></think>, then give the final answer inside <answer></answer>."
        if think
        else ""
    )
    records = []
    for i, item in enumerate(items):
        choices = item.get("choices") or item.get("options")
        question = item.get("question") or item.get("prompt") or ""
        lettered = "\n".join(f"({chr(65 + j)}) {c}" for j, c in enumerate(choices or []))
        audio = item.get("audio_path") or item.get("audio") or item.get("audio_id")
        records.append(
            {
                "id": str(item.get("id", i)),
                "audio": str(path.parent / audio) if audio else None,
                "prompt": f"{question}\n{lettered}\n{suffix}" if choices else question,
                "choices": choices,
                "answer": item.get("answer") or item.get("label"),
                "task": item.get("category") or item.get("task") or item.get("question_type") or "",
            }
        )
    return from_records(records, family=family)


def load_eval_rows(path: str | Path, family: Any = None) -> list[Row]:
    from .data.loaders import load_manifest

    path = Path(path)
    return load_benchmark_json(path, family) if path.suffix == ".json" else load_manifest(path, family=family)


def score(rows: list[Row], completions: list[str]) -> dict[str, Any]:
    """Accuracy overall and per task (MCQ and open answers), format rate, per-row results."""
    per_task: dict[str, list[float]] = defaultdict(list)
    results = []
    for row, text in zip(rows, completions, strict=True):
        picked = None
        if row.choices:
            correct = mcq_accuracy(None, [text], choices=[row.choices], answer=[row.answer])[0]
            picked = len(mcq_accuracy.named(text, row.choices)) == 1
            kind = "mcq"
        else:
            correct = answer_accuracy(None, [text], answer=[row.answer])[0]
            kind = "open"
        fmt = format_reward(None, [text])[0]
        if correct is not None:
            per_task[f"{kind}/{row.task or 'all'}"].append(correct)
        results.append(
            {
                "id": row.id,
                "task": row.task,
                "kind": kind,
                "correct": correct,
                "picked_one_choice": picked,
                "format": fmt,
                "completion": text,
                "answer": row.answer,
            }
        )
    mcq = [r["correct"] for r in results if r["kind"] == "mcq" and r["correct"] is not None]
    open_ = [r["correct"] for r in results if r["kind"] == "open" and r["correct"] is not None]
    return {
        "mcq_accuracy": sum(mcq) / len(mcq) if mcq else None,
        "open_accuracy": sum(open_) / len(open_) if open_ else None,
        "format_rate": sum(r["format"] for r in results) / len(results) if results else None,
        # MCQ answers that name exactly one of the listed choices, right or wrong (a model that answers with
        # something not listed scores below chance)
        "choice_rate": (
            sum(r["picked_one_choice"] for r in results if r["kind"] == "mcq") / len(mcq) if mcq else None
        ),
        "per_task": {k: sum(v) / len(v) for k, v in sorted(per_task.items())},
        "counts": {k: len(v) for k, v in sorted(per_task.items())},
        "results": results,
    }


def evaluate_model(
    model_dir: str | Path,
    rows: list[Row],
    engine: str = "vllm",
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    max_model_len: int = 4096,
    engine_obj: Any = None,
    audio_stores: Any = None,
) -> dict[str, Any]:
    """Generate one completion per row (greedy by default) and score it.

    ``audio_stores`` (an ``sft.AudioStores``; the transformers engine only) keeps each clip's log-mel features and
    audio-encoder outputs from one call to the next: an eval set asks several questions about each clip, and a
    recipe evaluates the same clips after every stage, with an encoder that stays frozen. Keys carry the feature
    extractor's settings and the encoder's weights, so an encoder that changed is run again; the completions are
    the uncached ones (a test compares them).
    """
    from .rollout.base import SamplingConfig

    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=0)
    own = engine_obj is None
    if own:
        engine_obj = _engine(model_dir, engine, max_model_len, audio_stores)
    try:
        with _encoder_cache(engine_obj, audio_stores):
            batch = engine_obj.generate(rows, n=1, sampling=sampling)
    finally:
        if own and hasattr(engine_obj, "close"):
            engine_obj.close()
    return score(rows, batch.completion_text)


def _engine(model_dir: str | Path, engine: str, max_model_len: int, audio_stores: Any = None) -> Any:
    from transformers import AutoProcessor

    from .models import family_of_checkpoint

    family = family_of_checkpoint(model_dir)
    if engine == "vllm":
        from .rollout.vllm_engine import VLLMEngine

        return VLLMEngine(model_dir, family=family, max_model_len=max_model_len)
    from .data.feature_cache import cache_features
    from .rollout.hf_engine import HFEngine

    model = family.model_class().from_pretrained(model_dir).eval().requires_grad_(False)
    processor = AutoProcessor.from_pretrained(model_dir)
    if audio_stores is not None:
        processor = cache_features(processor, store=audio_stores.features)
    return HFEngine(model, processor, family, max_model_len=max_model_len)


def _encoder_cache(engine_obj: Any, audio_stores: Any) -> Any:
    """Within the block, a transformers engine's frozen encoder reuses ``audio_stores.encoder``."""
    from contextlib import nullcontext

    from .models.encoder_cache import cached_encoder
    from .rollout.hf_engine import HFEngine

    if audio_stores is None or not isinstance(engine_obj, HFEngine):
        return nullcontext()
    if any(p.requires_grad for p in engine_obj.model.parameters()):  # a caller's engine with a model in training
        return nullcontext()
    return cached_encoder(engine_obj.model, engine_obj.family, store=audio_stores.encoder)

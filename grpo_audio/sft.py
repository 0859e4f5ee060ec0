"""Supervised stages of the Music Flamingo recipe on TRL's ``SFTTrainer`` with grpo-audio's audio collator.

Two stages use it: ``sft`` (skills data: captions and question answering, target = the answer or caption) and
``cold_start`` (chain-of-thought data, target = ``<think>thinking</think><answer>answer</answer>``, MF-Think
style). The loss is on the target only: the collator masks every prompt, audio-placeholder and padding position
(``data.collate.collate_sequences``). TRL's own dataset preparation is skipped (it knows nothing of audio); the
dataset handed to TRL holds row indices and the collator turns them into processor batches.

Run: ``grpo-audio sft MODEL_DIR MANIFEST OUT [--target answer|think] [--epochs N]``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import TrainerCallback
from transformers.modeling_layers import GradientCheckpointingLayer

from .audio_cache import AudioCache
from .config import TARGETS, ParallelConfig, SFTConfig
from .data.collate import IGNORE_INDEX, collate_sequences
from .data.schema import Row
from .logs import redirected, terminal
from .models import ModelFamily
from .models.weights import save_model_dir
from .parallel import shard_units
from .precision import Precision, compute_in

logger = logging.getLogger(__name__)


def target_text(row: Row, target: str) -> str:
    """The text a row teaches: its answer (or caption), or a think block then the answer; ``auto`` (with the
    audio) and ``text`` (without it, ``TextCollator``) take the think form when the row has a chain of thought
    and the answer otherwise."""
    answer = row.answer if row.answer is not None else row.caption
    if answer is None:
        raise ValueError(f"row '{row.id}': field 'answer': an SFT row needs an answer or a caption")
    if target in ("auto", "text"):
        target = "think" if row.thinking else "answer"
    if target == "answer":
        return answer
    if target == "think":
        if not row.thinking:
            raise ValueError(f"row '{row.id}': field 'thinking': a cold-start row needs its chain of thought")
        return f"<think>{row.thinking}</think><answer>{answer}</answer>"
    raise ValueError(f"unknown SFT target '{target}'; choose one of: {', '.join(TARGETS)}")


class AudioSFTCollator:
    """Turns a list of ``{"index": i}`` items into model inputs with labels on the target only."""

    def __init__(
        self,
        family: type[ModelFamily],
        processor: Any,
        rows: list[Row],
        target: str,
        max_audio_seconds: float | None = None,
        audio_cache: AudioCache | None = None,
        feature_dtype: torch.dtype = torch.float32,
    ):
        # Every epoch revisits the same clips: with a cache, their log-mel features are computed once.
        self.family, self.rows, self.target = family, rows, target
        self.feature_dtype = feature_dtype  # the model's: a bf16 model gets bf16 audio features
        self.processor = audio_cache.features(processor) if audio_cache is not None else processor
        self.max_audio_seconds = max_audio_seconds
        for row in rows:  # fail before training, naming the row
            target_text(row, target)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [self.rows[int(f["index"])] for f in features]
        clips = [r.load_audio(self.family, max_seconds=self.max_audio_seconds).wave for r in rows]
        batch = collate_sequences(
            self.family, self.processor, rows, clips, [target_text(r, self.target) for r in rows]
        )
        inputs = batch.model_inputs(with_labels=True)
        return {k: v.to(self.feature_dtype) if v.is_floating_point() else v for k, v in inputs.items()}


class TextCollator:
    """``{"index": i}`` items -> a language-model batch of each row's text without its audio: the chat prompt
    (audio left out) then the target, with the loss on every token but padding.

    This is the ``text_pretrain`` stage's collator. A real audio LLM starts from a pretrained language model
    (Music Flamingo from Audio Flamingo 3, itself from Qwen2.5); a tiny model built from random weights has no
    language yet, and learning to read a prompt (which choices there are, how answers are written) from the
    few target tokens of audio SFT takes far longer than learning it from the whole text.
    """

    def __init__(self, family: type[ModelFamily], processor: Any, rows: list[Row]):
        self.tokenizer = processor.tokenizer
        self.texts = []
        for row in rows:
            prompt = row.prompt if isinstance(row.prompt, str) else _text_only(row.prompt)
            messages = ([{"role": "system", "content": row.system}] if row.system else []) + [
                {"role": "user", "content": [{"type": "text", "text": prompt}]}
            ]
            rendered = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            self.texts.append(rendered + target_text(row, "text") + self.tokenizer.eos_token)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            [self.texts[int(f["index"])] for f in features],
            add_special_tokens=False,
            padding=True,
            return_tensors="pt",
        )
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, IGNORE_INDEX)
        position_ids = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        return {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "position_ids": position_ids,
            "labels": labels,
        }


def _text_only(messages: list[dict[str, Any]]) -> str:
    parts = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            parts.append(content)
        else:
            parts.extend(c.get("text", "") for c in content or [] if c.get("type") == "text")
    return "\n".join(p for p in parts if p)


class TerminalProgress(TrainerCallback):
    """The stage's progress bar and loss on the terminal (``logs.terminal``); transformers' own bar and loss
    records go with the libraries' output to the log file."""

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.bar = tqdm(total=state.max_steps, desc="sft", unit="step", file=terminal())

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if logs and "loss" in logs:
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}")

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.bar.close()


def run_sft(
    model: Any,
    family: type[ModelFamily],
    processor: Any,
    rows: list[Row],
    out: str | Path,
    settings: SFTConfig,
    callbacks: list[Any] | None = None,
    audio_cache: AudioCache | None = None,
    parallel: ParallelConfig | None = None,
    precision: Precision | None = None,
) -> tuple[Path, list[dict[str, float]]]:
    """Train ``model`` on ``rows`` with TRL's SFTTrainer and save it to ``out/model``.

    ``precision``: with float32 master weights for a bf16 / fp16 model (``precision.py``), ``model`` holds the
    masters (``load_policy(..., dtype=precision.master)``), its forward runs under autocast to the compute dtype and
    the saved model is in the compute dtype; None: the model trains in its own dtype.

    ``callbacks`` are transformers ``TrainerCallback`` objects handed to the trainer. With ``cache_audio``, each
    clip's log-mel features (and, with the encoder frozen, its encoder outputs) go through ``audio_cache``: a
    recipe passes its own, so that a later stage finds them (a new one is made when None).

    Under torchrun every process calls it: TRL (through accelerate) trains data-parallel, and with
    ``parallel.strategy: fsdp2`` through accelerate's FSDP2 plugin, each decoder layer and encoder block a unit
    (on the CPU accelerate runs that as DDP). The main process writes the model.

    Returns the saved model directory and TRL's log history (loss per logging step).
    """
    from datasets import Dataset
    from trl import SFTTrainer

    out = Path(out)
    if not settings.cache_audio:
        audio_cache = None
    elif audio_cache is None:
        audio_cache = AudioCache()
    if settings.freeze_audio_encoder:
        for name, p in model.named_parameters():
            if name.startswith(family.audio_encoder_prefixes):
                p.requires_grad_(False)
    args = _trl_arguments(settings, out, model, parallel)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict({"index": list(range(len(rows)))}),
        data_collator=_collator(family, processor, rows, settings, audio_cache, model),
        processing_class=processor.tokenizer,
        # Under a command transformers' bar goes to the log file: the terminal gets one of its own.
        callbacks=[*([TerminalProgress()] if redirected() else []), *(callbacks or [])],
    )
    if trainer.accelerator.num_processes > 1:
        logger.info(
            "supervised stage on %d processes (accelerate %s)",
            trainer.accelerator.num_processes,
            trainer.accelerator.distributed_type.value,
        )
    reuse_encoder = settings.freeze_audio_encoder and audio_cache is not None and settings.target != "text"
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    undo_autocast = compute_in(model, precision, device) if precision is not None else (lambda: None)
    try:
        with (
            audio_cache.encoder(trainer.model, family) if reuse_encoder else nullcontext() as encoder,
            labels_only_lm_head() if settings.score_labels_only else nullcontext(),
        ):
            trainer.train()
    finally:
        undo_autocast()
    if encoder is not None:
        logger.info("audio encoder outputs: %d windows computed, %d reused", encoder.misses, encoder.hits)
    # Every process gathers (FSDP2) what the main one writes.
    model_dir = save_model_dir(
        trainer.model,
        family,
        processor,
        out / "model",
        write=trainer.is_world_process_zero(),
        dtype=precision.compute if precision is not None else None,
    )
    trainer.accelerator.wait_for_everyone()
    return model_dir, [h for h in trainer.state.log_history if "loss" in h]


def _trl_arguments(settings: SFTConfig, out: Path, model: Any, parallel: ParallelConfig | None) -> Any:
    """TRL's ``SFTConfig`` for a supervised stage; TRL's own checkpoints and reports are off (the stage saves)."""
    from trl import SFTConfig as TRLArguments

    return TRLArguments(
        output_dir=str(out / "trl"),
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        learning_rate=settings.lr,
        per_device_train_batch_size=settings.batch_size,
        warmup_steps=settings.warmup_ratio,  # a float below 1 is a fraction of the steps
        lr_scheduler_type=settings.lr_scheduler,
        weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm,
        seed=settings.seed,
        logging_steps=settings.logging_steps,
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True},
        use_cpu=not torch.cuda.is_available(),
        # Autocast, when wanted, is ours (precision.compute_in): accelerate keeps one state per process, so a
        # mixed-precision setting here would stop the recipe's GRPO stage from starting in the same process.
        bf16=False,
        gradient_checkpointing=settings.gradient_checkpointing,
        dataloader_num_workers=0,
        **_fsdp_arguments(model, parallel),
    )


def _collator(
    family: type[ModelFamily],
    processor: Any,
    rows: list[Row],
    settings: SFTConfig,
    audio_cache: AudioCache | None,
    model: Any,
) -> TextCollator | AudioSFTCollator:
    """The stage's collator: text-only for ``target: text``, else audio rows with their answer or reasoning."""
    if settings.target == "text":
        return TextCollator(family, processor, rows)
    dtype = next(model.parameters()).dtype
    return AudioSFTCollator(family, processor, rows, settings.target, audio_cache=audio_cache, feature_dtype=dtype)


@contextmanager
def labels_only_lm_head() -> Iterator[None]:
    """While in the block, TRL's fused LM head (``trl.trainer.utils.add_fused_lm_head``, which ``SFTTrainer`` installs)
    projects only the positions that have a label.

    TRL gathers those positions where it runs its Triton kernels and projects all ``B * (T - 1)`` positions
    elsewhere, so that a compiler sees one tile shape per batch (TRL's comment names Neuron); its torch tiles give
    each position the same log-probability, entropy and gradient either way, since a position's log-softmax does not
    depend on the others. An audio row's positions are mostly audio and prompt tokens (a 5 s clip takes 125 audio
    tokens, its answer about 10): on the CPU the projection of all of them took about a quarter of a supervised
    step's profile samples, and a step of 16 clips' rows runs 1.35x faster without it (the embedded recipe's longer
    rows: 5-8%; ``benchmarks/sft_step.py``, results.md "SFT step"). TRL decides with its private ``_use_triton``,
    looked up when the head runs; this swaps it for the block and restores it after. Where a TRL release no longer
    has it, nothing changes (``tests/test_sft.py`` checks that the rows projected are the labelled ones).
    """
    import trl.trainer.utils as trl_utils

    decide = getattr(trl_utils, "_use_triton", None)
    if decide is None:
        yield
        return
    trl_utils._use_triton = lambda device: True
    try:
        yield
    finally:
        trl_utils._use_triton = decide


def _fsdp_arguments(model: Any, parallel: ParallelConfig | None) -> dict[str, Any]:
    """TrainingArguments for ``parallel.strategy: fsdp2`` (transformers' ``fsdp_config``, FSDP2, the same units as
    the GRPO trainer's: ``parallel.shard_units``); none otherwise (accelerate then runs DDP under torchrun)."""
    if parallel is None or parallel.strategy != "fsdp2" or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return {}
    layers = sorted({type(m).__name__ for _, m in shard_units(model) if isinstance(m, GradientCheckpointingLayer)})
    config = {"version": 2, "transformer_layer_cls_to_wrap": layers, "cpu_offload": parallel.cpu_offload}
    return {"fsdp": "full_shard auto_wrap", "fsdp_config": config}

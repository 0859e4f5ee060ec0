"""Rollouts with transformers' ``generate``: for environments without vLLM, and the reference in tests.

The engine samples from the policy model itself, so ``sync_weights`` only swaps the reference; a policy sharded
over processes (FSDP2) cannot generate on one process alone, so the engine then samples from its own whole copy,
which ``sync_weights`` refreshes from the gathered shards (``own_weights``). Logprobs are
those of the sampling distribution (logits after temperature / top-k / top-p), the same quantity vLLM returns with
``logprobs_mode="processed_logprobs"``.

Departure from ``generate(do_sample=True)``: transformers samples every sequence of a batch from one global
generator, so a row's draws would depend on the rows beside it. Sampling here is :class:`SeededSampler`, a logits
processor with one random stream per row (as vLLM's per-request seeds), so a seeded row gets the same completions
alone or in any batch, and rows are still generated ``batch_size`` at a time: those of one task together
(:func:`generation_order`), since a batch decodes until its longest completion ends.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from ..choices import HF_BATCH_SIZE
from ..data.schema import Row
from ..logprobs import to_model
from ..models import ModelFamily
from ..parallel import full_state
from ..precision import Precision
from .base import RolloutBatch, SamplingConfig, banned_token_ids, check_sampling, finish_reason, prepare_prompts

# Prompts per generate call unless told otherwise (the recipe's eval.batch_size, `grpo-audio eval`'s batch_size;
# `benchmarks/eval_engine.py --settings hf:1 hf:32 hf:64` compares batch sizes).
BATCH_SIZE = HF_BATCH_SIZE


class HFEngine:
    """``RolloutEngine`` over ``model.generate``.

    Args:
        model: the policy (a transformers model of ``family``, possibly PEFT-wrapped).
        processor: the family's processor.
        family: the model family adapter.
        max_model_len: context limit for prompt + completion (prompts that do not fit are rejected).
        batch_size: prompts per ``generate`` call.
        own_weights: ``model`` is the engine's own copy (not the policy): ``sync_weights`` copies the policy's
            weights into it, gathered tensor by tensor from its shards.
        share_prefix: a prompt's ``n`` completions decode from one prefill of it (False: the prompt is run ``n``
            times; the same completions, slower).
        compute_dtype: the dtype to sample in when ``model``'s weights are kept in another (float32 master weights
            of a bf16 run, ``precision.py``): under ``torch.autocast``, as the trainer's forward passes run.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        family: type[ModelFamily],
        max_model_len: int | None = None,
        batch_size: int = BATCH_SIZE,
        own_weights: bool = False,
        share_prefix: bool = True,
        compute_dtype: torch.dtype | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size: {batch_size}: must be 1 or more")
        self.model, self.processor, self.family = model, processor, family
        self.own_weights, self.share_prefix = own_weights, share_prefix
        self.max_model_len, self.batch_size = max_model_len, batch_size
        self.tokenizer = processor.tokenizer
        self.banned = banned_token_ids(family, self.tokenizer)
        self.compute_dtype = compute_dtype

    @torch.no_grad()
    def sync_weights(self, model: Any) -> None:
        if not self.own_weights:
            self.model = model
            return
        target = self.model.state_dict()
        for name, tensor in full_state(model):  # every process gathers every tensor, in step
            target[name].copy_(tensor)

    @torch.no_grad()
    def generate(self, rows: list[Row], n: int, sampling: SamplingConfig) -> RolloutBatch:
        check_sampling(n, sampling, len(rows))
        prepared = prepare_prompts(self.family, self.processor, rows, self.max_model_len)
        eos = self.tokenizer.eos_token_id
        stop_ids = {eos, *sampling.stop_token_ids}
        ids_out: list[list[int]] = []
        lps_out: list[list[float]] = []
        was_training = self.model.training
        self.model.eval()
        order = generation_order(rows, prepared.batch.attention_mask.sum(1).tolist())
        by_row: dict[int, tuple[list[list[int]], list[list[float]]]] = {}
        weights = next(self.model.parameters())
        compute = Precision(self.compute_dtype or weights.dtype, weights.dtype)
        try:
            with compute.autocast(weights.device):
                for start in range(0, len(order), self.batch_size):
                    chunk = order[start : start + self.batch_size]
                    inputs = self._chunk_inputs(prepared.batch, chunk, 1 if self.share_prefix else n)
                    seeds = [sampling.request_seed(i) for i in chunk]
                    ids, lps = self._generate(inputs, sampling, stop_ids, seeds, n)
                    for j, i in enumerate(chunk):
                        by_row[i] = ids[j * n : (j + 1) * n], lps[j * n : (j + 1) * n]
        finally:
            self.model.train(was_training)
        for i in range(len(rows)):
            ids_out += by_row[i][0]
            lps_out += by_row[i][1]
        return RolloutBatch(
            prompts=prepared.batch,
            n=n,
            completion_ids=ids_out,
            completion_text=self.tokenizer.batch_decode(ids_out, skip_special_tokens=True),
            logprobs=lps_out,
            finish_reason=[finish_reason(c, stop_ids) for c in ids_out],
            row_index=[i for i in range(len(rows)) for _ in range(n)],
            row_ids=[r.id for r in rows for _ in range(n)],
        )

    @staticmethod
    def _chunk_inputs(batch, chunk: list[int], repeat: int) -> dict[str, torch.Tensor]:
        """Inputs of the rows ``chunk``, each ``repeat`` times in a row, audio windows kept with their row, without
        the left-padding columns no row of the chunk uses."""
        index = torch.tensor([r for r in chunk for _ in range(repeat)], dtype=torch.long)
        mask = batch.attention_mask.index_select(0, index)
        first = int(mask.any(0).long().argmax())  # left-padded: the first column any row of the chunk uses
        return {
            "input_ids": batch.input_ids.index_select(0, index)[:, first:],
            "attention_mask": mask[:, first:],
            **batch.audio_for(index.tolist()),
        }

    def _shared_prefix(self, inputs: dict[str, torch.Tensor], n: int) -> Any:
        """The KV cache of each prompt but its last token, computed once a row and repeated for its ``n``
        completions (the audio encoded once as well); ``generate`` then starts from the last prompt token.

        ``generate(num_return_sequences=n)`` is not used: it runs the prompt n times, and repeats the audio tensors
        entry by entry, which for clips of several 30 s windows (Audio/Music Flamingo) pairs copies with the wrong
        windows.
        """
        prefix = to_model(
            self.model,
            {**inputs, "input_ids": inputs["input_ids"][:, :-1], "attention_mask": inputs["attention_mask"][:, :-1]},
        )
        # As generate counts positions: from each row's first real token.
        prefix["position_ids"] = (prefix["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model  # under peft
        if "logits_to_keep" in inspect.signature(base.forward).parameters:  # only the cache is wanted: no [B, P, V]
            prefix["logits_to_keep"] = 1
        out = self.model(**prefix, use_cache=True)
        cache = out.past_key_values
        cache.batch_repeat_interleave(n)
        return cache

    def _generate(
        self, inputs: dict, sampling: SamplingConfig, stop_ids: set[int], seeds: list[int | None], n: int
    ) -> tuple[list[list[int]], list[list[float]]]:
        """Completions of one batch (``inputs``: one entry a row, or ``n`` adjacent ones without ``share_prefix``;
        ``seeds``: one per row; each row's ``n`` sequences adjacent in the output) and their tokens' logprobs under
        the sampling distribution (greedy: under the softmax of the processed logits)."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": sampling.max_new_tokens,
            "do_sample": False,  # greedy over the scores; sampling is the SeededSampler's noise
            "return_dict_in_generate": True,
            "eos_token_id": None if sampling.ignore_eos else sorted(stop_ids),
            "pad_token_id": self.tokenizer.pad_token_id,
            "suppress_tokens": self.banned,
        }
        sampler = None if sampling.temperature == 0 else SeededSampler(sampling, seeds, n)
        if sampler is None:
            kwargs["output_scores"] = True
        else:
            kwargs["logits_processor"] = LogitsProcessorList([sampler])
        if sampling.ignore_eos:
            kwargs["min_new_tokens"] = sampling.max_new_tokens
        if n > 1 and self.share_prefix:
            kwargs["past_key_values"] = self._shared_prefix(inputs, n)
            inputs = {k: inputs[k].repeat_interleave(n, dim=0) for k in ("input_ids", "attention_mask")}
        out = self.model.generate(**to_model(self.model, inputs), **kwargs)
        prompt_len = inputs["input_ids"].shape[1]
        seqs = out.sequences[:, prompt_len:]  # [b*n, T]
        if sampler is None:
            scores = torch.stack(out.scores, dim=1).float()  # [b*n, T, V]
            logprobs = torch.log_softmax(scores, -1).gather(-1, seqs[:, : scores.shape[1], None])[..., 0]
        else:
            logprobs = sampler.chosen_logprobs()  # [b*n, T]
        ids, lps = [], []
        for seq, lp in zip(seqs.tolist(), logprobs.tolist(), strict=True):
            length = len(seq)
            if not sampling.ignore_eos:
                for t, tok in enumerate(seq):
                    if tok in stop_ids:
                        length = t + 1
                        break
            ids.append(seq[:length])
            lps.append(lp[:length])
        return ids, lps


def generation_order(rows: list[Row], prompt_lengths: list[int]) -> list[int]:
    """The order in which :class:`HFEngine` batches rows: those of one task together, shortest prompt first.

    ``generate`` decodes a batch until its longest completion ends, so a batch that mixes tasks whose answers
    differ in length (a 32-token meter chain beside a 120-token key chain) decodes the short ones' padding for
    most of its steps. Rows of one task answer at similar lengths. Which rows share a batch does not change their
    completions (each row samples from its own seed), only the time.

    Args:
        rows: the prompts.
        prompt_lengths: [len(rows)] each prompt's length in tokens (audio expanded).

    Returns:
        The row indices, a permutation of ``range(len(rows))``.
    """
    return sorted(range(len(rows)), key=lambda i: (rows[i].task or "", prompt_lengths[i], i))


class SeededSampler(LogitsProcessor):
    """Sampling as the last logits processor of a greedy ``generate``, with one random stream per row.

    Each step it warps the scores as ``generate(do_sample=True)`` would (temperature, then top-k, then top-p:
    transformers' own warpers), and returns ``log_softmax(warped) + g`` with ``g`` standard Gumbel noise: the
    argmax, which greedy decoding takes, is an exact draw from ``softmax(warped)`` (the Gumbel-max trick; Gumbel
    1954, Maddison et al. 2014). Row ``i``'s ``n`` sequences draw their noise from a generator seeded with
    ``seeds[i]`` (a fresh seed from torch's global RNG where it is None), so they depend on nothing else in the
    batch. Tokens the earlier processors set to ``-inf`` (suppressed, filtered) are never drawn.

    Args:
        sampling: temperature (> 0), top_k (-1 or 0: off), top_p.
        seeds: [B] one per row of the batch.
        n: sequences per row (adjacent in the batch).
    """

    def __init__(self, sampling: SamplingConfig, seeds: list[int | None], n: int):
        if sampling.temperature <= 0:
            raise ValueError(f"sampling needs a temperature above 0, got {sampling.temperature}")
        warpers: list[LogitsProcessor] = []
        if sampling.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(sampling.temperature))
        if sampling.top_k > 0:
            warpers.append(TopKLogitsWarper(top_k=sampling.top_k))
        if sampling.top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p=sampling.top_p))
        self.warpers = LogitsProcessorList(warpers)
        self.seeds = [int(torch.randint(2**31, ())) if s is None else s for s in seeds]
        self.n = n
        self.generators: list[torch.Generator] = []
        self.chosen: list[torch.Tensor] = []  # per step: [B*n] the drawn token's log-probability

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logprobs = torch.log_softmax(self.warpers(input_ids, scores).float(), dim=-1)  # [B*n, V]
        if not self.generators:
            self.generators = [torch.Generator(scores.device).manual_seed(s) for s in self.seeds]
        exponential = torch.cat(
            [
                torch.empty(self.n, logprobs.shape[-1], device=scores.device).exponential_(generator=g)
                for g in self.generators
            ]
        )  # [B*n, V]
        noisy = logprobs - exponential.log()  # + Gumbel(0, 1)
        self.chosen.append(logprobs.gather(-1, noisy.argmax(-1, keepdim=True))[:, 0])
        return noisy

    def chosen_logprobs(self) -> torch.Tensor:
        """[B*n, T] the drawn tokens' log-probabilities under the warped distribution, step by step."""
        return torch.stack(self.chosen, dim=1)

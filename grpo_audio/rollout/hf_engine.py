"""Rollouts with transformers' ``generate``: for environments without vLLM, and the reference in tests.

The engine samples from the policy model itself, so ``sync_weights`` only swaps the reference; a policy sharded
over processes (FSDP2) cannot generate on one process alone, so the engine then samples from its own whole copy,
which ``sync_weights`` refreshes from the gathered shards (``own_weights``). Logprobs are
those of the sampling distribution (``output_scores``: logits after temperature / top-k / top-p), the same
quantity vLLM returns with ``logprobs_mode="processed_logprobs"``.
"""

from __future__ import annotations

from typing import Any

import torch

from ..data.schema import Row
from ..logprobs import to_model
from ..models import ModelFamily
from ..parallel import full_state
from .base import RolloutBatch, SamplingConfig, banned_token_ids, check_sampling, finish_reason, prepare_prompts


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
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        family: type[ModelFamily],
        max_model_len: int | None = None,
        batch_size: int = 8,
        own_weights: bool = False,
    ):
        self.model, self.processor, self.family = model, processor, family
        self.own_weights = own_weights
        self.max_model_len, self.batch_size = max_model_len, batch_size
        self.tokenizer = processor.tokenizer
        self.banned = banned_token_ids(family, self.tokenizer)

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
        try:
            # With a seed per row, each row is sampled on its own: its completions depend on nothing else.
            size = 1 if sampling.row_seeds is not None else self.batch_size
            for start in range(0, len(rows), size):
                end = min(len(rows), start + size)
                inputs = self._expanded_inputs(prepared.batch, start, end, n)
                ids, lps = self._generate(inputs, sampling, stop_ids, sampling.request_seed(start))
                ids_out += ids
                lps_out += lps
        finally:
            self.model.train(was_training)
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
    def _expanded_inputs(batch, start: int, end: int, n: int) -> dict[str, torch.Tensor]:
        """Inputs of rows [start, end), each repeated n times, audio windows kept with their row.

        ``generate(num_return_sequences=n)`` is not used: transformers repeats the audio tensors entry by entry,
        which for clips of several 30 s windows (Audio/Music Flamingo) pairs copies with the wrong windows.
        """
        rows = [r for r in range(start, end) for _ in range(n)]
        return {
            "input_ids": batch.input_ids[start:end].repeat_interleave(n, dim=0),
            "attention_mask": batch.attention_mask[start:end].repeat_interleave(n, dim=0),
            **batch.audio_for(rows),
        }

    def _generate(self, inputs: dict, sampling: SamplingConfig, stop_ids: set[int], seed: int | None):
        greedy = sampling.temperature == 0
        if seed is not None:
            torch.manual_seed(seed)
        kwargs: dict[str, Any] = {
            "max_new_tokens": sampling.max_new_tokens,
            "do_sample": not greedy,
            "return_dict_in_generate": True,
            "output_scores": True,
            "eos_token_id": None if sampling.ignore_eos else sorted(stop_ids),
            "pad_token_id": self.tokenizer.pad_token_id,
            "suppress_tokens": self.banned,
        }
        if not greedy:
            kwargs.update(
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k if sampling.top_k > 0 else 0,
            )
        if sampling.ignore_eos:
            kwargs["min_new_tokens"] = sampling.max_new_tokens
        out = self.model.generate(**to_model(self.model, inputs), **kwargs)
        prompt_len = inputs["input_ids"].shape[1]
        seqs = out.sequences[:, prompt_len:]  # [b*n, T]
        scores = torch.stack(out.scores, dim=1).float()  # [b*n, T, V], processed logits
        logprobs = torch.log_softmax(scores, -1).gather(-1, seqs[:, : scores.shape[1], None])[..., 0]
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

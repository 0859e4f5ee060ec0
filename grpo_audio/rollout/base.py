"""The rollout interface: sample G completions per prompt with audio, return them in one typed batch.

Both engines (vLLM, transformers ``generate``) prepare prompts the same way (:func:`prepare_prompts`): decode
each row's audio for the family, render its chat prompt, run the processor once over the batch (which gives the
expanded prompt ids the trainer's logprob passes reuse) and reject prompts longer than the context, naming the
row, before anything is generated.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from ..config import RolloutConfig, shared_fields
from ..data.collate import PromptBatch, collate_prompts
from ..data.schema import Row
from ..errors import UserError
from ..models import ModelFamily


@dataclass
class SamplingConfig:
    """How completions are sampled (the same fields drive both engines).

    Attributes:
        max_new_tokens: completion length cap.
        temperature: sampling temperature (0 = greedy).
        top_p: nucleus mass.
        top_k: top-k; -1 disables.
        seed: per-request seed base for reproducible sampling (None = engine's RNG): row i of a ``generate`` call
            gets ``seed + i``.
        row_seeds: [B] one seed per row of a ``generate`` call, instead of ``seed + i``: a row's completions then
            do not depend on which other rows share its batch or process (:func:`prompt_seed`).
        stop_token_ids: extra token ids that end a completion (the end-of-turn token always does).
        ignore_eos: keep generating past the end-of-turn token (benchmarks).
    """

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int | None = None
    row_seeds: list[int] | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False

    @classmethod
    def from_config(cls, rollout: RolloutConfig, seed: int | None = None) -> SamplingConfig:
        """The sampling settings of a run's ``rollout`` section: every field the two share, and ``seed``."""
        return cls(**shared_fields(cls, rollout), seed=seed)

    def request_seed(self, i: int) -> int | None:
        """The seed of row ``i`` of a ``generate`` call (None: the engine's RNG)."""
        if self.row_seeds is not None:
            return self.row_seeds[i]
        return None if self.seed is None else self.seed + i


def prompt_seed(*parts: object) -> int:
    """A sampling seed in [0, 2**31) from the parts that identify one prompt's draw (run seed, step, round, the
    prompt's slot in the global batch and its row id): the same prompt gets the same completions on any number
    of processes.

    >>> prompt_seed(0, 3, 0, 5, "clip-7") == prompt_seed(0, 3, 0, 5, "clip-7") != prompt_seed(0, 4, 0, 5, "clip-7")
    True
    """
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


@dataclass
class RolloutBatch:
    """B prompts x n completions, flattened prompt-major: completion j of prompt i is at ``i * n + j``.

    Attributes:
        prompts: the processed prompts [B] (expanded ids, attention mask, audio features, rendered text).
        n: completions per prompt (G).
        completion_ids: [B*n] sampled token ids (the stop token included when one ended the completion).
        completion_text: [B*n] decoded completions (special tokens skipped; reasoning tags kept).
        logprobs: [B*n] per-token logprobs of the sampled tokens under the sampling distribution.
        finish_reason: [B*n] ``stop`` (end-of-turn or a stop token) or ``length`` (hit max_new_tokens).
        row_index: [B*n] index of the source row in the list passed to ``generate``.
        row_ids: [B*n] id of the source row.
    """

    prompts: PromptBatch
    n: int
    completion_ids: list[list[int]]
    completion_text: list[str]
    logprobs: list[list[float]]
    finish_reason: list[str]
    row_index: list[int]
    row_ids: list[str]

    def __len__(self) -> int:
        return len(self.completion_ids)

    def padded(self, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded tensors: completion ids [B*n, C], mask [B*n, C], sampled logprobs [B*n, C]."""
        width = max(1, max(len(c) for c in self.completion_ids))
        ids = torch.full((len(self), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(self), width), dtype=torch.long)
        lps = torch.zeros((len(self), width), dtype=torch.float32)
        for i, (c, lp) in enumerate(zip(self.completion_ids, self.logprobs, strict=True)):
            ids[i, : len(c)] = torch.tensor(c, dtype=torch.long)
            mask[i, : len(c)] = 1
            lps[i, : len(lp)] = torch.tensor(lp, dtype=torch.float32)
        return ids, mask, lps


class PromptTooLongError(UserError, ValueError):
    """A prompt (audio tokens included) does not fit the engine's context; names the row."""


class RolloutEngine(Protocol):
    """What the trainer needs from a generation engine."""

    def generate(self, rows: list[Row], n: int, sampling: SamplingConfig) -> RolloutBatch: ...

    def sync_weights(self, model: Any) -> None: ...


@dataclass
class PreparedPrompts:
    """Rows ready for an engine: processed batch plus the decoded clips (16 kHz mono float32)."""

    batch: PromptBatch
    clips: list[np.ndarray]
    lengths: list[int]


def prepare_prompts(
    family: type[ModelFamily],
    processor: Any,
    rows: list[Row],
    max_model_len: int | None,
    max_audio_seconds: float | None = None,
    long_audio: str = "truncate",
) -> PreparedPrompts:
    """Decode audio, render prompts, process the batch, and check every prompt fits ``max_model_len``."""
    if not rows:
        raise ValueError("no rows to generate from")
    clips = [r.load_audio(family, max_seconds=max_audio_seconds, long_audio=long_audio).wave for r in rows]
    batch = collate_prompts(family, processor, rows, clips)
    lengths = batch.attention_mask.sum(-1).tolist()
    if max_model_len is not None:
        too_long = [(r.id, n) for r, n in zip(rows, lengths, strict=True) if n >= max_model_len]
        if too_long:
            detail = ", ".join(f"row '{rid}': {n} tokens" for rid, n in too_long)
            raise PromptTooLongError(
                f"prompts with audio do not fit max_model_len={max_model_len} ({detail}); raise "
                "rollout.max_model_len or cut the audio (data.max_audio_seconds)"
            )
    return PreparedPrompts(batch=batch, clips=clips, lengths=lengths)


def banned_token_ids(family: type[ModelFamily], tokenizer: Any) -> list[int]:
    """Token ids a completion must never contain: the family's audio placeholders and framing tokens.

    A sampled audio placeholder would be read as an audio slot when the completion is scored, and the
    placeholder count would no longer match the audio features. Engines and the trainer's logprob passes
    both exclude these ids, so their distributions stay the same.
    """
    ids = [tokenizer.convert_tokens_to_ids(t) for t in family.audio_special_tokens]
    return sorted({i for i in ids if i is not None and i != tokenizer.unk_token_id})


def check_sampling(n: int, sampling: SamplingConfig, rows: int | None = None) -> None:
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if sampling.temperature == 0 and n > 1:
        raise ValueError(f"greedy decoding gives n identical completions; use temperature > 0 for n={n}")
    if sampling.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {sampling.max_new_tokens}")
    if sampling.row_seeds is not None and rows is not None and len(sampling.row_seeds) != rows:
        raise ValueError(f"{len(sampling.row_seeds)} row seeds for {rows} rows")


def finish_reason(ids: list[int], stop_ids: set[int]) -> str:
    """``stop`` if a stop token ended the completion, else ``length``."""
    return "stop" if ids and ids[-1] in stop_ids else "length"

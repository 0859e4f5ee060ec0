"""Per-token logprobs of sampled completions under a model (policy, old policy, reference).

This is the per-sample path: every completion is scored as its own sequence (prompt with audio, then the
completion), so the audio encoder and the prompt run once per completion. It is the reference the faster
shared-prefix path is checked against.

Sequences are built right-aligned: ``[pad ... pad | prompt | completion (right-padded to C)]``, so the
completion always occupies the last C positions and the logits at positions L-C-1 .. L-2 predict it.
Logits are divided by the sampling temperature, so the logprobs are those of the distribution the rollout
engine sampled from (vLLM's ``processed_logprobs`` with top-p = 1, top-k off).
"""

from __future__ import annotations

from typing import Any

import torch

from .data.collate import PromptBatch


def build_sequences(
    prompts: PromptBatch,
    row_index: list[int],
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    pad_id: int,
) -> dict[str, torch.Tensor]:
    """Model inputs for scoring completions.

    Args:
        prompts: the rollout's prompt batch.
        row_index: [N] prompt row of each completion.
        completion_ids: [N, C] right-padded completion ids.
        completion_mask: [N, C] 1 on completion tokens.
        pad_id: padding token id.

    Returns:
        ``input_ids`` [N, L], ``attention_mask`` [N, L], ``position_ids`` [N, L] and the audio tensors.
    """
    n, c = completion_ids.shape
    prompt_list = [prompts.prompt_ids(r) for r in row_index]
    width = max(len(p) for p in prompt_list) + c
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    for i, p in enumerate(prompt_list):
        start = width - c - len(p)
        input_ids[i, start : width - c] = p
        attention_mask[i, start : width - c] = 1
    input_ids[:, width - c :] = completion_ids
    attention_mask[:, width - c :] = completion_mask
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        **prompts.audio_for(row_index),
    }


def completion_logprobs(
    model: Any,
    prompts: PromptBatch,
    row_index: list[int],
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    pad_id: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
    banned_ids: list[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token logprobs [N, C] of the completions (and entropies [N, C] if asked), differentiable.

    ``banned_ids`` are excluded from the distribution, as the rollout engines exclude them when sampling
    (``rollout.base.banned_token_ids``). Call under ``torch.no_grad()`` for old-policy and reference passes.
    """
    device = next(model.parameters()).device
    inputs = {
        k: v.to(device)
        for k, v in build_sequences(prompts, row_index, completion_ids, completion_mask, pad_id).items()
    }
    c = completion_ids.shape[1]
    out = model(**inputs, use_cache=False, logits_to_keep=c + 1)
    logits = out.logits[:, -c - 1 : -1].float()
    if temperature not in (0.0, 1.0):
        logits = logits / temperature
    if banned_ids:
        logits[..., banned_ids] = float("-inf")
    logp_all = torch.log_softmax(logits, dim=-1)  # [N, C, V]
    logps = logp_all.gather(-1, completion_ids.to(device).unsqueeze(-1)).squeeze(-1)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logps, entropy

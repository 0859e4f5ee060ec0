"""Reference logprobs from transformers for the rollout tests."""

from __future__ import annotations

import numpy as np
import torch

from grpo_audio.data.collate import collate_sequences
from grpo_audio.data.schema import Row


def chord_clip(seconds: float, freq: float = 220.0, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    wave = sum(np.sin(2 * np.pi * freq * r * t) for r in (1.0, 1.26, 1.5)) * (0.5 + 0.5 * np.sin(2 * np.pi * 0.3 * t))
    return (0.2 * wave).astype(np.float32)


def rows_for(clips: list[np.ndarray], prompt: str = "Which chord is played?") -> list[Row]:
    return [Row(id=f"r{i}", audio=c, sampling_rate=16000, prompt=prompt) for i, c in enumerate(clips)]


@torch.no_grad()
def hf_logprobs(
    model, family, processor, rows: list[Row], completions: list[list[int]], exclude_audio_tokens: bool = False
) -> list[torch.Tensor]:
    """Teacher-forced per-token logprobs of ``completions`` under ``model`` (float32, one row at a time).

    ``exclude_audio_tokens``: renormalise without the audio placeholder tokens, as the engines sample.
    """
    from grpo_audio.rollout.base import banned_token_ids

    banned = banned_token_ids(family, processor.tokenizer) if exclude_audio_tokens else []
    out = []
    for row, comp in zip(rows, completions, strict=True):
        clip = row.load_audio(family).wave
        batch = collate_sequences(family, processor, [row], [clip], [comp])
        logits = model(**batch.model_inputs()).logits[0, :-1].float()
        if banned:
            logits[..., banned] = float("-inf")
        lp = torch.log_softmax(logits, -1).gather(-1, batch.input_ids[0, 1:, None])[:, 0]
        out.append(lp[-len(comp) :])
    return out

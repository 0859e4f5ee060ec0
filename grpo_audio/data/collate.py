"""Collators: processor-based batches of prompts (for rollouts) and of prompt + target (SFT, logprob passes).

The prompt goes through the family's processor (which expands the audio placeholder to one token per audio
embedding and computes the audio features); a target is tokenized on its own and appended, exactly as a
sampled completion follows the prompt at rollout time. Labels are -100 on every prompt, audio-placeholder and
padding position, so only the target is learned. Batches are left-padded and carry ``position_ids`` computed
from the attention mask (a forward pass without them would shift every left-padded row's positions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..models import ModelFamily
from .schema import Row

IGNORE_INDEX = -100


@dataclass
class PromptBatch:
    """A batch of prompts with audio.

    Attributes:
        input_ids: [B, P] left-padded prompt ids, audio placeholders expanded.
        attention_mask: [B, P] 1 on real tokens.
        audio: the family's audio tensors, e.g. ``input_features`` [W, 128, 3000] and its mask [W, 3000]
            (W = number of 30 s windows over the batch; one per clip for Qwen2-Audio).
        prompts: [B] rendered prompt strings before audio expansion (what vLLM takes).
        row_ids: [B] ids of the rows.
        audio_windows: [B] entries of the audio tensors that belong to each row, in order (30 s windows for
            the Flamingos; 1 for Qwen2-Audio).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    audio: dict[str, torch.Tensor]
    prompts: list[str]
    row_ids: list[str]
    audio_windows: list[int]

    def audio_for(self, row_index: list[int]) -> dict[str, torch.Tensor]:
        """The audio tensors for a list of rows (repeats allowed), each row's windows kept together."""
        offsets = [0]
        for w in self.audio_windows:
            offsets.append(offsets[-1] + w)
        order = [e for r in row_index for e in range(offsets[r], offsets[r + 1])]
        index = torch.tensor(order, dtype=torch.long)
        return {k: v.index_select(0, index) for k, v in self.audio.items()}

    def prompt_ids(self, row: int) -> torch.Tensor:
        """[P] unpadded prompt ids of one row."""
        return self.input_ids[row][self.attention_mask[row].bool()]


@dataclass
class SequenceBatch:
    """A batch of prompt + target sequences with labels on the target only.

    Attributes:
        input_ids: [B, L] left-padded ids (prompt with audio expanded, then target).
        attention_mask: [B, L].
        position_ids: [B, L] positions counted from each row's first real token.
        labels: [B, L] target ids; -100 on prompt, audio-placeholder and padding positions.
        audio: the family's audio tensors (see ``PromptBatch``).
        prompt_lengths: [B] unpadded prompt length of each row (audio expanded).
        row_ids: [B] ids of the rows.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor
    audio: dict[str, torch.Tensor]
    prompt_lengths: torch.Tensor
    row_ids: list[str]

    def model_inputs(self, with_labels: bool = False) -> dict[str, torch.Tensor]:
        """Keyword arguments for the model's forward."""
        inputs = {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "position_ids": self.position_ids,
            **self.audio,
        }
        if with_labels:
            inputs["labels"] = self.labels
        return inputs


def _audio_tensors(family: type[ModelFamily], processed) -> dict[str, torch.Tensor]:
    return {k: processed[k] for k in family.audio_feature_keys}


def collate_prompts(family: type[ModelFamily], processor, rows: list[Row], clips: list[np.ndarray]) -> PromptBatch:
    """Render each row's chat prompt and run the processor over the batch (one clip per row)."""
    if len(rows) != len(clips):
        raise ValueError(f"{len(rows)} rows but {len(clips)} clips")
    prompts = [row.render(family, processor) for row in rows]  # as the loaders' context check renders them
    # The processors pad text on the left and audio to whole 30 s windows by default; a `padding` argument here
    # would also change the audio padding, which the encoders do not accept.
    processed = family.process(processor, prompts, list(clips))
    audio = _audio_tensors(family, processed)
    entries = next(iter(audio.values())).shape[0]
    if entries == len(rows):
        windows = [1] * len(rows)
    else:  # one entry per 30 s window (Audio / Music Flamingo)
        fe = processor.feature_extractor
        size = int(fe.sampling_rate * fe.chunk_length)
        windows = [max(1, -(-len(c) // size)) for c in clips]
        if sum(windows) != entries:
            raise RuntimeError(f"audio windows {windows} do not add up to the processor's {entries} entries")
    return PromptBatch(
        input_ids=processed["input_ids"],
        attention_mask=processed["attention_mask"],
        audio=audio,
        prompts=prompts,
        row_ids=[r.id for r in rows],
        audio_windows=windows,
    )


def target_token_ids(tokenizer, target: str, append_eos: bool = True) -> list[int]:
    """A supervised target's token ids: its text without special tokens, then the end-of-turn token a finished
    completion ends with (``append_eos``)."""
    ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    return ids + [tokenizer.eos_token_id] if append_eos else ids


def collate_sequences(
    family: type[ModelFamily],
    processor,
    rows: list[Row],
    clips: list[np.ndarray],
    targets: list[str] | list[list[int]],
    append_eos: bool = True,
) -> SequenceBatch:
    """Prompt + target batches with labels on the target only.

    Args:
        targets: per row, the target text (tokenized without special tokens) or its token ids (a sampled
            completion, taken as is).
        append_eos: end text targets with the tokenizer's end-of-turn token, as a finished completion does.
    """
    if not (len(rows) == len(clips) == len(targets)):
        raise ValueError(f"{len(rows)} rows, {len(clips)} clips and {len(targets)} targets must match")
    tok = processor.tokenizer
    prompts = collate_prompts(family, processor, rows, clips)
    seqs: list[list[int]] = []
    prompt_lengths: list[int] = []
    for i, target in enumerate(targets):
        prompt_ids = prompts.input_ids[i][prompts.attention_mask[i].bool()].tolist()
        if isinstance(target, str):
            target_ids = target_token_ids(tok, target, append_eos)
        else:
            target_ids = list(target)
        seqs.append(prompt_ids + target_ids)
        prompt_lengths.append(len(prompt_ids))
    width = max(len(s) for s in seqs)
    pad = tok.pad_token_id
    input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE_INDEX, dtype=torch.long)
    for i, (seq, plen) in enumerate(zip(seqs, prompt_lengths, strict=True)):
        start = width - len(seq)
        input_ids[i, start:] = torch.tensor(seq)
        attention_mask[i, start:] = 1
        labels[i, start + plen :] = torch.tensor(seq[plen:], dtype=torch.long)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return SequenceBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        labels=labels,
        audio=prompts.audio,
        prompt_lengths=torch.tensor(prompt_lengths),
        row_ids=prompts.row_ids,
    )

"""Supervised rows replayed beside GRPO's policy loss: the pretraining mix of PPO-ptx (Ouyang et al. 2022,
"Training language models to follow instructions with human feedback", eq. 2), with the recipe's supervised data
in place of pretraining text.

GRPO's update moves a policy only where a group's rewards differ; what the shared weights learn there also moves
the answers to prompts it never samples (the embedded recipe's chord and instrument questions, results.md "Where
the zero comes from"). A replayed row's negative log-likelihood, weighted by ``grpo.replay_coef``, pulls the
policy back toward the supervised targets on every question type. Each step takes ``grpo.replay_rows`` rows in a
seeded order that depends only on the step, so a resumed run replays what an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .data.collate import PromptBatch, collate_prompts, target_token_ids
from .data.schema import BadRow, Row, ValidationReport, apply_policy
from .models import ModelFamily
from .sft import target_text

_REPLAY_STREAM = 7919  # keeps the replay order's random numbers apart from the prompts' (data.order.PromptOrder)


@dataclass
class ReplayBatch:
    """One step's replayed rows on one process, as completions the logprob pass scores (one per prompt).

    R = this process's replayed rows; T = the longest target's token count.

    Attributes:
        rows: [R] the replayed rows.
        prompts: the rows' prompt batch (token ids and audio features), as a rollout's.
        target_ids: [R, T] int64, each row's target (``sft.target_text``, ``auto``: the chain of thought and answer
            where the row has a chain, the answer otherwise) then the end-of-sequence token, right-padded.
        target_mask: [R, T] int64, 1 on target tokens.
    """

    rows: list[Row]
    prompts: PromptBatch
    target_ids: torch.Tensor
    target_mask: torch.Tensor

    def __len__(self) -> int:
        return len(self.rows)


def check_replay_rows(rows: list[Row], tokenizer, banned_ids: list[int], bad_rows: str = "raise") -> list[Row]:
    """The rows with something to train on, before any step runs: a row is bad with no answer nor caption, or when
    its target holds a token the policy never samples (an audio placeholder written out in its text: its logprob is
    -inf, ``rollout.base.banned_token_ids``). ``bad_rows`` (``data.bad_rows``) as for every manifest: ``raise``
    lists every bad row in one ``DataError`` (a ``ValueError``) naming its id and field; ``skip`` drops them with
    a warning. Returns the good rows in order."""
    banned = set(banned_ids)
    good, bad = [], []
    for row in rows:
        if row.answer is None and row.caption is None:
            bad.append(BadRow(row.id, "answer", "a replayed row needs an answer or a caption"))
            continue
        found = banned.intersection(target_token_ids(tokenizer, target_text(row, "auto")))
        if found:
            tokens = ", ".join(repr(tokenizer.convert_ids_to_tokens(i)) for i in sorted(found))
            field = "thinking" if row.thinking and found & set(target_token_ids(tokenizer, row.thinking)) else "answer"
            bad.append(BadRow(row.id, field, f"the replayed target holds {tokens}, a token the policy never samples"))
            continue
        good.append(row)
    return apply_policy(ValidationReport(good, bad, {}, []), "data.replay", bad_rows, len(rows), None)


def replay_indices(num_rows: int, step: int, per_step: int, seed: int) -> list[int]:
    """The ``per_step`` row indices step ``step`` replays: positions ``step * per_step`` on of an endless sequence
    of seeded permutations of ``range(num_rows)``, one per pass over the rows (its own random stream, apart from
    the prompts' order).

    >>> sorted(replay_indices(5, 0, 3, 0) + replay_indices(5, 1, 3, 0)[:2])  # the first pass: every row once
    [0, 1, 2, 3, 4]
    """
    passes: dict[int, np.ndarray] = {}
    out = []
    for position in range(step * per_step, (step + 1) * per_step):
        epoch, i = divmod(position, num_rows)
        if epoch not in passes:
            passes[epoch] = np.random.default_rng([seed, _REPLAY_STREAM, epoch]).permutation(num_rows)
        out.append(int(passes[epoch][i]))
    return out


def replay_batch(family: type[ModelFamily], processor, rows: list[Row]) -> ReplayBatch:
    """The :class:`ReplayBatch` of ``rows``: their prompts built as the rollouts' are, and their targets."""
    tokenizer = processor.tokenizer
    clips = [r.load_audio(family).wave for r in rows]
    prompts = collate_prompts(family, processor, rows, clips)
    targets = [target_token_ids(tokenizer, target_text(r, "auto")) for r in rows]
    width = max(len(t) for t in targets)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, t in enumerate(targets):
        ids[i, : len(t)] = torch.tensor(t, dtype=torch.long)
        mask[i, : len(t)] = 1
    return ReplayBatch(rows=rows, prompts=prompts, target_ids=ids, target_mask=mask)

"""Groups of completions across rollout rounds: dynamic sampling (DAPO) keeps the groups whose rewards differ (the
only ones that move the policy) and tops the step up with groups of new prompts, which :func:`merge_groups` joins
into one batch again.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from ..advantages import group_advantages
from ..data.collate import collate_prompts
from ..data.schema import Row
from ..models import ModelFamily
from ..rewards import RewardOutput
from .base import RolloutBatch


class Group(NamedTuple):
    """One prompt's G completions: the row, the round's batch and rewards it is in, and its place there."""

    row: Row
    rollouts: RolloutBatch
    rewards: RewardOutput
    index: int


def spread_groups(rows: list[Row], rollouts: RolloutBatch, rewards: RewardOutput, group_size: int) -> list[Group]:
    """The groups of a round whose rewards are not all equal, in order."""
    _, zero, _ = group_advantages(torch.tensor(rewards.total), group_size)
    return [Group(rows[i], rollouts, rewards, i) for i in range(len(rows)) if not zero[i]]


def merge_groups(
    groups: list[Group], family: type[ModelFamily], processor: Any, group_size: int
) -> tuple[list[Row], RolloutBatch, RewardOutput]:
    """One batch of ``groups`` taken from several rounds: their rows, a ``RolloutBatch`` (the prompts processed
    again with ``processor``, together) and a ``RewardOutput``, group after group."""
    g = group_size
    rows = [group.row for group in groups]
    clips = [r.load_audio(family).wave for r in rows]
    prompts = collate_prompts(family, processor, rows, clips)
    fields: dict[str, list] = {"completion_ids": [], "completion_text": [], "logprobs": [], "finish_reason": []}
    total, components = [], {}
    for _, batch, rewards, i in groups:
        sl = slice(i * g, (i + 1) * g)
        for k in fields:
            fields[k] += getattr(batch, k)[sl]
        total += rewards.total[sl]
        for name, vals in rewards.components.items():
            components.setdefault(name, []).extend(vals[sl])
    rollouts = RolloutBatch(
        prompts=prompts,
        n=g,
        row_index=[i for i in range(len(rows)) for _ in range(g)],
        row_ids=[r.id for r in rows for _ in range(g)],
        **fields,
    )
    return rows, rollouts, RewardOutput(total=total, components=components)

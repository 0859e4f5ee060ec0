"""Group-relative advantages (pure tensors, no I/O).

For each prompt's G completions with rewards r_1..r_G, the advantage of completion i is

    A_i = (r_i - mean(r)) / (max(std, std_floor) + 1e-4)

where ``std`` is the group's standard deviation (``scale_rewards="group"``, GRPO), the whole batch's
(``"batch"``), or 1 (``"none"``, Dr. GRPO, arXiv 2503.20783, which argues the division biases towards easy and
hard prompts). The 1e-4 matches TRL; ``std_floor`` (default 0) keeps a group whose rewards differ by a hair
from getting advantages of +-2 out of noise. Groups whose rewards are all equal give zero advantages and no
gradient; they are reported (``frac_zero_std_groups``) and can be dropped and refilled by the trainer (DAPO's
dynamic sampling, arXiv 2503.14476).

``negative_weight`` (default 1, GRPO) multiplies the negative advantages after scaling, the positive ones kept:
0 is positive-sample reinforcement alone and values between weight what NSR and PSR each do, after Zhu et al.,
"The Surprising Effectiveness of Negative Reinforcement in LLM Reasoning" (arXiv 2506.01347): pushing down
failed samples keeps the policy's entropy (and pass@k), pushing up the successful ones sharpens it (pass@1). In
the embedded recipe's small model the entropy rose under either (benchmarks/results.md, "Positive-sample
reinforcement").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .choices import SCALE_REWARDS

EPS = 1e-4


@dataclass
class AdvantageStats:
    """Statistics of one batch of advantages (floats, for logging)."""

    reward_mean: float
    reward_std: float
    frac_zero_std_groups: float
    advantage_mean: float
    advantage_std: float
    advantage_abs_mean: float


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    scale_rewards: str = "group",
    std_floor: float = 0.0,
    negative_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, AdvantageStats]:
    """Group-relative advantages.

    Args:
        rewards: [B*G] total reward per completion, prompt-major (completion j of prompt i at i*G + j).
        group_size: G.
        scale_rewards: ``group`` | ``batch`` | ``none``.
        std_floor: lower bound on the std used for scaling.
        negative_weight: factor on negative advantages (>= 0; 1 is GRPO, 0 reinforces successes only).

    Returns:
        advantages [B*G], zero_std [B] (True for groups whose rewards are all equal), stats.

    >>> adv, zero, _ = group_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0]), 2)
    >>> [round(a, 3) for a in adv.tolist()], zero.tolist()
    ([0.707, -0.707, 0.0, 0.0], [False, True])
    """
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be group, batch or none, got {scale_rewards!r}")
    if negative_weight < 0:
        raise ValueError(f"negative_weight must be >= 0, got {negative_weight}")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.view(-1, group_size)  # [B, G]
    mean = grouped.mean(dim=1, keepdim=True)
    group_std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(mean)
    zero_std = torch.isclose(group_std.squeeze(1), torch.zeros_like(group_std.squeeze(1)))
    advantages = grouped - mean
    if scale_rewards == "group":
        advantages = advantages / (group_std.clamp(min=std_floor) + EPS)
    elif scale_rewards == "batch":
        batch_std = rewards.std() if rewards.numel() > 1 else torch.zeros(())
        advantages = advantages / (batch_std.clamp(min=std_floor) + EPS)
    advantages = torch.where(advantages < 0, advantages * negative_weight, advantages).reshape(-1)
    stats = AdvantageStats(
        reward_mean=rewards.mean().item(),
        reward_std=rewards.std().item() if rewards.numel() > 1 else 0.0,
        frac_zero_std_groups=zero_std.float().mean().item(),
        advantage_mean=advantages.mean().item(),
        advantage_std=advantages.std().item() if advantages.numel() > 1 else 0.0,
        advantage_abs_mean=advantages.abs().mean().item(),
    )
    return advantages, zero_std, stats

"""One GRPO step's metrics, over every process: what ``metrics.jsonl`` and TensorBoard get per step.

Rewards (each function's over the completions it applies to), advantages, completion lengths and truncation are
computed over all processes' completions; loss statistics (``loss.LossStats``) are averaged over the processes
(the extremes of ``*_min`` / ``*_max``); timings are this process's. Names follow TRL's where TRL has the metric
(``reward/mean``, ``kl``, ``clip_ratio``, ``frac_zero_std_groups``, ``completions/mean_length``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .parallel import Parallel
from .rewards import RewardOutput
from .step import StepBatch, UpdateResult


def step_metrics(
    batch: StepBatch,
    update: UpdateResult,
    parallel: Parallel,
    num_iterations: int,
    skipped_steps: int,
    sync_s: float,
    step_s: float,
) -> dict[str, Any]:
    """The metrics of one step (every process calls it: it gathers).

    Args:
        batch: the step's data on this process; ``update``: what its optimiser steps did.
        parallel: the processes.
        num_iterations: optimiser passes over the batch (``grpo.num_iterations``), for the update's tokens/s.
        skipped_steps: steps skipped so far (non-finite updates).
        sync_s, step_s: seconds of the weight sync and of the whole step.
    """
    world, device = parallel.process.world_size, parallel.process.device
    adv = batch.advantage_stats
    update_s = batch.logprob_s + update.update_s  # every logprob pass and optimiser step
    rewards = gathered_rewards(batch.rewards, parallel)
    lengths = _gather([len(c) for c in batch.rollouts.completion_ids], parallel)
    truncated = _gather([r == "length" for r in batch.rollouts.finish_reason], parallel)
    loss_stats = {}
    for k, v in update.loss_stats.items():
        if k != "policy_loss":
            op = "min" if k.endswith("_min") else "max" if k.endswith("_max") else "sum"
            value = parallel.reduce(torch.tensor(_aggregate(k, v), device=device), op).item()
            loss_stats[k] = value / world if op == "sum" else value
    batch_loss = torch.tensor(float(np.mean(update.batch_losses)), device=device)
    replay = {}
    if update.replay_nll:  # each process's token sum over the global normaliser (tokens / world): their mean
        nll = torch.tensor(float(np.mean(update.replay_nll)), device=device)
        replay["replay/nll"] = parallel.sum(nll).item() / world
    zero_std = torch.tensor(batch.frac_zero_std_groups, device=device)
    return {
        **rewards.metrics(),
        "reward/std": torch.tensor(rewards.total).std(unbiased=False).item(),
        "advantages/mean": adv.advantage_mean,
        "advantages/std": adv.advantage_std,
        "advantages/abs_mean": adv.advantage_abs_mean,
        "frac_zero_std_groups": parallel.sum(zero_std).item() / world,  # equal group counts everywhere
        "resample_rounds": float(batch.resample_rounds),
        "loss": parallel.sum(batch_loss).item() / world,  # the batch loss, over the iterations and processes
        **loss_stats,
        **replay,
        "completions/mean_length": lengths.mean().item(),
        "completions/min_length": lengths.min().item(),
        "completions/max_length": lengths.max().item(),
        "completions/truncation_rate": truncated.mean().item(),
        "grad_norm": update.grad_norm,
        "skipped": float(update.applied == 0),
        "skipped_steps": float(skipped_steps),
        "lr": update.lr,
        "tokens_per_s/rollout": lengths.sum().item() / world / max(batch.rollout_s, 1e-9),
        "tokens_per_s/update": lengths.sum().item() / world * num_iterations / max(update_s, 1e-9),
        "time/rollout_s": batch.rollout_s,
        "time/logprob_s": batch.logprob_s,  # old policy and reference
        "time/update_s": update_s,
        "time/sync_s": sync_s,
        "time/step_s": step_s,
        "non_finite": update.non_finite,  # what was NaN/Inf, "" if nothing (logged as text)
    }


def gathered_rewards(rewards: RewardOutput, parallel: Parallel) -> RewardOutput:
    """One step's rewards over every process (each process scored the same reward functions)."""
    if not parallel.process.distributed:
        return rewards
    names = sorted(rewards.components)
    return RewardOutput(
        total=_gather(rewards.total, parallel).tolist(),
        components={n: _gather(rewards.components[n], parallel).tolist() for n in names},
        errors={n: int(_gather([rewards.errors.get(n, 0)], parallel).sum().item()) for n in names},
    )


def _gather(values: list[float], parallel: Parallel) -> torch.Tensor:
    """[world * n] float64: every process's ``values`` (n of them everywhere), in rank order."""
    return parallel.gather(torch.tensor(values, dtype=torch.float64, device=parallel.process.device)).cpu()


def _aggregate(name: str, values: list[float]) -> float:
    """One step's value of a loss statistic from its micro-batch values: the extreme of ``*_min`` / ``*_max``
    statistics, the mean of the others."""
    if name.endswith("_min"):
        return float(np.min(values))
    if name.endswith("_max"):
        return float(np.max(values))
    return float(np.mean(values))


def ratio_warning(metrics: dict[str, Any], band: list[float], step: int) -> str | None:
    """What to warn when a step's mean importance-sampling ratio (trainer vs rollout engine) leaves ``band``
    (``grpo.is_ratio_band``): the two no longer compute the same distribution. None inside it, or when the step
    was skipped."""
    low, high = band
    if metrics["skipped"] or low <= metrics["is_ratio_mean"] <= high:
        return None
    return (
        f"step {step}: mean importance-sampling ratio {metrics['is_ratio_mean']:.3f} (min "
        f"{metrics['is_ratio_min']:.3f}, max {metrics['is_ratio_max']:.3f}) is outside [{low:g}, {high:g}]: the "
        "trainer's and the rollout engine's distributions differ (sampling settings, weight sync, dtype)"
    )

"""The data of one GRPO step, from the rollouts to the update (torchtune's ``GRPOTrajectory``), and what the
update did. The trainer's phases (``trainer.py``) fill a :class:`StepBatch` in order: collect rollouts and score
them, advantages, logprobs, update."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .advantages import AdvantageStats
from .data.schema import Row
from .replay import ReplayBatch
from .rewards import RewardOutput
from .rollout import RolloutBatch


@dataclass
class StepBatch:
    """One step's rollouts and everything computed from them, on one process.

    N = P * G completions: P prompts of this process, G completions each, completion ``p * G + j`` written for
    ``rows[p]``. C = the longest completion's token count.

    Attributes:
        rows: [P] the prompts' dataset rows.
        rollouts: the engine's output: the prompt batch (token ids and audio features of the P prompts), and [N]
            completion ids, texts, engine logprobs and finish reasons.
        rewards: [N] weighted reward totals, and [N] values per reward function.
        completion_ids: [N, C] int64, right-padded with the pad id.
        completion_mask: [N, C] int64, 1 on completion tokens.
        sampling_logps: [N, C] float32, the engine's logprobs of the sampled tokens (0 on padding).
        advantages: [N] float32, group-relative (``advantages.group_advantages``); None until computed.
        advantage_stats: the statistics of that computation.
        old_logps: [N, C] float32, the policy's logprobs before this step's first update; None with one
            iteration per step (the update's own detached logprobs stand in).
        ref_logps: [N, C] float32, the reference policy's logprobs; None when ``beta`` is 0.
        micro_batches: index lists into N, one forward and backward each; whole groups on the shared-prefix path.
        replay: this process's replayed supervised rows (``grpo.replay_coef``); None without replay.
        frac_zero_std_groups: share of this process's first-round groups whose rewards were all equal.
        resample_rounds: dynamic-sampling rounds run to replace such groups.
        rollout_s: seconds spent in the engine (all rounds).
        logprob_s: seconds spent on the old policy's and the reference's logprobs.
    """

    rows: list[Row]
    rollouts: RolloutBatch
    rewards: RewardOutput
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    sampling_logps: torch.Tensor
    frac_zero_std_groups: float = 0.0
    resample_rounds: int = 0
    rollout_s: float = 0.0
    logprob_s: float = 0.0
    advantages: torch.Tensor | None = None
    advantage_stats: AdvantageStats | None = None
    old_logps: torch.Tensor | None = None
    ref_logps: torch.Tensor | None = None
    micro_batches: list[list[int]] = field(default_factory=list)
    replay: ReplayBatch | None = None

    @property
    def group_size(self) -> int:
        return self.rollouts.n


@dataclass
class UpdateResult:
    """What ``num_iterations`` optimiser steps over one :class:`StepBatch` did.

    Attributes:
        batch_losses: per iteration run, the batch loss (the sum of its micro-batch losses, each normalised to
            the whole batch).
        grad_norm: the last iteration's gradient norm before clipping.
        loss_stats: per loss statistic (``policy_loss.LossStats`` fields), its micro-batch values.
        applied: iterations whose optimiser step ran.
        non_finite: what was NaN/Inf ("" if nothing); from that iteration on nothing was applied.
        update_s: seconds spent in logprob passes and optimiser steps.
        lr: the learning rate of the step's first optimiser step.
        replay_nll: per iteration run, the replayed targets' mean token negative log-likelihood (this process's
            part); empty without replay.
    """

    batch_losses: list[float] = field(default_factory=list)
    grad_norm: float = 0.0
    loss_stats: dict[str, list[float]] = field(default_factory=dict)
    applied: int = 0
    non_finite: str = ""
    update_s: float = 0.0
    lr: float = 0.0
    replay_nll: list[float] = field(default_factory=list)


@dataclass
class StepCounts:
    """Where a run is.

    Attributes:
        step: the steps run.
        applied: the last step whose update applied (at least one optimiser step).
        saved: the last step checkpointed.
        skipped: the steps skipped so far (nothing applied: a non-finite loss or gradient norm).
        skipped_in_a_row: the skipped steps since the last applied one.
    """

    step: int = 0
    applied: int = 0
    saved: int = 0
    skipped: int = 0
    skipped_in_a_row: int = 0

    def finish(self, update: UpdateResult) -> None:
        """Count the step whose update did ``update``."""
        self.step += 1
        skipped = update.applied == 0
        if not skipped:
            self.applied = self.step
        self.skipped_in_a_row = self.skipped_in_a_row + 1 if skipped else 0
        self.skipped += skipped

    def check_skipped(self, max_skipped: int, non_finite: str) -> None:
        """Raise ``FloatingPointError`` when ``max_skipped`` steps in a row were skipped (``train.max_skipped_steps``;
        ``non_finite``: what the last one's update found not finite)."""
        if self.skipped_in_a_row >= max_skipped:
            raise FloatingPointError(
                f"step {self.step}: {non_finite}; {self.skipped_in_a_row} steps in a row skipped "
                f"(train.max_skipped_steps = {max_skipped}); nothing of them was applied or saved"
            )

    def save_due(self, save_every: int, max_steps: int) -> bool:
        """Whether the step just counted is checkpointed: every ``save_every`` steps and at ``max_steps``. A skipped
        step changed nothing, so it writes no checkpoint, except at the end when updates applied since the last
        checkpoint would otherwise be lost."""
        due = (save_every and self.step % save_every == 0) or self.step == max_steps
        skipped = self.applied != self.step
        return bool(due) and (not skipped or (self.step == max_steps and self.applied > self.saved))

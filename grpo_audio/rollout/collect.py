"""A GRPO step's rollouts: this process's prompts, drawn in the run's order, each sampled G times with a seed of its
own and scored; with dynamic sampling (DAPO), groups whose rewards are all equal (they move nothing) replaced by
groups of new prompts, up to ``grpo.max_resample_rounds`` extra rounds.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

from ..advantages import group_advantages
from ..config import RunConfig
from ..data.order import PromptOrder
from ..data.schema import Row
from ..models import ModelFamily
from ..rewards import RewardOutput
from .base import RolloutBatch, SamplingConfig, prompt_seed
from .groups import merge_groups, spread_groups

logger = logging.getLogger(__name__)


@dataclass
class Collected:
    """What one step's rollout rounds give.

    Attributes:
        rows: [P] this process's prompts.
        rollouts: their [P*G] completions.
        rewards: the completions' rewards.
        frac_zero_std_groups: the share of the first round's groups whose rewards were all equal.
        resample_rounds: the extra rounds dynamic sampling ran.
        rollout_s: seconds spent sampling and scoring.
    """

    rows: list[Row]
    rollouts: RolloutBatch
    rewards: RewardOutput
    frac_zero_std_groups: float
    resample_rounds: int
    rollout_s: float


class RolloutCollector:
    """Draws each step's prompts from ``rows`` in ``order`` (every process walks the same order and takes its own
    slice of the global batch) and samples and scores them.

    Args:
        rows: the training rows; ``order``: where the run is in its walk over them.
        process: this process (``parallel.Process``: rank, world size).
        family, processor: the model family and the processor prompts are built with (merging rounds' groups).
        config: the run's settings (``grpo.num_generations``, dynamic sampling, ``rollout``, the seed).
    """

    def __init__(
        self,
        rows: list[Row],
        order: PromptOrder,
        process: Any,
        family: type[ModelFamily],
        processor: Any,
        config: RunConfig,
    ):
        self.rows, self.order, self.process = rows, order, process
        self.family, self.processor, self.cfg = family, processor, config

    def next_rows(self, k: int) -> list[Row]:
        """This process's k prompts: every process walks the same order and takes its own slice of k * world."""
        world, rank = self.process.world_size, self.process.rank
        rows = [self.rows[i] for i in self.order.take(k * world)]
        return rows[rank * k : (rank + 1) * k]

    def collect(self, engine: Any, rewards: Any, step: int) -> Collected:
        """Step ``step``'s rollouts from ``engine``, scored by ``rewards`` (a ``RewardSet``)."""
        g = self.cfg.grpo.num_generations
        want = self.cfg.train.prompts_per_step // self.process.world_size  # this process's share
        rows = self.next_rows(want)
        t = time.perf_counter()
        rollouts, scored = self.rollout(engine, rewards, rows, step, round_=0)
        collected = Collected(rows, rollouts, scored, 0.0, 0, time.perf_counter() - t)
        _, zero, stats = group_advantages(torch.tensor(scored.total), g)
        collected.frac_zero_std_groups = stats.frac_zero_std_groups
        if self.cfg.grpo.dynamic_sampling and zero.any():
            self._resample(engine, rewards, step, want, collected)
        return collected

    def rollout(
        self, engine: Any, rewards: Any, rows: list[Row], step: int, round_: int
    ) -> tuple[RolloutBatch, RewardOutput]:
        """Sample and score ``rows`` (this process's slice of the step's prompts). Each prompt's seed comes from the
        run seed, the step, the round and its slot in the global batch, so it gets the same completions whatever
        the number of processes."""
        first = self.process.rank * len(rows)
        seeds = [prompt_seed(self.cfg.seed, step, round_, first + i, r.id) for i, r in enumerate(rows)]
        sampling = SamplingConfig.from_config(self.cfg.rollout)
        sampling.row_seeds = seeds
        rollouts = engine.generate(rows, n=self.cfg.grpo.num_generations, sampling=sampling)
        return rollouts, rewards.score_rows(rows, rollouts.completion_text, rollouts.row_index)

    def _resample(self, engine: Any, rewards: Any, step: int, want: int, collected: Collected) -> None:
        """Dynamic sampling: the first round's groups with a reward spread, topped up from rounds of new prompts to
        ``want`` groups and merged into ``collected`` (left as it was when no group has a spread)."""
        g = self.cfg.grpo.num_generations
        pool = spread_groups(collected.rows, collected.rollouts, collected.rewards, g)
        for round_ in range(self.cfg.grpo.max_resample_rounds):
            if len(pool) >= want:
                break
            more = self.next_rows(want)
            t = time.perf_counter()
            more_rollouts, more_rewards = self.rollout(engine, rewards, more, step, round_=round_ + 1)
            collected.rollout_s += time.perf_counter() - t
            collected.resample_rounds += 1
            pool += spread_groups(more, more_rollouts, more_rewards, g)
        if len(pool) < want:
            logger.warning(
                "step %d: %d of %d groups have a reward spread after %d resampling round(s) "
                "(grpo.max_resample_rounds); %s",
                step + 1,
                len(pool),
                want,
                collected.resample_rounds,
                "the step trains on those only" if pool else "no group moves the policy this step",
            )
        if pool:
            merged = merge_groups(pool[:want], self.family, self.processor, g)
            collected.rows, collected.rollouts, collected.rewards = merged

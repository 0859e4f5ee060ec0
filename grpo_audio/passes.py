"""A GRPO step's passes through the policy, micro-batch by micro-batch: the completions' logprobs without
gradients (the old policy's, the reference's) and the backward passes of the policy loss and of the replayed rows'
negative log-likelihood.

Each micro-batch is one forward of the wrapped ``logprobs.LogprobModule`` (DDP / FSDP2, ``parallel.py``) under the
run's autocast, at the sampling settings the rollout engine drew with (temperature, top-k, top-p, banned tokens),
so that the trainer's distribution is the engine's. Gradients are reduced over the processes once, in the policy
loss's last micro-batch, whose backward comes after the replayed rows'.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from .config import RolloutConfig
from .logprobs import micro_batches
from .loss import LossConfig, policy_loss
from .parallel import Parallel
from .precision import Precision
from .replay import ReplayBatch
from .step import StepBatch


@dataclass
class StepPasses:
    """How a run's passes through the policy are made.

    Attributes:
        parallel: the processes (gradient reduction, the device).
        precision: the run's dtypes (the autocast the passes run under).
        rollout: the sampling settings the completions were drawn with.
        pad_id: the tokenizer's padding id.
        banned_ids: token ids a completion may not hold (masked out of the distribution, as in the engine).
        micro_batch_size: completions (or replayed rows) per forward.
        path: the logprob path (``logprobs.choose_path``).
    """

    parallel: Parallel
    precision: Precision
    rollout: RolloutConfig
    pad_id: int
    banned_ids: list[int]
    micro_batch_size: int
    path: str

    def logprobs(
        self, model: Any, batch: StepBatch, idx: list[int], entropy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[M, C] logprobs of the completions ``idx`` of ``batch`` under ``model`` (a wrapped ``LogprobModule``),
        and their [M, C] entropies with ``entropy``."""
        with self.precision.autocast(self.parallel.process.device):
            return model(
                batch.rollouts.prompts,
                batch.rollouts.row_index,
                batch.group_size,
                idx,
                batch.completion_ids,
                batch.completion_mask,
                self.pad_id,
                temperature=self.rollout.temperature or 1.0,
                with_entropy=entropy,
                banned_ids=self.banned_ids,
                top_k=self.rollout.top_k,
                top_p=self.rollout.top_p,
            )

    def logprobs_without_grad(self, model: Any, batch: StepBatch) -> torch.Tensor:
        """[N, C] logprobs of every completion of ``batch`` under ``model``, on the CPU, without gradients."""
        with torch.no_grad():
            return torch.cat([self.logprobs(model, batch, idx)[0] for idx in batch.micro_batches]).cpu()

    def policy_backward(
        self, model: Any, batch: StepBatch, loss_cfg: LossConfig, num_tokens: torch.Tensor, stats: dict[str, list]
    ) -> float:
        """Backward of the policy loss (``loss.policy_loss``) over ``batch``, micro-batch by micro-batch, the
        gradients reduced over the processes in the last one. ``num_tokens``: every process's completion tokens /
        the number of processes. Appends each micro-batch's loss statistics to ``stats``; returns the batch's loss
        on this process."""
        batch_loss = 0.0
        for k, idx in enumerate(batch.micro_batches):
            self.parallel.sync_gradients(model, k == len(batch.micro_batches) - 1)
            lps, ent = self.logprobs(model, batch, idx, entropy=True)
            old = batch.old_logps[idx].to(lps.device) if batch.old_logps is not None else lps.detach()
            loss, st = policy_loss(
                lps,
                old,
                batch.advantages[idx].to(lps.device),
                batch.completion_mask[idx].to(lps.device),
                loss_cfg,
                ref_logps=batch.ref_logps[idx].to(lps.device) if batch.ref_logps is not None else None,
                sampling_logps=batch.sampling_logps[idx].to(lps.device),
                entropies=ent,
                num_sequences=len(batch.rollouts),
                num_tokens=num_tokens,
            )
            loss.backward()
            batch_loss += st.policy_loss
            for name, value in asdict(st).items():
                stats.setdefault(name, []).append(value)
        return batch_loss

    def replay_backward(self, model: Any, replay: ReplayBatch, num_tokens: torch.Tensor, coef: float) -> float:
        """Backward of ``coef`` x the replayed targets' mean token negative log-likelihood (under the policy at
        temperature 1, over every process's target tokens), micro-batch by micro-batch, without reducing gradients
        (the policy loss's last micro-batch does). Returns this process's NLL sum over ``num_tokens`` (every
        process's target tokens / the number of processes): the processes' values average to the mean."""
        nll_sum = 0.0
        rows = list(range(len(replay)))
        for idx in micro_batches(len(replay), 1, self.micro_batch_size, self.path):
            self.parallel.sync_gradients(model, False)
            with self.precision.autocast(self.parallel.process.device):
                lps, _ = model(
                    replay.prompts,
                    rows,
                    1,
                    idx,
                    replay.target_ids,
                    replay.target_mask,
                    self.pad_id,
                    banned_ids=self.banned_ids,
                )
            nll = -(lps * replay.target_mask[idx].to(lps.device)).sum() / num_tokens.to(lps.device)
            (coef * nll).backward()
            nll_sum += float(nll.detach())
        return nll_sum

"""The GRPO loop for audio-language models.

One step, one method per phase (``train_step``), its data in a ``step.StepBatch``:

1. ``collect_rollouts``: take P prompts; the rollout engine samples G completions each (vLLM with audio, or
   transformers); rewards through the safety net (``RewardSet.score_rows``); with dynamic sampling (DAPO), groups
   whose rewards are all equal are replaced by new ones;
2. ``compute_advantages``: group-relative advantages;
3. ``compute_logprobs``: micro-batches on the logprob path chosen once (``logprobs.choose_path``), the old
   policy's logprobs (several iterations) and the reference's (beta > 0);
4. ``update``: ``num_iterations`` optimiser steps over the batch, micro-batch by micro-batch;
5. ``sync_weights``: the new weights into the engine;
6. ``step_metrics``; then, in ``train``, evaluation, logging and checkpoints.

Run: ``grpo-audio train CONFIG.yaml [key=value ...]``; from Python, ``GRPOTrainer(config).train()``; on several
processes, ``torchrun --nproc_per_node N -m grpo_audio.cli train CONFIG.yaml parallel.strategy=fsdp2``
(``parallel.py``: each process takes its share of ``train.prompts_per_step``, every logprob pass is one forward of
the wrapped ``logprobs.LogprobModule``, checkpoints are DCP shards plus a consolidated model).

Departures from the paper / TRL: the IS correction against the rollout engine's logprobs is on by default
(``grpo.is_mode``), since vLLM and the trainer never compute exactly the same numbers; completions are passed to
reward functions in TRL's conversational format (message lists), so TRL's reward functions run unchanged.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import AutoProcessor

from .advantages import group_advantages
from .audio_cache import AudioCache
from .checkpoint import (
    config_hash,
    latest_checkpoint,
    model_fingerprint,
    open_run,
    resume_training,
    save_checkpoint,
    set_rng_state,
    training_state,
)
from .config import ConfigError, RunConfig, check_model_path, check_parallel, shared_fields
from .data.order import PromptOrder
from .data.schema import Row
from .eval import EvalSession
from .logprobs import LogprobModule, choose_path, micro_batches
from .logs import terminal
from .loss import LossConfig
from .metrics import MetricsLogger, MetricsSummary, keep_until, plot_curves, read_metrics, summarize
from .models import ModelFamily, get_family, load_policy
from .models.weights import save_model_dir
from .optim import build_optimizer
from .parallel import Parallel
from .passes import StepPasses
from .policy import prepare_policy, reference_copy
from .precision import precision_of, warn_if_updates_round_off
from .replay import ReplayBatch, replay_batch, replay_indices
from .rewards import RewardSet
from .rollout import SamplingConfig, build_engine
from .rollout.base import banned_token_ids
from .rollout.collect import RolloutCollector
from .run_data import load_run_rows
from .run_lock import RunLock
from .step import StepBatch, StepCounts, UpdateResult
from .step_metrics import ratio_warning, step_metrics

logger = logging.getLogger(__name__)


@dataclass
class TrainSummary:
    """What ``GRPOTrainer.train()`` returns.

    Attributes:
        step: the step the run stopped at (``train.max_steps``).
        last: this process's metrics of the last step run by this call (``{}`` if it ran none: resumed at the end).
        checkpoint: the run's newest complete checkpoint folder (its ``model/`` loads in transformers and vLLM);
            None if the run saved none.
        metrics: the run's ``metrics.jsonl`` summarised (rewards at the ends, evaluation steps); None on processes
            other than the main one, which log nothing.
        output_dir: the run's folder (``metrics.jsonl``, ``tb/``, ``curves.png``, ``samples.jsonl``).
    """

    step: int
    last: dict[str, Any]
    checkpoint: Path | None
    metrics: MetricsSummary | None
    output_dir: Path


class GRPOTrainer:
    """GRPO on an audio-language model.

    Args:
        config: the run configuration.
        model: the policy (loaded from ``config.model.path`` when None).
        reward_funcs: a ``RewardSet`` (built from ``config.rewards`` when None).
        train_rows, eval_rows: the data (loaded from ``config.data`` when None).
        engine: a rollout engine (built from ``config.rollout`` when None).
        audio_cache: where log-mel features, and with ``model.freeze_audio_encoder`` the audio encoder's outputs,
            are kept between logprob passes and steps (a recipe passes the one its other stages filled); a new
            one when None. Outputs are the uncached ones (a test compares the weights after a step).
    """

    def __init__(
        self,
        config: RunConfig,
        model: Any = None,
        reward_funcs: Any = None,
        train_rows: list[Row] | None = None,
        eval_rows: list[Row] | None = None,
        engine: Any = None,
        audio_cache: AudioCache | None = None,
    ):
        check_parallel(config)  # before anything loads
        check_model_path(config.model.path)
        if config.train.eval_generations < 1:
            raise ConfigError(f"train.eval_generations must be at least 1, got {config.train.eval_generations}")
        self.cfg = config
        self.family: type[ModelFamily] = get_family(config.model.family)
        self.out = Path(config.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(config.seed)
        self.precision = precision_of(config.model)
        warn_if_updates_round_off(self.precision, config.train.lr)
        self.parallel = self._build_parallel()
        self.process = self.parallel.process
        self.run_lock = RunLock.on_main(self.parallel, self.out, "grpo")
        self._build_processor(audio_cache)
        engine_copy = self._build_model(model, engine)
        passes = (self.tokenizer.pad_token_id, self.banned_ids, config.train.micro_batch_size, self.logprob_path)
        self.passes = StepPasses(self.parallel, self.precision, config.rollout, *passes)
        self.optimizer, self.scheduler = build_optimizer(
            list(self.model.parameters()), config.train, config.grpo.num_iterations
        )
        self.rewards = (
            reward_funcs
            if reward_funcs is not None
            else RewardSet.from_specs(config.rewards, on_error=config.grpo.reward_on_error)
        )
        self._build_data(train_rows, eval_rows)
        self.loss_cfg = LossConfig(
            **shared_fields(LossConfig, config.grpo), max_completion_length=config.rollout.max_new_tokens
        )
        rng = self._open_run(self.rewards if reward_funcs is not None else None)
        self.engine = self._build_engine(engine, engine_copy)
        self.collector = RolloutCollector(
            self.train_rows, self.order, self.process, self.family, self.features, config
        )
        self._lifetime = self._cache_encoders()
        resumed_at = self.step if self.resumed else None
        self.metrics = MetricsLogger(self.out, resume_step=resumed_at, enabled=self.process.is_main)
        if self.process.is_main:
            keep_until(self.out / "samples.jsonl", resumed_at)
        if rng is not None:  # last, so that nothing built above draws from the restored streams
            set_rng_state(rng)

    # ---- the parts, built in that order ---------------------------------------------------------------------
    @property
    def policy(self) -> Any:
        """The policy itself (PEFT-wrapped with LoRA), without the DDP / logprob wrappers; sharded under FSDP2."""
        return self.parallel.unwrap(self.model).model

    @property
    def step(self) -> int:
        """The steps run (``train.max_steps`` at the end)."""
        return self.counts.step

    @property
    def reference(self) -> Any:
        """The reference policy's model (None without one, or with LoRA: then the policy with adapters off)."""
        return self.ref_model.model if self.ref_model is not None else None

    def _build_parallel(self) -> Parallel:
        """The processes. Weights are kept in model.master_dtype, forward passes run in model.dtype (precision.py):
        under autocast, and under FSDP2 also gathered in it (parallel.compute_dtype, or model.dtype if they differ)."""
        settings, mixed = self.cfg.parallel, self.precision.mixed
        gather_in = settings.compute_dtype or (self.cfg.model.dtype if mixed and settings.strategy == "fsdp2" else "")
        return Parallel(settings.strategy, gather_in, settings.cpu_offload)

    def _build_processor(self, audio_cache: AudioCache | None) -> None:
        """The checkpoint's processor; the features processor batches are built with, through the audio cache (a
        new one when None); the tokenizer and the token ids a completion may not hold."""
        self.processor = AutoProcessor.from_pretrained(self.cfg.model.path)
        self.audio_cache = audio_cache if audio_cache is not None else AudioCache()
        self.features = self.audio_cache.features(self.processor)
        self.tokenizer = self.processor.tokenizer
        self.banned_ids = banned_token_ids(self.family, self.tokenizer)

    def _build_model(self, model: Any, engine: Any) -> Any:
        """The policy (``model``, or loaded from model.path; weights in the master dtype) prepared to train
        (``policy.prepare_policy``) and its reference, each wrapped for the logprob passes and the processes. Returns
        a whole copy of the policy for the hf engine to sample from if it is sharded and no ``engine`` is given."""
        cfg = self.cfg
        if model is None:
            model = load_policy(cfg.model, dtype=self.precision.master)
        elif any(p.is_floating_point() and p.dtype != self.precision.master for p in model.parameters()):
            model = model.to(self.precision.master)  # a model passed in another dtype: its weights become masters
        self.logprob_path = choose_path(cfg.grpo.shared_prefix)
        policy = prepare_policy(model, self.family, cfg.model, cfg.lora).to(self.process.device)
        ref = reference_copy(policy, cfg.grpo.beta, cfg.lora.enabled)  # before the policy is sharded
        # A sharded policy cannot generate on one process: the transformers engine samples from a whole copy.
        own_copy = engine is None and self.parallel.sharded and cfg.rollout.engine == "hf"
        engine_copy = copy.deepcopy(policy) if own_copy else None
        # Frozen, the encoder's output may come from the audio cache on one process and not on another: it stays
        # whole in FSDP2's root unit (parallel.py).
        keep_whole = (self.family.audio_encoder(policy),) if cfg.model.freeze_audio_encoder else ()
        self.model = self.parallel.wrap(LogprobModule(policy, self.logprob_path), keep_whole)
        self.ref_model = self._build_reference(ref, keep_whole)
        return engine_copy

    def _build_reference(self, ref: Any, keep_whole: tuple[Any, ...]) -> Any:
        """The reference copy (``policy.reference_copy``) wrapped as the policy is, not training; None without one."""
        if ref is None:
            return None
        return self.parallel.wrap(LogprobModule(ref, self.logprob_path).eval(), keep_whole, trains=False)

    def _build_data(self, train_rows: list[Row] | None, eval_rows: list[Row] | None) -> None:
        """The training, eval and replayed rows (``run_data.load_run_rows``: the training and eval rows loaded from
        ``data`` when not given) and the order prompts are drawn in."""
        data, rollout = self.cfg.data, self.cfg.rollout
        rows = load_run_rows(data, rollout, self.family, self.processor, self.banned_ids, train_rows, eval_rows)
        self.train_rows, self.eval_rows, self.replay_rows = rows.train, rows.eval, rows.replay
        self.order = PromptOrder(len(self.train_rows), self.cfg.seed)

    def _open_run(self, rewards: Any) -> dict[str, Any] | None:
        """The run's lineage (decided on the main process: ``checkpoint.open_run``; ``rewards`` passed in are part of
        its identity) and step counts; a checkpoint to go on from loaded. Returns its random state (or None)."""
        cfg, train = self.cfg, self.cfg.train
        self.counts = StepCounts()
        self.base_fingerprint, identity = model_fingerprint(cfg.model.path), config_hash(cfg, rewards)
        self.lineage, resume_path = self.parallel.decide(
            lambda: open_run(self.out, cfg.model.path, self.base_fingerprint, identity, train.resume, train.overwrite)
        )
        self.resumed = resume_path is not None
        return self._resume(resume_path) if resume_path is not None else None

    def _resume(self, path: Path) -> dict[str, Any] | None:
        """Load the checkpoint ``path`` (this run's newest with ``resume: auto``, or the one named, made from the same
        base model): weights and optimiser state resharded for these processes, scheduler, data position
        (``checkpoint.resume_training``). Returns this process's random state in it, to be restored once
        everything else is built."""
        state, rng = resume_training(path, self.process.rank, self.policy, self.optimizer, self.scheduler)
        self.counts = StepCounts(step=state["step"], applied=state["step"], saved=state["step"])
        self.order = PromptOrder(len(self.train_rows), self.cfg.seed, state["epoch"], state["cursor"])
        return rng

    def _build_engine(self, engine: Any, engine_copy: Any) -> Any:
        """The rollout engine (``engine``, or ``rollout.build_engine`` from the run's config sampling from the
        policy, or from ``engine_copy``), holding the policy's weights."""
        cfg = self.cfg
        if engine is None:
            engine = build_engine(
                cfg.model.path,
                cfg.rollout,
                dtype=cfg.model.dtype,
                seed=cfg.seed,
                policy=engine_copy if engine_copy is not None else self.policy,
                processor=self.features,
                own_weights=engine_copy is not None,
            )
        if self.resumed or cfg.lora.enabled:  # the engine starts from the checkpoint on disk
            engine.sync_weights(self.policy)
        return engine

    def _cache_encoders(self) -> contextlib.ExitStack:
        """A frozen encoder's output for a clip never changes: computed once, then read in every logprob pass (the
        reference's is the same: same keys). Closed with the trainer."""
        lifetime = contextlib.ExitStack()
        if self.cfg.model.freeze_audio_encoder:
            for model in (self.policy, self.reference):
                if model is not None:
                    lifetime.enter_context(self.audio_cache.encoder(model, self.family))
        return lifetime

    @contextlib.contextmanager
    def _ref_context(self):
        if self.cfg.lora.enabled:
            with self.policy.disable_adapter():
                yield self.model
        else:
            yield self.ref_model

    # ---- one step: collect rollouts -> advantages -> logprobs -> update -> sync -> metrics --------------------
    def train_step(self) -> dict[str, float]:
        """One GRPO step through its phases; returns its metrics."""
        t_start = time.perf_counter()
        batch = self.collect_rollouts()
        batch.replay = self.collect_replay()
        self.compute_advantages(batch)
        self.compute_logprobs(batch)
        update = self.update(batch)
        sync_s = self.sync_weights(update)
        self.finish_step(update)
        return self.step_metrics(batch, update, sync_s, time.perf_counter() - t_start)

    def collect_rollouts(self) -> StepBatch:
        """Sample G completions for each of this process's prompts and score them (``rollout.collect``: with
        dynamic sampling, groups whose rewards are all equal are replaced by groups of new prompts)."""
        collected = self.collector.collect(self.engine, self.rewards, self.step)
        completion_ids, completion_mask, sampling_logps = collected.rollouts.padded(self.tokenizer.pad_token_id)
        return StepBatch(
            rows=collected.rows,
            rollouts=collected.rollouts,
            rewards=collected.rewards,
            completion_ids=completion_ids,
            completion_mask=completion_mask,
            sampling_logps=sampling_logps,
            frac_zero_std_groups=collected.frac_zero_std_groups,
            resample_rounds=collected.resample_rounds,
            rollout_s=collected.rollout_s,
        )

    def collect_replay(self) -> ReplayBatch | None:
        """This process's share of the step's replayed supervised rows (``data.replay``); None without replay. The
        rows depend on the seed and the step only (``replay.replay_indices``)."""
        if not self.replay_rows:
            return None
        per_step, world = self.cfg.grpo.replay_rows, self.process.world_size
        indices = replay_indices(len(self.replay_rows), self.step, per_step, self.cfg.seed)
        share = per_step // world
        mine = indices[self.process.rank * share : (self.process.rank + 1) * share]
        return replay_batch(self.family, self.features, [self.replay_rows[i] for i in mine])

    def compute_advantages(self, batch: StepBatch) -> None:
        """Group-relative advantages [N] of the step's rewards, computed over every process's rewards (each process
        holds whole groups; ``scale_rewards: batch`` scales by the whole batch's std, as one process would) and this
        process's share kept; the statistics are the whole batch's."""
        grpo = self.cfg.grpo
        local = torch.tensor(batch.rewards.total, dtype=torch.float32, device=self.process.device)
        rewards = self.parallel.gather(local).cpu()  # [world * N], in rank order
        advantages, _, batch.advantage_stats = group_advantages(
            rewards, batch.group_size, grpo.scale_rewards, grpo.std_floor, grpo.negative_weight
        )
        n = len(local)
        batch.advantages = advantages[self.process.rank * n : (self.process.rank + 1) * n]

    def compute_logprobs(self, batch: StepBatch) -> None:
        """The micro-batches, then the old policy's (several iterations) and the reference's (beta > 0) logprobs."""
        t = time.perf_counter()
        batch.micro_batches = micro_batches(
            len(batch.rollouts), batch.group_size, self.cfg.train.micro_batch_size, self.logprob_path
        )
        if self.cfg.grpo.num_iterations > 1:
            batch.old_logps = self.passes.logprobs_without_grad(self.model, batch)
        if self.cfg.grpo.beta != 0.0:
            with self._ref_context() as ref:
                batch.ref_logps = self.passes.logprobs_without_grad(ref, batch)
        batch.logprob_s = time.perf_counter() - t

    def update(self, batch: StepBatch) -> UpdateResult:
        """``grpo.num_iterations`` optimiser steps over the batch, micro-batch by micro-batch (``passes.py``). A
        non-finite batch loss or gradient norm stops the update before its optimiser step: what earlier iterations
        applied stays."""
        cfg = self.cfg
        result = UpdateResult(lr=self.scheduler.get_last_lr()[0])  # the rate the first optimiser step uses
        t = time.perf_counter()
        # Token and sequence normalisers are global; DDP and FSDP2 average gradients over processes, hence the / world.
        world = self.process.world_size
        num_tokens = self.parallel.sum(batch.completion_mask.sum().float()).clamp(min=1) / world
        replay_tokens = (
            self.parallel.sum(batch.replay.target_mask.sum().float()).clamp(min=1) / world
            if batch.replay is not None
            else None
        )
        for _ in range(cfg.grpo.num_iterations):
            self.optimizer.zero_grad(set_to_none=True)
            if batch.replay is not None:  # before the policy loss's micro-batches: their last one reduces gradients
                nll = self.passes.replay_backward(self.model, batch.replay, replay_tokens, cfg.grpo.replay_coef)
                result.replay_nll.append(nll)
            loss = self.passes.policy_backward(self.model, batch, self.loss_cfg, num_tokens, result.loss_stats)
            result.batch_losses.append(loss)
            trainable = [p for p in self.model.parameters() if p.requires_grad]
            result.grad_norm = self.parallel.clip_grad_norm(trainable, cfg.train.max_grad_norm)
            replay_nll = result.replay_nll[-1] if result.replay_nll else 0.0
            result.non_finite = _non_finite(loss + replay_nll, result.grad_norm)
            if result.non_finite:  # no update from this iteration on: weights and optimiser state stay as they are
                self.optimizer.zero_grad(set_to_none=True)
                break
            self.optimizer.step()
            self.scheduler.step()
            result.applied += 1
        result.update_s = time.perf_counter() - t
        return result

    def sync_weights(self, update: UpdateResult) -> float:
        """Push the updated weights into the rollout engine (nothing to push if no iteration applied); seconds."""
        t = time.perf_counter()
        if update.applied:
            self.engine.sync_weights(self.policy)
        return time.perf_counter() - t

    def finish_step(self, update: UpdateResult) -> None:
        """Advance the step and its bookkeeping (applied and skipped steps: ``step.StepCounts``)."""
        self.counts.finish(update)
        if update.non_finite:
            counts = (self.step, update.non_finite, update.applied, self.cfg.grpo.num_iterations)
            logger.warning("step %d: %s; %d of %d iterations applied", *counts)

    def step_metrics(self, batch: StepBatch, update: UpdateResult, sync_s: float, step_s: float) -> dict[str, Any]:
        """The step's metrics over every process (``step_metrics.step_metrics``); warns when the importance-sampling
        ratio leaves ``grpo.is_ratio_band``."""
        metrics = step_metrics(
            batch, update, self.parallel, self.cfg.grpo.num_iterations, self.counts.skipped, sync_s, step_s
        )
        warning = ratio_warning(metrics, self.cfg.grpo.is_ratio_band, self.step)
        if warning is not None:
            logger.warning(warning)
        return metrics

    # ---- evaluation, checkpoints, loop ----------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Reward functions as metrics on the eval rows; a few completions go to ``samples.jsonl``
        (``eval.EvalSession.rewarded`` over the trainer's engine)."""
        rows = self.eval_rows[: self.cfg.train.eval_rows or None]
        if not rows:
            return {}
        train = self.cfg.train
        sampling = SamplingConfig(
            max_new_tokens=self.cfg.rollout.max_new_tokens, temperature=train.eval_temperature, seed=self.cfg.seed
        )
        session = EvalSession(self.engine)
        samples = self.out / "samples.jsonl"
        return session.rewarded(
            rows, self.rewards, train.eval_generations, sampling, samples, train.samples_per_eval, self.step
        )

    def save(self) -> Path:
        """Checkpoint the step (``checkpoint.save_checkpoint``): every process writes its shards of the policy and
        optimiser state and takes part in gathering the loadable model, which the main process writes."""
        self.counts.saved = self.step
        return save_checkpoint(
            self.out / "checkpoints",
            self.step,
            lambda folder, write: save_model_dir(
                self.policy, self.family, self.processor, folder, write=write, dtype=self.precision.compute
            ),
            training_state(self.policy, self.optimizer),
            self.scheduler,
            {"step": self.step, "epoch": self.order.epoch, "cursor": self.order.cursor, "seed": self.cfg.seed},
            keep_last=self.cfg.train.keep_last,
            lineage=self.lineage,
            parallel=self.parallel,
        )

    def train(self) -> TrainSummary:
        """Run to ``train.max_steps``.

        Raises:
            FloatingPointError: ``train.max_skipped_steps`` steps in a row had a non-finite loss or gradient norm.
        """
        cfg = self.cfg.train
        last: dict[str, float] = {}
        main = self.process.is_main
        if self.step == 0 and cfg.eval_every and self.eval_rows and main:
            self.metrics.log(0, self.evaluate())
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="grpo", unit="step", disable=not main, file=terminal())
        while self.step < cfg.max_steps:
            last = self.train_step()
            if cfg.eval_every and self.eval_rows and (self.step % cfg.eval_every == 0 or self.step == cfg.max_steps):
                if main:  # evaluation and logging run on the main process only
                    last.update(self.evaluate())
            if main:
                self.metrics.log(self.step, last)
            self.counts.check_skipped(cfg.max_skipped_steps, last["non_finite"])
            if self.counts.save_due(cfg.save_every, cfg.max_steps):
                self.save()
            bar.update(1)
            bar.set_postfix(reward=f"{last['reward/mean']:.3f}", loss=f"{last['loss']:.4f}")
        bar.close()
        self.metrics.close()
        metrics = self.out / "metrics.jsonl"
        summary = None
        if main and metrics.exists():
            plot_curves(metrics, self.out / "curves.png")
            summary = summarize(read_metrics(metrics))
        self.parallel.barrier()
        checkpoint = latest_checkpoint(self.out / "checkpoints", self.lineage.run_id)
        return TrainSummary(step=self.step, last=last, checkpoint=checkpoint, metrics=summary, output_dir=self.out)

    def close(self) -> None:
        """Shut the rollout engine down, give the model its own encoder forward back and the output folder free, and
        end the process group if this trainer started it."""
        self._lifetime.close()
        if hasattr(self.engine, "close"):
            self.engine.close()
        if self.run_lock is not None:
            self.run_lock.release()
        self.parallel.close()


def _non_finite(loss: float, grad_norm: float) -> str:
    """What was not finite in an update ("" if nothing): the batch loss, the gradient norm, or both."""
    bad = [
        f"{name} {value}" for name, value in (("loss", loss), ("gradient norm", grad_norm)) if not math.isfinite(value)
    ]
    return " and ".join(bad) + (" not finite" if bad else "")

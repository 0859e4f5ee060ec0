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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from tqdm.auto import tqdm
from transformers import AutoProcessor, get_scheduler

from .advantages import group_advantages
from .audio_cache import AudioCache
from .checkpoint import (
    check_resume,
    config_hash,
    latest_checkpoint,
    load_checkpoint,
    load_training_state,
    model_fingerprint,
    resume_from,
    save_checkpoint,
    set_rng_state,
    start_run,
    training_state,
)
from .config import ConfigError, RunConfig, check_model_path, check_parallel, shared_fields
from .data.collate import collate_prompts
from .data.loaders import load_manifest
from .data.schema import ContextLimit, Row
from .eval import EvalSession
from .logprobs import LogprobModule, choose_path, enable_checkpointing, micro_batches
from .logs import terminal
from .loss import LossConfig, policy_loss
from .metrics import MetricsLogger, MetricsSummary, keep_until, plot_curves, read_metrics, summarize
from .models import ModelFamily, get_family, load_policy
from .models.weights import save_model_dir
from .parallel import Parallel
from .precision import precision_of, warn_if_updates_round_off
from .replay import ReplayBatch, check_replay_rows, replay_batch, replay_indices
from .rewards import RewardOutput, RewardSet
from .rollout import RolloutBatch, SamplingConfig, build_engine
from .rollout.base import banned_token_ids, prompt_seed
from .run_lock import RunLock
from .step import StepBatch, UpdateResult
from .step_metrics import step_metrics

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
        # Weights in model.master_dtype, forward passes in model.dtype (precision.py): under autocast, and under FSDP2
        # also gathered in it (parallel.compute_dtype, or model.dtype when the two differ).
        self.precision = precision_of(config.model)
        warn_if_updates_round_off(self.precision, config.train.lr)
        gather_in = config.parallel.compute_dtype
        if not gather_in and self.precision.mixed and config.parallel.strategy == "fsdp2":
            gather_in = config.model.dtype
        self.parallel = Parallel(config.parallel.strategy, gather_in, config.parallel.cpu_offload)
        self.process = self.parallel.process
        self.run_lock = RunLock.on_main(self.parallel, self.out, "grpo")
        self.processor = AutoProcessor.from_pretrained(config.model.path)
        self.audio_cache = audio_cache if audio_cache is not None else AudioCache()
        self.features = self.audio_cache.features(self.processor)  # the processor batches are built with
        self.tokenizer = self.processor.tokenizer
        self.banned_ids = banned_token_ids(self.family, self.tokenizer)
        if model is None:
            model = load_policy(config.model, dtype=self.precision.master)
        elif any(p.is_floating_point() and p.dtype != self.precision.master for p in model.parameters()):
            model = model.to(self.precision.master)  # a model passed in another dtype: its weights become masters
        self.logprob_path = choose_path(config.grpo.shared_prefix)
        policy = self._prepare_model(model).to(self.process.device)
        ref = self._reference_model(policy)
        # A sharded policy cannot generate on one process: the transformers engine samples from a whole copy.
        own_copy = engine is None and self.parallel.sharded and config.rollout.engine == "hf"
        engine_copy = copy.deepcopy(policy) if own_copy else None
        # Frozen, the encoder's output may come from the audio cache on one process and not on another: it stays
        # whole in FSDP2's root unit (parallel.py).
        keep_whole = (self.family.audio_encoder(policy),) if config.model.freeze_audio_encoder else ()
        self.model = self.parallel.wrap(LogprobModule(policy, self.logprob_path), keep_whole)
        self.ref_model = (
            self.parallel.wrap(LogprobModule(ref, self.logprob_path).eval(), keep_whole, trains=False)
            if ref is not None
            else None
        )
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        if not trainable:
            raise ConfigError("no trainable parameters: check model.freeze_* and lora settings")
        self.optimizer = torch.optim.AdamW(trainable, lr=config.train.lr, weight_decay=config.train.weight_decay)
        self.scheduler = self._scheduler()
        self.rewards = (
            reward_funcs
            if reward_funcs is not None
            else RewardSet.from_specs(config.rewards, on_error=config.grpo.reward_on_error)
        )
        data = config.data
        limits = {
            "family": self.family,
            "bad_rows": data.bad_rows,
            "long_audio": data.long_audio,
            "max_audio_seconds": data.max_audio_seconds or None,
        }
        # Rows the engine samples from must fit its context with their audio and the completion (checked at load,
        # not when drawn hours in); replayed rows are scored on their targets only.
        sampled = {
            **limits,
            "context": ContextLimit(self.processor, config.rollout.max_model_len, config.rollout.max_new_tokens),
        }
        self.train_rows = train_rows if train_rows is not None else load_manifest(data.train, **sampled)
        self.eval_rows = (
            eval_rows if eval_rows is not None else (load_manifest(data.eval, **sampled) if data.eval else [])
        )
        if data.train_tasks:
            present = sorted({r.task for r in self.train_rows})
            self.train_rows = [r for r in self.train_rows if r.task in data.train_tasks]
            if not self.train_rows:
                raise ConfigError(
                    f"data.train_tasks {list(data.train_tasks)}: no training row has one (tasks: {present})"
                )
        if not self.train_rows:
            raise ConfigError(f"data.train {data.train!r}: no training rows")
        replay_specs = [spec.strip() for spec in data.replay.split(",") if spec.strip()]
        self.replay_rows = [row for spec in replay_specs for row in load_manifest(spec, **limits)]
        self.replay_rows = check_replay_rows(self.replay_rows, self.tokenizer, self.banned_ids, data.bad_rows)
        if replay_specs and not self.replay_rows:
            raise ConfigError(f"data.replay {data.replay!r}: no rows")
        self.loss_cfg = LossConfig(
            **shared_fields(LossConfig, config.grpo), max_completion_length=config.rollout.max_new_tokens
        )
        self.step = 0
        self.skipped_steps, self.skipped_in_a_row = 0, 0
        self.applied_step = self.saved_step = 0  # the last step whose update applied / that was checkpointed
        self.epoch, self.cursor = 0, 0
        self.order = self._permutation(0)
        self.base_fingerprint = model_fingerprint(config.model.path)
        identity = config_hash(config, self.rewards if reward_funcs is not None else None)

        def open_run():  # on the main process; its outcome (or error) is every process's
            check_resume(config.train.resume, self.base_fingerprint, config.model.path)
            lineage, continuing = start_run(
                self.out, self.base_fingerprint, identity, config.train.resume, config.train.overwrite
            )
            return lineage, resume_from(config.train.resume, self.out, lineage.run_id, continuing)

        self.lineage, resume_path = self.parallel.decide(open_run)
        rng = self._resume(resume_path) if resume_path is not None else None
        resumed = resume_path is not None
        self.engine = (
            engine
            if engine is not None
            else build_engine(
                config.model.path,
                config.rollout,
                dtype=config.model.dtype,
                seed=config.seed,
                policy=engine_copy if engine_copy is not None else self.policy,
                processor=self.features,
                own_weights=engine_copy is not None,
            )
        )
        if resumed or config.lora.enabled:  # the engine starts from the checkpoint on disk
            self.engine.sync_weights(self.policy)
        # A frozen encoder's output for a clip never changes: computed once, then read in every logprob pass.
        self._lifetime = contextlib.ExitStack()
        if config.model.freeze_audio_encoder:
            for model in (self.policy, self.reference):  # the reference's encoder is the same: same keys
                if model is not None:
                    self._lifetime.enter_context(self.audio_cache.encoder(model, self.family))
        self.metrics = MetricsLogger(
            self.out, resume_step=self.step if resumed else None, enabled=self.process.is_main
        )
        if self.process.is_main:
            keep_until(self.out / "samples.jsonl", self.step if resumed else None)
        if rng is not None:  # last, so that nothing built above draws from the restored streams
            set_rng_state(rng)

    # ---- setup ----------------------------------------------------------------------------------------------
    @property
    def policy(self) -> Any:
        """The policy itself (PEFT-wrapped with LoRA), without the DDP / logprob wrappers; sharded under FSDP2."""
        return self.parallel.unwrap(self.model).model

    @property
    def reference(self) -> Any:
        """The reference policy's model (None without one, or with LoRA: then the policy with adapters off)."""
        return self.ref_model.model if self.ref_model is not None else None

    def _prepare_model(self, model: Any) -> Any:
        cfg = self.cfg
        for name, p in model.named_parameters():
            if cfg.model.freeze_audio_encoder and name.startswith(self.family.audio_encoder_prefixes):
                p.requires_grad_(False)
            if cfg.model.freeze_projector and name.startswith(self.family.projector_prefixes):
                p.requires_grad_(False)
        if cfg.lora.enabled:
            # Adapters on the language model only (the audio encoder has q_proj/v_proj too).
            targets = "|".join(cfg.lora.target_modules)
            model = get_peft_model(
                model,
                LoraConfig(
                    r=cfg.lora.r,
                    lora_alpha=cfg.lora.alpha,
                    lora_dropout=cfg.lora.dropout,
                    target_modules=rf".*language_model.*\.({targets})",
                ),
            )
        if cfg.model.gradient_checkpointing:
            enable_checkpointing(model)
        model.train()
        return model

    def _reference_model(self, policy: Any) -> Any:
        if self.cfg.grpo.beta == 0.0:
            return None
        if self.cfg.lora.enabled:
            return None  # the reference is the base model: adapters disabled (see _ref_context)
        ref = copy.deepcopy(policy).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        return ref

    def _scheduler(self):
        total = self.cfg.train.max_steps * self.cfg.grpo.num_iterations
        warmup = math.ceil(self.cfg.train.warmup_ratio * total)
        name = "constant_with_warmup" if self.cfg.train.lr_scheduler == "constant" else self.cfg.train.lr_scheduler
        return get_scheduler(name, self.optimizer, num_warmup_steps=warmup, num_training_steps=total)

    def _permutation(self, epoch: int) -> list[int]:
        return np.random.default_rng([self.cfg.seed, epoch]).permutation(len(self.train_rows)).tolist()

    def _resume(self, path: Path) -> dict[str, Any] | None:
        """Load the checkpoint ``path`` (this run's newest with ``resume: auto``, or the one named, made from the same
        base model): weights and optimiser state resharded for these processes, scheduler, data position. Returns
        this process's random state in it, to be restored once everything else is built (None: the checkpoint was
        saved on fewer processes; this one keeps its seeded state, with a warning)."""
        state = load_checkpoint(path, self.process.rank)
        load_training_state(path, self.policy, self.optimizer)  # on any number of processes
        self.scheduler.load_state_dict(state["scheduler"])
        ts = state["trainer_state"]
        self.step, self.epoch, self.cursor = ts["step"], ts["epoch"], ts["cursor"]
        self.applied_step = self.saved_step = self.step
        self.order = self._permutation(self.epoch)
        if state["rng"] is None:
            logger.warning(
                "%s holds no random state of process %d (saved on fewer processes): it goes on from its seed",
                path,
                self.process.rank,
            )
        logger.warning("resumed from %s at step %d", path, self.step)
        return state["rng"]

    # ---- data -----------------------------------------------------------------------------------------------
    def next_rows(self, k: int) -> list[Row]:
        """This process's k prompts: every process walks the same order and takes its own slice of k * world."""
        world, rank = self.process.world_size, self.process.rank
        rows = []
        while len(rows) < k * world:
            if self.cursor >= len(self.order):
                self.epoch, self.cursor = self.epoch + 1, 0
                self.order = self._permutation(self.epoch)
            rows.append(self.train_rows[self.order[self.cursor]])
            self.cursor += 1
        return rows[rank * k : (rank + 1) * k]

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
        """Sample G completions for each of this process's prompts and score them. With dynamic sampling, groups
        whose rewards are all equal are replaced by groups of new prompts (up to ``grpo.max_resample_rounds``)."""
        cfg, g = self.cfg, self.cfg.grpo.num_generations
        want = cfg.train.prompts_per_step // self.process.world_size  # this process's share
        rows = self.next_rows(want)
        t = time.perf_counter()
        rollouts, rewards = self._rollout(rows, round_=0)
        rollout_s, rounds = time.perf_counter() - t, 0
        _, zero, stats0 = group_advantages(torch.tensor(rewards.total), g)
        if cfg.grpo.dynamic_sampling and zero.any():
            pool = [(rows[i], rollouts, rewards, i) for i in range(len(rows)) if not zero[i]]
            for round_ in range(cfg.grpo.max_resample_rounds):
                if len(pool) >= want:
                    break
                more = self.next_rows(want)
                t = time.perf_counter()
                more_rollouts, more_rewards = self._rollout(more, round_=round_ + 1)
                rollout_s += time.perf_counter() - t
                rounds += 1
                _, z2, _ = group_advantages(torch.tensor(more_rewards.total), g)
                pool += [(more[i], more_rollouts, more_rewards, i) for i in range(len(more)) if not z2[i]]
            if len(pool) < want:
                logger.warning(
                    "step %d: %d of %d groups have a reward spread after %d resampling round(s) "
                    "(grpo.max_resample_rounds); %s",
                    self.step + 1,
                    len(pool),
                    want,
                    rounds,
                    "the step trains on those only" if pool else "no group moves the policy this step",
                )
            if pool:
                rows, rollouts, rewards = self._merge_groups(pool[:want])
        completion_ids, completion_mask, sampling_logps = rollouts.padded(self.tokenizer.pad_token_id)
        return StepBatch(
            rows=rows,
            rollouts=rollouts,
            rewards=rewards,
            completion_ids=completion_ids,
            completion_mask=completion_mask,
            sampling_logps=sampling_logps,
            frac_zero_std_groups=stats0.frac_zero_std_groups,
            resample_rounds=rounds,
            rollout_s=rollout_s,
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

    def _rollout(self, rows: list[Row], round_: int) -> tuple[RolloutBatch, RewardOutput]:
        """Sample and score ``rows`` (this process's slice of the step's prompts). Each prompt's seed comes from the
        run seed, the step, the round and its slot in the global batch, so it gets the same completions whatever
        the number of processes."""
        first = self.process.rank * len(rows)
        seeds = [prompt_seed(self.cfg.seed, self.step, round_, first + i, r.id) for i, r in enumerate(rows)]
        sampling = SamplingConfig.from_config(self.cfg.rollout)
        sampling.row_seeds = seeds
        rollouts = self.engine.generate(rows, n=self.cfg.grpo.num_generations, sampling=sampling)
        return rollouts, self.rewards.score_rows(rows, rollouts.completion_text, rollouts.row_index)

    def _merge_groups(self, pool: list[tuple[Row, RolloutBatch, RewardOutput, int]]):
        """One RolloutBatch + RewardOutput from groups taken from several rollout rounds."""
        g = self.cfg.grpo.num_generations
        rows = [p[0] for p in pool]
        clips = [r.load_audio(self.family).wave for r in rows]
        prompts = collate_prompts(self.family, self.features, rows, clips)
        fields: dict[str, list] = {"completion_ids": [], "completion_text": [], "logprobs": [], "finish_reason": []}
        total, components = [], {}
        for _, b, r, i in pool:
            sl = slice(i * g, (i + 1) * g)
            for k in fields:
                fields[k] += getattr(b, k)[sl]
            total += r.total[sl]
            for name, vals in r.components.items():
                components.setdefault(name, []).extend(vals[sl])
        rollouts = RolloutBatch(
            prompts=prompts,
            n=g,
            row_index=[i for i in range(len(rows)) for _ in range(g)],
            row_ids=[r.id for r in rows for _ in range(g)],
            **fields,
        )
        return rows, rollouts, RewardOutput(total=total, components=components)

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
            batch.old_logps = self._logprobs_of(self.model, batch)
        if self.cfg.grpo.beta != 0.0:
            with self._ref_context() as ref:
                batch.ref_logps = self._logprobs_of(ref, batch)
        batch.logprob_s = time.perf_counter() - t

    def _logprobs_of(self, model: Any, batch: StepBatch) -> torch.Tensor:
        """[N, C] logprobs of every completion under ``model`` (a wrapped ``LogprobModule``), without gradients."""
        with torch.no_grad():
            return torch.cat([self._micro_batch_logprobs(model, batch, idx)[0] for idx in batch.micro_batches]).cpu()

    def _micro_batch_logprobs(
        self, model: Any, batch: StepBatch, idx: list[int], entropy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        rollout = self.cfg.rollout
        with self.precision.autocast(self.process.device):
            return model(
                batch.rollouts.prompts,
                batch.rollouts.row_index,
                batch.group_size,
                idx,
                batch.completion_ids,
                batch.completion_mask,
                self.tokenizer.pad_token_id,
                temperature=rollout.temperature or 1.0,
                with_entropy=entropy,
                banned_ids=self.banned_ids,
                top_k=rollout.top_k,
                top_p=rollout.top_p,
            )

    def update(self, batch: StepBatch) -> UpdateResult:
        """``grpo.num_iterations`` optimiser steps over the batch, micro-batch by micro-batch. A non-finite batch
        loss or gradient norm stops the update before its optimiser step: what earlier iterations applied stays."""
        cfg = self.cfg
        result = UpdateResult(lr=self.scheduler.get_last_lr()[0])  # the rate the first optimiser step uses
        t = time.perf_counter()
        n = len(batch.rollouts)
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
            result.batch_losses.append(0.0)
            if batch.replay is not None:  # before the policy loss's micro-batches: their last one reduces gradients
                result.replay_nll.append(self._replay_backward(batch.replay, replay_tokens))
            for k, idx in enumerate(batch.micro_batches):
                # Gradients are reduced over the processes once, in the last micro-batch's backward.
                self.parallel.sync_gradients(self.model, k == len(batch.micro_batches) - 1)
                lps, ent = self._micro_batch_logprobs(self.model, batch, idx, entropy=True)
                old = batch.old_logps[idx].to(lps.device) if batch.old_logps is not None else lps.detach()
                loss, st = policy_loss(
                    lps,
                    old,
                    batch.advantages[idx].to(lps.device),
                    batch.completion_mask[idx].to(lps.device),
                    self.loss_cfg,
                    ref_logps=batch.ref_logps[idx].to(lps.device) if batch.ref_logps is not None else None,
                    sampling_logps=batch.sampling_logps[idx].to(lps.device),
                    entropies=ent,
                    num_sequences=n,
                    num_tokens=num_tokens,
                )
                loss.backward()
                result.batch_losses[-1] += st.policy_loss
                for k, v in asdict(st).items():
                    result.loss_stats.setdefault(k, []).append(v)
            trainable = [p for p in self.model.parameters() if p.requires_grad]
            result.grad_norm = self.parallel.clip_grad_norm(trainable, cfg.train.max_grad_norm)
            replay_nll = result.replay_nll[-1] if result.replay_nll else 0.0
            result.non_finite = _non_finite(result.batch_losses[-1] + replay_nll, result.grad_norm)
            if result.non_finite:  # no update from this iteration on: weights and optimiser state stay as they are
                self.optimizer.zero_grad(set_to_none=True)
                break
            self.optimizer.step()
            self.scheduler.step()
            result.applied += 1
        result.update_s = time.perf_counter() - t
        return result

    def _replay_backward(self, replay: ReplayBatch, num_tokens: torch.Tensor) -> float:
        """Backward of ``grpo.replay_coef`` x the replayed targets' mean token negative log-likelihood (under the
        policy at temperature 1, over every process's target tokens), micro-batch by micro-batch, without reducing
        gradients (the policy loss's last micro-batch does). Returns this process's NLL sum over ``num_tokens``
        (every process's target tokens / the number of processes): the processes' values average to the mean."""
        nll_sum = 0.0
        rows = list(range(len(replay)))
        for idx in micro_batches(len(replay), 1, self.cfg.train.micro_batch_size, self.logprob_path):
            self.parallel.sync_gradients(self.model, False)
            with self.precision.autocast(self.process.device):
                lps, _ = self.model(
                    replay.prompts,
                    rows,
                    1,
                    idx,
                    replay.target_ids,
                    replay.target_mask,
                    self.tokenizer.pad_token_id,
                    banned_ids=self.banned_ids,
                )
            nll = -(lps * replay.target_mask[idx].to(lps.device)).sum() / num_tokens.to(lps.device)
            (self.cfg.grpo.replay_coef * nll).backward()
            nll_sum += float(nll.detach())
        return nll_sum

    def sync_weights(self, update: UpdateResult) -> float:
        """Push the updated weights into the rollout engine (nothing to push if no iteration applied); seconds."""
        t = time.perf_counter()
        if update.applied:
            self.engine.sync_weights(self.policy)
        return time.perf_counter() - t

    def finish_step(self, update: UpdateResult) -> None:
        """Advance the step and its bookkeeping (applied and skipped steps)."""
        self.step += 1
        skipped = update.applied == 0
        if not skipped:
            self.applied_step = self.step
        self.skipped_in_a_row = self.skipped_in_a_row + 1 if skipped else 0
        self.skipped_steps += skipped
        if update.non_finite:
            logger.warning(
                "step %d: %s; %d of %d iterations applied",
                self.step,
                update.non_finite,
                update.applied,
                self.cfg.grpo.num_iterations,
            )

    def step_metrics(self, batch: StepBatch, update: UpdateResult, sync_s: float, step_s: float) -> dict[str, Any]:
        """The step's metrics over every process (``step_metrics.step_metrics``); warns when the importance-sampling
        ratio leaves ``grpo.is_ratio_band``."""
        metrics = step_metrics(
            batch, update, self.parallel, self.cfg.grpo.num_iterations, self.skipped_steps, sync_s, step_s
        )
        low, high = self.cfg.grpo.is_ratio_band
        if not metrics["skipped"] and not low <= metrics["is_ratio_mean"] <= high:
            logger.warning(
                "step %d: mean importance-sampling ratio %.3f (min %.3f, max %.3f) is outside [%g, %g]: the trainer's "
                "and the rollout engine's distributions differ (sampling settings, weight sync, dtype)",
                self.step,
                metrics["is_ratio_mean"],
                metrics["is_ratio_min"],
                metrics["is_ratio_max"],
                low,
                high,
            )
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
        self.saved_step = self.step
        return save_checkpoint(
            self.out / "checkpoints",
            self.step,
            lambda folder, write: save_model_dir(
                self.policy, self.family, self.processor, folder, write=write, dtype=self.precision.compute
            ),
            training_state(self.policy, self.optimizer),
            self.scheduler,
            {"step": self.step, "epoch": self.epoch, "cursor": self.cursor, "seed": self.cfg.seed},
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
            if self.skipped_in_a_row >= cfg.max_skipped_steps:
                raise FloatingPointError(
                    f"step {self.step}: {last['non_finite']}; {self.skipped_in_a_row} steps in a row skipped "
                    f"(train.max_skipped_steps = {cfg.max_skipped_steps}); nothing of them was applied or saved"
                )
            due = (cfg.save_every and self.step % cfg.save_every == 0) or self.step == cfg.max_steps
            # A skipped step changed nothing, so it writes no checkpoint, except at the end when updates applied
            # since the last checkpoint would otherwise be lost.
            unsaved = self.applied_step > self.saved_step
            if due and (not last["skipped"] or (self.step == cfg.max_steps and unsaved)):
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

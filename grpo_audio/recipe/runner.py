"""The recipe runner: stages in order, each from the previous stage's model, skipping completed ones.

It sequences the stages; each stage's work lives elsewhere: supervised training in ``sft``, GRPO in ``trainer``,
evaluation in ``eval`` (an :class:`~grpo_audio.eval.EvalSession` per evaluated model), the checks before the first
stage in ``checks.py``, the keys and records that skip finished stages in ``records.py``, the report in ``report.py``.

Under torchrun (``torchrun --nproc_per_node N -m grpo_audio.cli recipe CONFIG.yaml``) every process runs every
training stage: supervised stages data-parallel through TRL, GRPO stages on ``parallel.strategy`` (DDP or FSDP2).
The main process alone builds the synthetic corpus and the base model, evaluates after each stage, and writes the
stage records, the report and the plots; the others wait for it.
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

from omegaconf import OmegaConf
from transformers import AutoProcessor

from ..audio_cache import AudioCache
from ..checkpoint import model_fingerprint
from ..config import (
    FinalEvalConfig,
    RecipeConfig,
    RunConfig,
    StageConfig,
    SupervisedSettings,
    check_model_path,
    check_parallel,
    check_values,
    checked_answer_formats,
    merge_config,
    to_object,
)
from ..data.benchmarks import load_benchmark
from ..data.loaders import load_manifest
from ..data.schema import Row
from ..data.synthetic import write_corpus
from ..eval import EvalResult, EvalSession, paired_difference, write_samples
from ..models import get_family, load_policy
from ..models.tiny import build_tiny_model
from ..parallel import Parallel
from ..precision import precision_of
from ..rewards import RewardSet
from ..rollout import SamplingConfig
from ..run_lock import RunLock
from ..sft import SFTConfig, run_sft, target_text
from ..trainer import GRPOTrainer
from .calibrate import standardize_checkpoint
from .checks import check_data, check_evaluated, check_recipe_data
from .records import (
    AUDIO_SFT_KINDS,
    SFT_KINDS,
    StageKeys,
    base_evaluated,
    completed,
    data_path,
    digest,
    mark_base_evaluated,
    mark_completed,
    mark_started,
    started_under,
)
from .report import write_report
from .results import FinalResult, GRPOOutcome, RecipeReport, SampledVs, StageResult


class Recipe:
    """Runs a :class:`RecipeConfig`.

    Raises:
        ConfigError: a setting, a data file or one of its rows the recipe could not run with (``checks.py``),
            before any stage.
    """

    def __init__(self, cfg: RecipeConfig):
        check_values(cfg)  # a config built in code too: every value against its choices and least value
        check_recipe_data(cfg)
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.family = get_family(cfg.model.family)
        self.report = RecipeReport(family=self.family.name)
        # Every stage reads the same clips (training and eval): their features and frozen-encoder outputs once.
        self.audio_cache = AudioCache(int(cfg.audio_cache_gb * (1 << 30)))
        self.keys = StageKeys(cfg, self.out, self.sampled_after)
        if cfg.synthetic.enabled:
            cfg.synthetic.label_space()  # a bad label space fails here, before any stage
            checked_answer_formats(cfg.synthetic.answer_formats)
        check_evaluated(cfg, self.sampled_after)
        for stage in cfg.stages:  # and so do a GRPO stage's overrides, and what they need of the processes
            if stage.kind == "grpo":
                check_parallel(self.grpo_config(stage, self.out / "base"))
        check_parallel(cfg)
        if not cfg.tiny_model:
            check_model_path(cfg.model.path)
        check_data(cfg, self.out, self.family, self.grpo_config)  # and a data file that is not there
        self.parallel = Parallel(cfg.parallel.strategy, cfg.parallel.compute_dtype, cfg.parallel.cpu_offload)
        self.main = self.parallel.process.is_main

    def say(self, message: str) -> None:
        """A progress line, from the main process only."""
        if self.main:
            print(message, flush=True)

    def prepare(self) -> Path:
        """Synthetic corpus and base model, as the config asks, written by the main process. Returns the base model
        directory."""
        if self.main:
            self._prepare()
        self.parallel.barrier()
        return self.out / "base" if self.cfg.tiny_model else Path(self.cfg.model.path)

    def _prepare(self) -> None:
        if self.cfg.synthetic.enabled:
            t = time.perf_counter()
            s = self.cfg.synthetic
            fmts = checked_answer_formats(s.answer_formats)
            write_corpus(self.out / "data", s.n, s.seed, s.n_eval, s.label_space(), n_rl=s.n_rl, answer_formats=fmts)
            rl = f" + {s.n_rl} for GRPO" if s.n_rl > 0 else ""
            print(
                f"[recipe] synthetic corpus: {s.n} + {s.n_eval} held-out{rl} clips ({time.perf_counter() - t:.0f} s)"
            )
        if self.cfg.tiny_model:
            base = build_tiny_model(self.family.name, self.out / "base", size=self.cfg.tiny_model, seed=self.cfg.seed)
            if self.cfg.standardize_audio:
                self.standardize_audio(base)

    def standardize_audio(self, model_dir: Path) -> None:
        """Rescale a fresh model's projector on the clips of the first stage that trains on audio."""
        stage = next((s for s in self.cfg.stages if s.kind in (*AUDIO_SFT_KINDS, "grpo")), None)
        if stage is None:
            return
        spread = standardize_checkpoint(model_dir, self._paths(stage.data))
        print(
            f"[recipe] audio embeddings standardised on {spread['tokens']} frames of stage '{stage.name}' "
            f"(were: mean norm {spread['mean_norm']:.3g}, channel std {spread['std_min']:.3g}-{spread['std_max']:.3g})"
        )

    def run(self) -> RecipeReport:
        """Run every stage not already completed (records, report: ``report.md``); one recipe at a time in its
        folder (``run_lock.py``, held by the main process). Returns the report."""
        lock = RunLock.on_main(self.parallel, self.out, "recipe")
        try:
            return self._run()
        finally:
            if lock is not None:
                lock.release()
            self.parallel.close()

    def _run(self) -> RecipeReport:
        start = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        current = self.prepare()
        self.report.stages.append(self.evaluate_base(current))
        upstream = None  # the key of the last stage that trained: a stage trained again retrains every later one
        for i, stage in enumerate(self.cfg.stages):
            t = time.perf_counter()
            key, eval_key = self.keys.stage_key(stage, current, upstream), self.keys.eval_key(i)
            if stage.kind != "eval":
                upstream = digest(key)
            done = self.parallel.decide(partial(completed, self.out, stage, key))  # one answer for every process
            if done is not None and done.eval_key == eval_key:
                self.say(
                    f"[recipe] stage '{stage.name}' already completed from this input with these settings: skipped"
                )
                self.report.stages.append(done.entry)
                current = Path(done.entry.model_dir)
                continue
            if done is not None:
                then = "evaluated" if stage.evaluate else "its evaluation dropped (evaluate: false)"
                self.say(
                    f"[recipe] stage '{stage.name}' already completed; its evaluation settings or data changed: {then}"
                )
                entry = replace(done.entry, eval=None, sampled_vs=None)  # its training's record
            else:
                entry = self.train(stage, current, key)
            current = Path(entry.model_dir)
            self.evaluate_stage(i, entry, current)
            if entry.wall_s is None:  # a re-evaluated stage keeps its own
                entry.wall_s = round(time.perf_counter() - t, 1)
            self.report.stages.append(entry)
            if self.main:
                mark_completed(self.out, stage, key, eval_key, entry)
                self.write_report(time.perf_counter() - start)
            self.parallel.barrier()  # every process sees the stage's record before the next stage
        if self.cfg.eval.final:
            self.report.final = self.evaluate_final(current)
        if self.main:
            self.write_report(time.perf_counter() - start)
        self.say(f"[recipe] report in {self.out / 'report.md'} ({time.perf_counter() - start:.0f} s)")
        return self.report

    def train(self, stage: StageConfig, model_dir: Path, key: dict) -> StageResult:
        """Train ``stage`` from ``model_dir`` (an ``eval`` stage trains nothing); its entry, unevaluated."""
        self.say(f"[recipe] stage '{stage.name}' ({stage.kind}) from {model_dir}")
        entry = StageResult(stage.name, stage.kind)
        if stage.kind in SFT_KINDS:
            model_dir, history = self.sft(stage, model_dir)
            if history:
                entry.loss_first, entry.loss_last = history[0]["loss"], history[-1]["loss"]
        elif stage.kind == "grpo":
            model_dir, entry.grpo = self.grpo(stage, model_dir, key)
        entry.model_dir = str(model_dir)
        return entry

    def _paths(self, specs: str) -> list[Path]:
        """The manifests a stage's comma-separated data specs name."""
        return [data_path(self.out, spec.strip()) for spec in specs.split(",")]

    def _rows(self, specs: str, decode: bool = True) -> list[Row]:
        return [row for path in self._paths(specs) for row in load_manifest(path, family=self.family, decode=decode)]

    def sft_rows(self, stage: StageConfig) -> tuple[list[Row], str]:
        """An SFT stage's rows (its data, then the replayed rows) and the SFT target they are trained on."""
        text = stage.kind == "text_pretrain"
        target = {"text_pretrain": "text", "cold_start": "think"}.get(stage.kind, "answer")
        rows = self._rows(stage.data, decode=not text)
        if not stage.replay:
            return rows, target
        for row in rows:  # the stage's own rows must fit its own target, replay or not
            target_text(row, target)
        replay = self._rows(stage.replay, decode=not text)
        count = min(len(replay), round(stage.replay_ratio * len(rows)))
        self.say(f"[recipe] stage '{stage.name}': {count} rows replayed from {stage.replay}")
        return rows + random.Random(self.cfg.seed).sample(replay, count), "text" if text else "auto"

    def sft(self, stage: StageConfig, model_dir: Path) -> tuple[Path, list[dict]]:
        rows, target = self.sft_rows(stage)
        precision = precision_of(self.cfg.model)
        model = load_policy(self.cfg.model, model_dir, dtype=precision.master)
        stage_settings = {f.name: getattr(stage, f.name) for f in dataclasses.fields(SupervisedSettings)}
        settings = SFTConfig(target=target, seed=self.cfg.seed, logging_steps=1, **stage_settings)
        processor = AutoProcessor.from_pretrained(model_dir)
        return run_sft(
            model,
            self.family,
            processor,
            rows,
            self.out / stage.name,
            settings,
            audio_cache=self.audio_cache,
            parallel=self.cfg.parallel,
            precision=precision,
        )

    def grpo_config(self, stage: StageConfig, model_dir: Path) -> RunConfig:
        """The GRPO run a ``grpo`` stage starts from ``model_dir``: the recipe's settings and the stage's overrides,
        its data files the stage's (``data.train``, ``data.replay``) and ``eval.data`` (``data.eval``).

        Raises:
            ConfigError: an override names no setting or has the wrong type (checked when the recipe is built).
        """
        base = OmegaConf.structured(RunConfig)
        recipe = OmegaConf.to_container(OmegaConf.structured(self.cfg))
        values = {f.name: recipe[f.name] for f in dataclasses.fields(RunConfig)}  # the run the recipe holds
        values["output_dir"] = str(self.out / stage.name)
        values["model"]["path"] = str(model_dir)
        values["data"].update(
            train=str(data_path(self.out, stage.data)),
            eval=str(data_path(self.out, self.cfg.eval.data)),
            replay=",".join(str(p) for p in self._paths(stage.replay)) if stage.replay.strip() else "",
        )
        # The stage folder belongs to the recipe: a run of another input model or settings replaces what is there.
        values["train"]["overwrite"] = True
        merged = merge_config(RunConfig, base, OmegaConf.create(values), f"stage '{stage.name}'")
        overrides = OmegaConf.from_dotlist([f"{k}={v}" for k, v in stage.grpo_overrides.items()])
        merged = merge_config(RunConfig, merged, overrides, f"stage '{stage.name}' grpo_overrides")
        return to_object(merged, RunConfig)

    def grpo(self, stage: StageConfig, model_dir: Path, key: dict | None = None) -> tuple[Path, GRPOOutcome]:
        """Train a ``grpo`` stage from ``model_dir``; returns its model and outcome. With the stage's ``key``, a run
        left in its folder is resumed (``train.resume: auto``) only if it started under the same key: the trainer's
        own lineage names the data files by path, and a file edited in place must start the run over."""
        run_cfg = self.grpo_config(stage, model_dir)
        if key is not None:
            same = self.parallel.decide(partial(started_under, self.out, stage, key))  # one answer for every process
            if not same and run_cfg.train.resume == "auto":
                run_cfg.train.resume = "never"  # with train.overwrite, the old run's checkpoints are removed
            self.parallel.barrier()  # every process has read the record before it is replaced
            if self.main:
                mark_started(self.out, stage, key)
        trainer = GRPOTrainer(run_cfg, audio_cache=self.audio_cache)
        try:
            summary = trainer.train()
        finally:
            trainer.close()
        return summary.checkpoint / "model", GRPOOutcome.of(summary, run_cfg.train)

    def sampled_after(self, index: int) -> bool:
        """Whether the evaluation after stage ``index`` (-1: the base model) samples (``eval.samples``,
        ``eval.samples_at``): every stage's with ``all``; with ``grpo``, each GRPO stage's and that of the model it
        starts from (:meth:`start_of`)."""
        ev, stages = self.cfg.eval, self.cfg.stages
        if not ev.samples:
            return False
        starts = {self.start_of(i) for i, s in enumerate(stages) if s.kind == "grpo"}
        return ev.samples_at == "all" or (index >= 0 and stages[index].kind == "grpo") or index in starts

    def start_of(self, index: int) -> int:
        """The stage whose model stage ``index`` starts from (-1: the base model): the last earlier stage that
        trains, since an ``eval`` stage hands on the model it evaluated."""
        return next((i for i in range(index - 1, -1, -1) if self.cfg.stages[i].kind != "eval"), -1)

    def evaluate_base(self, model_dir: Path) -> StageResult:
        """The base model's report entry: its evaluation, or the one recorded by an earlier run of the same base
        model with the same evaluation settings (``BASE_EVALUATED.json``); none with ``eval.base: false``."""
        if not self.cfg.eval.base:
            return StageResult("base", "base")
        key = {"input_model": model_fingerprint(model_dir), "eval_key": self.keys.eval_key(-1)}
        done = base_evaluated(self.out, key)
        if done is not None:
            self.say("[recipe] base model already evaluated with these settings: skipped")
            return done
        entry = StageResult("base", "base", eval=self.evaluate(model_dir, "base", sampled=self.sampled_after(-1)))
        if self.main:
            mark_base_evaluated(self.out, key, entry)
        return entry

    def evaluate_stage(self, index: int, entry: StageResult, model_dir: Path) -> StageResult:
        """The evaluation after stage ``index`` set on its ``entry`` (``eval``, and a GRPO stage's ``sampled_vs``);
        returns the entry."""
        stage = self.cfg.stages[index]
        if not stage.evaluate:
            return entry
        data = stage.data if stage.kind == "eval" else None
        entry.eval = self.evaluate(model_dir, stage.name, data, sampled=self.sampled_after(index))
        if stage.kind == "grpo":
            entry.sampled_vs = self.compare_sampled(entry)
        return entry

    def evaluate(
        self, model_dir: Path, name: str, data: str | None = None, sampled: bool = False
    ) -> EvalResult | None:
        """Evaluate ``model_dir`` on ``data`` (default ``eval.data``) on the main process (the others wait and get
        None); ``sampled``: also the sampled evaluation. Per-row results go to ``samples/<name>.jsonl``."""
        result = None
        if self.main:
            with self.eval_session(model_dir) as session:
                scored, _ = self.evaluate_file(session, data or self.cfg.eval.data, name, sampled=sampled)
            result = replace(scored, results=[])  # (in the samples file)
            ev = self.cfg.eval
            print(
                f"[recipe] eval after '{name}': mcq {result.mcq_accuracy}, open {result.open_accuracy}, "
                f"format {result.format_rate}"
                + (f", sampled reward {result.sampled.reward.value:.3f} (k={ev.samples})" if result.sampled else "")
            )
        self.parallel.barrier()
        return result

    def evaluate_final(self, model_dir: Path) -> list[FinalResult]:
        """The last model on each ``eval.final`` file, greedy, asked as ``grpo-audio eval`` asks it (main process;
        the others get ``[]``); per-row results in ``samples/final-I.jsonl``."""
        results: list[FinalResult] = []
        if self.main:
            with self.eval_session(model_dir) as session:
                for i, final in enumerate(self.cfg.eval.final):
                    scored, layout = self.evaluate_file(session, final.data, f"final-{i}", final)
                    results.append(FinalResult.of(final, layout, scored))
                    self.say(
                        f"[recipe] last model on {final.data} ({layout}, {final.answer_format}"
                        f"{', think' if final.think else ''}): mcq {scored.mcq_accuracy}, "
                        f"one choice {scored.choice_rate}"
                    )
        self.parallel.barrier()
        return results

    def eval_session(self, model_dir: Path) -> EvalSession:
        """An evaluation session (``eval.engine``, ``eval.batch_size``) over ``model_dir``, with the recipe's audio
        cache."""
        ev = self.cfg.eval
        return EvalSession.open(
            model_dir, ev.engine, self.cfg.rollout.max_model_len, self.audio_cache, self.cfg.model.dtype, ev.batch_size
        )

    def evaluate_file(
        self,
        session: EvalSession,
        spec: str,
        name: str,
        final: FinalEvalConfig | None = None,
        sampled: bool = False,
    ) -> tuple[EvalResult, str]:
        """``session``'s model on the file ``spec`` names, greedy, its per-row results written to
        ``samples/<name>.jsonl``: a stage's evaluation as ``eval`` asks it (its answer format and rows), scored with
        the GRPO rewards too (so that every stage, not only GRPO, is scored as GRPO is) and with ``sampled`` sampled;
        or an ``eval.final`` file as ``final`` asks it. Returns the result and the file's layout.

        Raises:
            FileNotFoundError: the file is gone (``check_data`` found it when the recipe was built).
        """
        ev = self.cfg.eval
        path = data_path(self.out, spec)
        if not path.is_file():
            raise FileNotFoundError(f"stage {name!r}: its evaluation data {path} is gone")
        asked = final or FinalEvalConfig(data=spec, answer_format=ev.answer_format, max_rows=ev.max_rows)
        bench = load_benchmark(path, self.family, answer_format=asked.answer_format, think=asked.think)
        rows = bench.rows[: asked.max_rows or None]
        rewards = None if final else RewardSet.from_specs(self.cfg.rewards, on_error=self.cfg.grpo.reward_on_error)
        result = session.evaluate(
            rows,
            ev.max_new_tokens,
            rewards,
            prefer=asked.answer_format,
            samples=ev.samples if sampled else 0,
            sampling=SamplingConfig.from_config(self.cfg.rollout),
            seed=self.cfg.seed,
        )
        write_samples(self.out / "samples" / f"{name}.jsonl", result)
        return result, bench.layout

    def compare_sampled(self, entry: StageResult) -> SampledVs | None:
        """A GRPO stage's sampled evaluation minus that of the last earlier model with one (the model it starts from,
        :meth:`start_of`) on the same eval data (same prompts, same seeds), with bootstrap intervals; None without
        both. An ``eval`` stage's, on its own file, is not one."""
        after = entry.eval.sampled if entry.eval else None
        earlier = [s for s in self.report.stages if s.kind != "eval" and s.eval and s.eval.sampled]
        if after is None or not earlier:
            return None
        before = earlier[-1]
        pass_at_1 = paired_difference(after, before.eval.sampled, field="pass_at_1") if after.pass_at_1 else None
        return SampledVs(before.name, paired_difference(after, before.eval.sampled), pass_at_1)

    def write_report(self, wall_s: float) -> None:
        self.report.wall_s = round(wall_s, 1)
        write_report(self.out, self.report)

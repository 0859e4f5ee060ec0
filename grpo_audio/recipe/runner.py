"""The recipe runner: stages in order, each from the previous stage's model, skipping completed ones.

Under torchrun (``torchrun --nproc_per_node N -m grpo_audio.cli recipe CONFIG.yaml``) every process runs every
training stage: supervised stages data-parallel through TRL, GRPO stages on ``parallel.strategy`` (DDP or FSDP2).
The main process alone builds the synthetic corpus and the base model, evaluates after each stage, and writes the
stage records, the report and the plots; the others wait for it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from transformers import AutoProcessor

from ..audio_cache import AudioCache
from ..checkpoint import model_fingerprint
from ..config import (
    ConfigError,
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
from ..data.benchmarks import LayoutError, load_benchmark, read_benchmark
from ..data.loaders import load_manifest, read_manifest
from ..data.schema import ContextLimit, DataError, Row
from ..data.synthetic import CORPUS_FILES, write_corpus
from ..evaluate import cached_encoder, evaluate_model
from ..fingerprint import data_fingerprint
from ..models import get_family, load_policy
from ..models.tiny import build_tiny_model
from ..parallel import Parallel
from ..precision import precision_of
from ..rewards import RewardSet
from ..rollout import load_engine, sampling_config
from ..run_lock import RunLock
from ..sampled_eval import paired_difference, sampled_eval
from ..sft import SFTConfig, run_sft, target_text
from ..trainer import GRPOTrainer
from .calibrate import standardize_checkpoint
from .report import grpo_entry, write_report

# Supervised stage kinds that train on audio, and all supervised kinds (run by ``Recipe.sft``).
AUDIO_SFT_KINDS = ("sft", "cold_start")
SFT_KINDS = ("text_pretrain", *AUDIO_SFT_KINDS)
STAGE_MARKER = "STAGE_COMPLETE.json"
# A GRPO stage's key when it last started training: its checkpoints are resumed only under the same key.
STARTED_MARKER = "STAGE_STARTED.json"
BASE_MARKER = "BASE_EVALUATED.json"  # in the output folder (a tiny base model's folder is rebuilt by every run)
# What a stage's evaluation adds to its report entry (done again, without training, when only the evaluation
# settings changed).
EVAL_FIELDS = ("eval", "sampled_vs")


def stage_model_dir(out: str | Path, recorded: str) -> Path:
    """The model a completed stage recorded (its ``STAGE_COMPLETE.json`` entry's ``model_dir``), found under the
    output folder ``out`` as this process names it. The record holds the path as the run that wrote it named it
    (relative to that run's working directory, or absolute); every model a recipe trains lies under its output
    folder, so the path is the longest tail of the recorded one that is a folder under ``out`` (at least a folder
    and a name deep), else the recorded path. A recipe resumed from another directory, or a folder moved, still
    finds its stages' models."""
    parts = Path(recorded).parts
    for start in range(len(parts) - 1):
        candidate = Path(out).joinpath(*parts[start:])
        if candidate.is_dir():
            return candidate
    return Path(recorded)


class Recipe:
    """Runs a :class:`RecipeConfig`."""

    def __init__(self, cfg: RecipeConfig):
        check_values(cfg)  # a config built in code too: every value against its choices and least value
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.family = get_family(cfg.model.family)
        self.report: dict[str, Any] = {"stages": [], "family": self.family.name}
        # Every stage reads the same clips (training and eval): their features and frozen-encoder outputs once.
        self.audio_cache = AudioCache(int(cfg.audio_cache_gb * (1 << 30)))
        self._fingerprints: dict[tuple[Any, ...], str] = {}  # data_key's, by file, reader, size and mtime
        if cfg.synthetic.enabled:
            cfg.synthetic.label_space()  # a bad label space fails here, before any stage
            checked_answer_formats(cfg.synthetic.answer_formats)
        self.check_evaluated()
        for stage in cfg.stages:  # and so do a GRPO stage's overrides, and what they need of the processes
            if stage.kind == "grpo":
                check_parallel(self.grpo_config(stage, self.out / "base"))
        check_parallel(cfg)
        if not cfg.tiny_model:
            check_model_path(cfg.model.path)
        self.check_data()  # and a data file that is not there
        self.parallel = Parallel(cfg.parallel.strategy, cfg.parallel.compute_dtype, cfg.parallel.cpu_offload)
        self.main = self.parallel.process.is_main

    def check_evaluated(self) -> None:
        """A stage left unevaluated (``evaluate: false``, ``eval.base: false``) is neither an ``eval`` stage nor one
        the sampled evaluation runs after (GRPO's paired difference needs both sides); else ``ConfigError``."""
        unevaluated = [(-1, "eval.base")] if not self.cfg.eval.base else []
        unevaluated += [(i, f"stages[{i}] ({s.name!r})") for i, s in enumerate(self.cfg.stages) if not s.evaluate]
        for index, field in unevaluated:
            if index >= 0 and self.cfg.stages[index].kind == "eval":
                raise ConfigError(f"{field}: evaluate is false, but an 'eval' stage is its evaluation")
            if self.sampled_after(index):
                why = (
                    "after every model (eval.samples_at: all); or set eval.samples_at: grpo"
                    if self.cfg.eval.samples_at == "all"
                    else "after it (eval.samples_at), for GRPO's paired difference"
                )
                raise ConfigError(f"{field}: not evaluated, but the sampled evaluation runs {why}")

    def check_data(self) -> None:
        """Every data file the recipe names (``eval.data``, each stage's ``data`` and ``replay``, ``eval.final``) is
        there, or is one the synthetic corpus writes (``CORPUS_FILES``) with ``synthetic.enabled``; a training stage
        names at least one. Else ``ConfigError`` naming the field: a misspelt file fails before the first stage,
        not when the stage that reads it starts, and an evaluation is never skipped for want of its file."""
        fields = [("eval.data", self.cfg.eval.data)]
        skips: dict[str, str] = {}
        sampled: dict[str, Any] = {}
        for i, stage in enumerate(self.cfg.stages):
            if not stage.data.strip() and stage.kind != "eval":  # an eval stage's data defaults to eval.data
                raise ConfigError(f"stages[{i}] ({stage.name!r}).data: empty, but a {stage.kind} stage trains on it")
            fields += [(f"stages[{i}] ({stage.name!r}).{name}", getattr(stage, name)) for name in ("data", "replay")]
            if stage.kind == "grpo":  # GRPO reads its rows under data.bad_rows (its overrides included)
                grpo = self.grpo_config(stage, self.out)
                skips[fields[-2][0]] = skips[fields[-1][0]] = grpo.data.bad_rows
                sampled[fields[-2][0]] = grpo.rollout  # its prompts must fit the engine's context
        fields += [(f"eval.final[{i}].data", final.data) for i, final in enumerate(self.cfg.eval.final)]
        known = set(CORPUS_FILES.values())
        held_out = {CORPUS_FILES["eval"], CORPUS_FILES["eval_mmau"]}
        files: dict[Path, str] = {}  # the user's own files, each with the first field that names it
        for field, specs in fields:
            for spec in filter(None, (s.strip() for s in specs.split(","))):
                path = self.data_path(spec)
                if spec.startswith("synthetic:") and not self.cfg.synthetic.enabled:
                    why = "synthetic.enabled is false"
                elif spec.startswith("synthetic:") and path.name not in known:
                    why = f"the synthetic corpus writes no such file (it writes {', '.join(sorted(known))})"
                elif spec.startswith("synthetic:") and path.name in held_out and self.cfg.synthetic.n_eval == 0:
                    why = "synthetic.n_eval is 0: the corpus's held-out split is empty"
                elif not spec.startswith("synthetic:") and not path.is_file():
                    why = "no such file"
                else:
                    if not spec.startswith("synthetic:"):
                        files.setdefault(path, field)
                    continue
                raise ConfigError(f"{field}: {spec!r}: {why}")
        # A model given by path (not built by the recipe, tiny_model) gives the context GRPO's prompts must fit.
        base = None if self.cfg.tiny_model else Path(self.cfg.model.path)
        for path, field in files.items():  # every row and clip, before the first stage spends any compute
            rollout = sampled.get(field)
            context = (
                ContextLimit.from_checkpoint(base, rollout.max_new_tokens, rollout.max_model_len)
                if rollout is not None and base is not None and (base / "config.json").is_file()
                else None
            )
            self.check_rows(path, field, skips.get(field, "raise"), context)

    def check_rows(self, path: Path, field: str, bad_rows: str = "raise", context: ContextLimit | None = None) -> None:
        """Every row of the user's data file ``path`` (named by ``field``) with its audio decoded, as the stage or
        evaluation that reads it will load it: an ``eval.final`` file as a benchmark, the others as manifests, bad
        rows raised or skipped per ``bad_rows`` (a GRPO stage's ``data.bad_rows``; the other stages raise), a GRPO
        stage's prompts checked against the engine's ``context`` with their audio and the completion's room.
        Raises ``ConfigError`` naming the field, then every bad row with its field (``DataError``'s list), or
        naming the field of a file with no good row."""
        try:
            if field.startswith("eval.final"):
                rows = load_benchmark(path, self.family).rows
            else:
                rows = load_manifest(path, family=self.family, bad_rows=bad_rows, context=context)
        except (DataError, LayoutError) as e:
            raise ConfigError(f"{field}: {e}") from None
        if not rows:
            raise ConfigError(f"{field}: {path}: no row passed validation")

    def data_path(self, spec: str) -> Path:
        """``synthetic:NAME`` is the synthetic corpus's ``NAME.jsonl`` (or ``NAME`` with its own suffix)."""
        if spec.startswith("synthetic:"):
            name = spec.split(":", 1)[1]
            return self.out / "data" / (name if Path(name).suffix else f"{name}.jsonl")
        return Path(spec)

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

    def run(self) -> dict[str, Any]:
        """Run every stage not already completed (records, report: ``report.md``); one recipe at a time in its
        folder (``run_lock.py``, held by the main process). Returns the report."""
        lock = RunLock.on_main(self.parallel, self.out, "recipe")
        try:
            return self._run()
        finally:
            if lock is not None:
                lock.release()
            self.parallel.close()

    def _run(self) -> dict[str, Any]:
        start = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        current = self.prepare()
        self.report["stages"].append(self.evaluate_base(current))
        upstream = None  # the key of the last stage that trained: a stage trained again retrains every later one
        for i, stage in enumerate(self.cfg.stages):
            t = time.perf_counter()
            key, eval_key = self.stage_key(stage, current, upstream), self.eval_key(i)
            if stage.kind != "eval":
                upstream = _digest(key)
            done = self.parallel.decide(partial(self.completed, stage, key))  # one answer for every process
            if done is not None:
                current = Path(done["entry"]["model_dir"])
                if done.get("eval_key") == eval_key:
                    self.say(
                        f"[recipe] stage '{stage.name}' already completed from this input with these settings: skipped"
                    )
                    self.report["stages"].append(done["entry"])
                    continue
                then = "evaluated" if stage.evaluate else "its evaluation dropped (evaluate: false)"
                self.say(
                    f"[recipe] stage '{stage.name}' already completed; its evaluation settings or data changed: {then}"
                )
                entry = {k: v for k, v in done["entry"].items() if k not in EVAL_FIELDS}  # its training's record
            else:
                self.say(f"[recipe] stage '{stage.name}' ({stage.kind}) from {current}")
                entry = {"name": stage.name, "kind": stage.kind}
                if stage.kind in SFT_KINDS:
                    current, history = self.sft(stage, current)
                    if history:
                        entry["loss_first"], entry["loss_last"] = history[0]["loss"], history[-1]["loss"]
                elif stage.kind == "grpo":
                    current, grpo = self.grpo(stage, current, key)
                    entry.update(grpo)
                entry["model_dir"] = str(current)
            self.evaluate_stage(i, entry, current)
            entry.setdefault("wall_s", round(time.perf_counter() - t, 1))  # a re-evaluated stage keeps its own
            self.report["stages"].append(entry)
            if self.main:
                self.mark_completed(stage, key, eval_key, entry)
                self.write_report(time.perf_counter() - start)
            self.parallel.barrier()  # every process sees the stage's record before the next stage
        if self.cfg.eval.final:
            self.report["final"] = self.evaluate_final(current)
        if self.main:
            self.write_report(time.perf_counter() - start)
        self.say(f"[recipe] report in {self.out / 'report.md'} ({time.perf_counter() - start:.0f} s)")
        return self.report

    def stage_key(self, stage: StageConfig, input_model: Path, upstream: str | None = None) -> dict[str, Any]:
        """What a stage's model depends on: its settings and the recipe's settings it reads (other stages, the
        output folder and the evaluation settings aside; for a supervised stage the GRPO settings and the rewards
        too), the content of the data it trains on (:meth:`data_key`: its ``data`` and ``replay`` files, and for
        GRPO the eval data its curves are drawn on), its input model's fingerprint, and ``upstream``, the key of the
        stage that trained its input model (None for the base model): a stage trained again retrains every later
        stage, whether or not the sampled bytes of its new model differ. What its evaluation depends on is
        :meth:`eval_key`.

        Raises:
            FileNotFoundError: a data file it trains on is not there (the synthetic corpus is written by ``run``).
        """
        shared = OmegaConf.to_container(OmegaConf.structured(self.cfg))
        shared.pop("stages"), shared.pop("output_dir")
        evaluation = shared.pop("eval")
        if stage.kind == "grpo":  # the run's own evaluation data (its curves)
            shared["eval_data"] = evaluation["data"]
        else:  # what only GRPO reads
            for key in ("lora", "data", "rollout", "grpo", "train", "rewards"):
                shared.pop(key)
        settings = {"stage": OmegaConf.to_container(OmegaConf.structured(stage)), "recipe": shared}
        settings["stage"].pop("evaluate")  # what its evaluation depends on
        data: dict[str, str] = {}
        if stage.kind != "eval":  # an eval stage trains nothing: its file is its evaluation's (eval_key)
            data.update(self.data_key(stage.data))
            data.update(self.data_key(stage.replay))
        if stage.kind == "grpo":
            data.update(self.data_key(self.cfg.eval.data, benchmark=True))
        return {
            "settings": _digest(settings),
            "data": data,
            "input_model": model_fingerprint(input_model),
            "upstream": upstream,
        }

    def data_key(self, specs: str, benchmark: bool = False) -> dict[str, str]:
        """``{spec: data_fingerprint}`` for each of the comma-separated data ``specs`` (none for an empty string):
        the file's bytes and the audio files its rows read, found as a manifest (``read_manifest``) or, with
        ``benchmark``, as an evaluation file of any layout (``read_benchmark``). Each file is fingerprinted once per
        recipe while its size and modification time stay the same.

        Raises:
            FileNotFoundError: a file is not there.
        """
        keys: dict[str, str] = {}
        for spec in filter(None, (s.strip() for s in specs.split(","))):
            path = self.data_path(spec)
            stat = path.stat()
            memo = (str(path.resolve()), benchmark, stat.st_size, stat.st_mtime_ns)
            if memo not in self._fingerprints:
                rows = read_benchmark(path).rows if benchmark else read_manifest(path)[0]
                clips = [row.audio for row in rows if isinstance(row.audio, str)]
                self._fingerprints[memo] = data_fingerprint(path, clips)
            keys[spec] = self._fingerprints[memo]
        return keys

    def eval_key(self, index: int) -> str:
        """What the evaluation after stage ``index`` (-1: the base model) depends on besides its model: the
        evaluation settings, the rewards that score it, the sampling of the sampled evaluation (and whether it runs
        there), the seed, the stage's own settings (an ``eval`` stage's data), and the content of the file it
        evaluates on (:meth:`data_key`).

        Raises:
            FileNotFoundError: the evaluation file is not there.
        """
        cfg = OmegaConf.to_container(OmegaConf.structured(self.cfg))
        # Whether the base model is evaluated, and what the last model is asked besides (eval.final, asked anew
        # each run), re-evaluate no stage; a stage's own flag is in its settings below.
        cfg["eval"].pop("base"), cfg["eval"].pop("final")
        reads = {name: cfg[name] for name in ("eval", "rewards", "rollout", "seed")}
        stage = OmegaConf.to_container(OmegaConf.structured(self.cfg.stages[index])) if index >= 0 else None
        evaluated = stage["data"] if stage is not None and stage["kind"] == "eval" else cfg["eval"]["data"]
        reads.update(
            reward_on_error=cfg["grpo"]["reward_on_error"],
            dtype=cfg["model"]["dtype"],
            sampled=self.sampled_after(index),
            stage=stage,
            data=self.data_key(evaluated, benchmark=True),
        )
        return _digest(reads)

    def evaluate_base(self, model_dir: Path) -> dict[str, Any]:
        """The base model's report entry: its evaluation, or the one recorded by an earlier run of the same base
        model with the same evaluation settings (``base/STAGE_COMPLETE.json``); none with ``eval.base: false``."""
        if not self.cfg.eval.base:
            return {"name": "base", "kind": "base"}
        key = {"input_model": model_fingerprint(model_dir), "eval_key": self.eval_key(-1)}
        marker = self.out / BASE_MARKER
        try:
            done = json.loads(marker.read_text())
        except (OSError, ValueError):
            done = {}
        if done.get("key") == key:
            self.say("[recipe] base model already evaluated with these settings: skipped")
            return done["entry"]
        entry = {"name": "base", "kind": "base", **self.evaluate(model_dir, "base", sampled=self.sampled_after(-1))}
        if self.main:
            _write_record(marker, {"key": key, "entry": entry})
        return entry

    def evaluate_stage(self, index: int, entry: dict[str, Any], model_dir: Path) -> dict[str, Any]:
        """The evaluation after stage ``index`` added to its ``entry`` (``EVAL_FIELDS``); returns the entry."""
        stage = self.cfg.stages[index]
        if not stage.evaluate:
            return entry
        data = stage.data if stage.kind == "eval" else None
        entry.update(self.evaluate(model_dir, stage.name, data, sampled=self.sampled_after(index)))
        if stage.kind == "grpo":
            entry.update(self.compare_sampled(entry))
        return entry

    def completed(self, stage: StageConfig, key: dict[str, Any]) -> dict[str, Any] | None:
        """The stage's completion record if it was completed with ``key`` and its output model is still there."""
        try:
            done = json.loads((self.out / stage.name / STAGE_MARKER).read_text())
        except (OSError, ValueError):
            return None
        if done.get("key") != key:
            return None
        done["entry"]["model_dir"] = str(stage_model_dir(self.out, done["entry"]["model_dir"]))
        return done if Path(done["entry"]["model_dir"], "config.json").is_file() else None

    def mark_completed(self, stage: StageConfig, key: dict[str, Any], eval_key: str, entry: dict[str, Any]) -> None:
        _write_record(self.out / stage.name / STAGE_MARKER, {"key": key, "eval_key": eval_key, "entry": entry})

    def _paths(self, specs: str) -> list[Path]:
        """The manifests a stage's comma-separated data specs name."""
        return [self.data_path(spec.strip()) for spec in specs.split(",")]

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
        """The GRPO run a ``grpo`` stage starts from ``model_dir``: the recipe's settings and the stage's overrides.

        Raises:
            ConfigError: an override names no setting or has the wrong type (checked when the recipe is built).
        """
        base = OmegaConf.structured(RunConfig)
        recipe = OmegaConf.to_container(OmegaConf.structured(self.cfg))
        values = {f.name: recipe[f.name] for f in dataclasses.fields(RunConfig)}  # the run the recipe holds
        values["output_dir"] = str(self.out / stage.name)
        values["model"]["path"] = str(model_dir)
        values["data"].update(
            train=str(self.data_path(stage.data)),
            eval=str(self.data_path(self.cfg.eval.data)),
            replay=",".join(str(p) for p in self._paths(stage.replay)) if stage.replay.strip() else "",
        )
        # The stage folder belongs to the recipe: a run of another input model or settings replaces what is there.
        values["train"]["overwrite"] = True
        merged = merge_config(RunConfig, base, OmegaConf.create(values), f"stage '{stage.name}'")
        overrides = OmegaConf.from_dotlist([f"{k}={v}" for k, v in stage.grpo_overrides.items()])
        merged = merge_config(RunConfig, merged, overrides, f"stage '{stage.name}' grpo_overrides")
        return to_object(merged, RunConfig)

    def grpo(
        self, stage: StageConfig, model_dir: Path, key: dict[str, Any] | None = None
    ) -> tuple[Path, dict[str, Any]]:
        """Train a ``grpo`` stage from ``model_dir``; returns its model and report entry. With the stage's ``key``, a
        run left in its folder is resumed (``train.resume: auto``) only if it started under the same key: the
        trainer's own lineage names the data files by path, and a file edited in place must start the run over."""
        run_cfg = self.grpo_config(stage, model_dir)
        if key is not None:
            started = self.out / stage.name / STARTED_MARKER

            def same_run() -> bool:
                try:
                    return json.loads(started.read_text()).get("key") == key
                except (OSError, ValueError):
                    return False

            same = self.parallel.decide(same_run)  # one answer for every process
            if not same and run_cfg.train.resume == "auto":
                run_cfg.train.resume = "never"  # with train.overwrite, the old run's checkpoints are removed
            self.parallel.barrier()  # every process has read the record before it is replaced
            if self.main:
                _write_record(started, {"key": key})
        trainer = GRPOTrainer(run_cfg, audio_cache=self.audio_cache)
        try:
            summary = trainer.train()
        finally:
            trainer.close()
        return summary.checkpoint / "model", grpo_entry(summary, run_cfg.train)

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

    def evaluate(self, model_dir: Path, name: str, data: str | None = None, sampled: bool = False) -> dict[str, Any]:
        """Evaluate ``model_dir`` on the main process (the others wait and get ``{}``); ``sampled``: also the
        sampled evaluation."""
        result = self._evaluate(model_dir, name, data, sampled) if self.main else {}
        self.parallel.barrier()
        return result

    def _evaluate(self, model_dir: Path, name: str, data: str | None, sampled: bool) -> dict[str, Any]:
        path = self.data_path(data or self.cfg.eval.data)
        if not path.is_file():  # check_data found it when the recipe was built
            raise FileNotFoundError(f"stage {name!r}: its evaluation data {path} is gone")
        rows = load_benchmark(path, family=self.family, answer_format=self.cfg.eval.answer_format).rows
        if self.cfg.eval.max_rows:
            rows = rows[: self.cfg.eval.max_rows]
        ev = self.cfg.eval
        engine = self.eval_engine(model_dir)
        try:
            result = evaluate_model(
                model_dir,
                rows,
                max_new_tokens=ev.max_new_tokens,
                engine_obj=engine,
                audio_cache=self.audio_cache,
                prefer=ev.answer_format,
            )
            if sampled:
                sampling = sampling_config(self.cfg.rollout)
                sampling.max_new_tokens = ev.max_new_tokens
                rewards = RewardSet.from_specs(self.cfg.rewards, on_error=self.cfg.grpo.reward_on_error)
                with cached_encoder(engine, self.audio_cache):
                    draws = sampled_eval(
                        engine, rows, rewards, ev.samples, sampling, seed=self.cfg.seed, prefer=ev.answer_format
                    )
                result["sampled"] = draws.summary()
        finally:
            if hasattr(engine, "close"):
                engine.close()
        result["reward"] = self.eval_reward(rows, [r["completion"] for r in result["results"]])
        (self.out / "samples").mkdir(parents=True, exist_ok=True)
        with (self.out / "samples" / f"{name}.jsonl").open("w") as f:
            for r in result.pop("results"):
                f.write(json.dumps(r) + "\n")
        print(
            f"[recipe] eval after '{name}': mcq {result['mcq_accuracy']}, open {result['open_accuracy']}, "
            f"format {result['format_rate']}"
            + (f", sampled reward {result['sampled']['reward']['value']:.3f} (k={ev.samples})" if sampled else "")
        )
        return {"eval": result}

    def eval_engine(self, model_dir: Path) -> Any:
        """The evaluation engine (``eval.engine``, ``eval.batch_size``) over ``model_dir``, with the recipe's audio
        cache; the caller closes it."""
        ev = self.cfg.eval
        return load_engine(
            model_dir, ev.engine, self.cfg.rollout.max_model_len, self.audio_cache, self.cfg.model.dtype, ev.batch_size
        )

    def evaluate_final(self, model_dir: Path) -> list[dict[str, Any]]:
        """The last model on each ``eval.final`` file, greedy, asked as ``grpo-audio eval`` asks it (main process;
        the others get ``[]``): per file its settings, ``n``, ``mcq_accuracy``, ``choice_rate``, ``format_rate``;
        per-row results in ``samples/final-I.jsonl``."""
        results: list[dict[str, Any]] = []
        if self.main:
            ev = self.cfg.eval
            engine = self.eval_engine(model_dir)
            try:
                for i, final in enumerate(ev.final):
                    bench = load_benchmark(
                        self.data_path(final.data), self.family, answer_format=final.answer_format, think=final.think
                    )
                    rows = bench.rows[: final.max_rows] if final.max_rows else bench.rows
                    scored = evaluate_model(
                        model_dir,
                        rows,
                        max_new_tokens=ev.max_new_tokens,
                        engine_obj=engine,
                        audio_cache=self.audio_cache,
                        prefer=final.answer_format,
                    )
                    (self.out / "samples").mkdir(parents=True, exist_ok=True)
                    with (self.out / "samples" / f"final-{i}.jsonl").open("w") as f:
                        f.writelines(json.dumps(r) + "\n" for r in scored["results"])
                    entry = {**asdict(final), "layout": bench.layout, "n": len(rows)}
                    entry.update({k: scored[k] for k in ("mcq_accuracy", "choice_rate", "format_rate")})
                    results.append(entry)
                    self.say(
                        f"[recipe] last model on {final.data} ({bench.layout}, {final.answer_format}"
                        f"{', think' if final.think else ''}): mcq {entry['mcq_accuracy']}, "
                        f"one choice {entry['choice_rate']}"
                    )
            finally:
                if hasattr(engine, "close"):
                    engine.close()
        self.parallel.barrier()
        return results

    def compare_sampled(self, entry: dict[str, Any]) -> dict[str, Any]:
        """A GRPO stage's sampled evaluation minus that of the last earlier model with one (the model it starts from,
        :meth:`start_of`) on the same eval data (same prompts, same seeds): ``{"sampled_vs": {"stage", "reward",
        "pass_at_1"}}`` with bootstrap intervals; ``{}`` without both. An ``eval`` stage's, on its own file, is not
        one."""
        after = entry.get("eval", {}).get("sampled")
        earlier = [s for s in self.report["stages"] if s["kind"] != "eval" and s.get("eval", {}).get("sampled")]
        if after is None or not earlier:
            return {}
        before = earlier[-1]
        diff = {"stage": before["name"], "reward": asdict(paired_difference(after, before["eval"]["sampled"]))}
        if after.get("pass_at_1"):
            diff["pass_at_1"] = asdict(paired_difference(after, before["eval"]["sampled"], field="pass_at_1"))
        return {"sampled_vs": diff}

    def eval_reward(self, rows: list[Row], completions: list[str]) -> dict[str, float]:
        """The GRPO stage's rewards (``rewards:``) on one completion per eval row: the mean of the weighted
        total (``total``) and of each function over the rows it applies to, so that every stage, not only GRPO,
        is scored as GRPO is."""
        rewards = RewardSet.from_specs(self.cfg.rewards, on_error=self.cfg.grpo.reward_on_error)
        return rewards.score_rows(rows, completions, list(range(len(rows)))).means()

    def write_report(self, wall_s: float) -> None:
        self.report["wall_s"] = round(wall_s, 1)
        write_report(self.out, self.report, self.family.name)


def _write_record(path: Path, record: dict[str, Any]) -> None:
    """Write ``record`` as JSON to ``path`` whole or not at all (a temporary file renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]

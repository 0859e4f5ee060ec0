"""The Music Flamingo recipe: stages from one YAML, each starting from the previous stage's model.

``text_pretrain`` (optional: language-model loss on the data's text without the audio, standing in for the
pretrained language model a real audio LLM starts from) -> ``sft`` (skills: captions and QA, target = answer)
-> ``cold_start`` (chain of thought, target = ``<think>..</think><answer>..</answer>``) -> ``grpo`` (rewards per
task type) -> ``eval``. After every training stage the model is evaluated on the eval set (accuracy per
question type, format rate), and at the end a report folder holds ``report.json``, ``report.md``,
``stages.png`` (accuracy per stage and question type), the GRPO curves, sample completions and the wall time.

Run: ``grpo-audio recipe examples/music_flamingo/tiny.yaml [key=value ...]``.

Re-running a recipe skips every stage already completed with the same settings from the same input model: each
finished stage leaves ``<stage>/STAGE_COMPLETE.json`` with its settings' hash, its input model's fingerprint, its
output model and its report entry. A GRPO stage that was interrupted resumes from its last checkpoint, and only
from a checkpoint made from its current input model (``checkpoint.Lineage``); anything else in its folder is
replaced. Supervised stages write no checkpoints: an interrupted one runs again.

Departure from the paper: the embedded default trains a tiny model from random weights on synthetic music in
minutes; the paper starts from Audio Flamingo 3 and trains on MF-Skills / MF-Think for days on GPUs.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from .checkpoint import model_fingerprint
from .config import RecipeConfig, RunConfig, StageConfig, merge_config, to_object
from .models import get_family

# Supervised stage kinds that train on audio, and all supervised kinds (run by ``Recipe.sft``).
AUDIO_SFT_KINDS = ("sft", "cold_start")
SFT_KINDS = ("text_pretrain", *AUDIO_SFT_KINDS)
STAGE_MARKER = "STAGE_COMPLETE.json"


class Recipe:
    """Runs a :class:`RecipeConfig`."""

    def __init__(self, cfg: RecipeConfig):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.family = get_family(cfg.model.family)
        self.report: dict[str, Any] = {"stages": [], "family": self.family.name}
        self._audio_stores: Any = None  # sft.AudioStores, shared by the supervised stages
        self._eval_stores: Any = None  # sft.AudioStores of the eval clips, shared by every stage's evaluation
        if cfg.synthetic.enabled:
            cfg.synthetic.label_space()  # a bad label space fails here, before any stage
        for stage in cfg.stages:  # and so do a GRPO stage's overrides
            if stage.kind == "grpo":
                self.grpo_config(stage, self.out / "base")

    def data_path(self, spec: str) -> Path:
        if spec.startswith("synthetic:"):
            return self.out / "data" / f"{spec.split(':', 1)[1]}.jsonl"
        return Path(spec)

    def prepare(self) -> Path:
        """Synthetic corpus and base model, as the config asks. Returns the base model directory."""
        if self.cfg.synthetic.enabled:
            from .data.synthetic import write_corpus

            t = time.perf_counter()
            s = self.cfg.synthetic
            write_corpus(self.out / "data", n=s.n, seed=s.seed, n_eval=s.n_eval, space=s.label_space(), n_rl=s.n_rl)
            rl = f" + {s.n_rl} for GRPO" if s.n_rl > 0 else ""
            print(
                f"[recipe] synthetic corpus: {s.n} + {s.n_eval} held-out{rl} clips ({time.perf_counter() - t:.0f} s)"
            )
        if self.cfg.tiny_model:
            from .models.tiny import build_tiny_model

            base = build_tiny_model(self.family.name, self.out / "base", size=self.cfg.tiny_model, seed=self.cfg.seed)
            if self.cfg.standardize_audio:
                self.standardize_audio(base)
            return base
        return Path(self.cfg.model.path)

    def standardize_audio(self, model_dir: Path) -> None:
        """Rescale a fresh model's projector on the clips of the first stage that trains on audio."""
        from .models.calibrate import standardize_checkpoint

        stage = next((s for s in self.cfg.stages if s.kind in (*AUDIO_SFT_KINDS, "grpo")), None)
        if stage is None:
            return
        spread = standardize_checkpoint(model_dir, self._paths(stage.data))
        print(
            f"[recipe] audio embeddings standardised on {spread['tokens']} frames of stage '{stage.name}' "
            f"(were: mean norm {spread['mean_norm']:.3g}, channel std {spread['std_min']:.3g}-{spread['std_max']:.3g})"
        )

    def run(self) -> dict[str, Any]:
        start = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        current = self.prepare()
        self.report["stages"].append({"name": "base", "kind": "base", **self.evaluate(current, "base")})
        for stage in self.cfg.stages:
            t = time.perf_counter()
            key = self.stage_key(stage, current)
            done = self.completed(stage, key)
            if done is not None:
                print(f"[recipe] stage '{stage.name}' already completed from this input with these settings: skipped")
                current = Path(done["entry"]["model_dir"])
                self.report["stages"].append(done["entry"])
                continue
            print(f"[recipe] stage '{stage.name}' ({stage.kind}) from {current}")
            entry: dict[str, Any] = {"name": stage.name, "kind": stage.kind}
            if stage.kind in SFT_KINDS:
                current, history = self.sft(stage, current)
                if history:
                    entry["loss_first"], entry["loss_last"] = history[0]["loss"], history[-1]["loss"]
                later = self.cfg.stages[self.cfg.stages.index(stage) + 1 :]
                if not any(s.kind in AUDIO_SFT_KINDS for s in later):
                    self._audio_stores = None  # no later stage reads them: free the memory
            elif stage.kind == "grpo":
                current, grpo = self.grpo(stage, current)
                entry.update(grpo)
            entry["model_dir"] = str(current)
            entry.update(self.evaluate(current, stage.name, data=stage.data if stage.kind == "eval" else None))
            entry["wall_s"] = round(time.perf_counter() - t, 1)
            self.report["stages"].append(entry)
            self.mark_completed(stage, key, entry)
            self._write_report(time.perf_counter() - start)
        self._write_report(time.perf_counter() - start)
        print(f"[recipe] report in {self.out / 'report.md'} ({time.perf_counter() - start:.0f} s)")
        return self.report

    def stage_key(self, stage: StageConfig, input_model: Path) -> dict[str, str]:
        """What a stage's result depends on: its settings and the recipe's settings it reads (other stages, the
        output folder, and for a supervised stage the GRPO settings, aside), and its input model's fingerprint."""
        shared = OmegaConf.to_container(OmegaConf.structured(self.cfg))
        shared.pop("stages"), shared.pop("output_dir")
        if stage.kind != "grpo":  # what only GRPO reads (the rewards stay: every stage's evaluation uses them)
            for key in ("lora", "rollout", "grpo", "train"):
                shared.pop(key)
        settings = {"stage": OmegaConf.to_container(OmegaConf.structured(stage)), "recipe": shared}
        return {"settings": _digest(settings), "input_model": model_fingerprint(input_model)}

    def completed(self, stage: StageConfig, key: dict[str, str]) -> dict[str, Any] | None:
        """The stage's completion record if it was completed with ``key`` and its output model is still there."""
        try:
            done = json.loads((self.out / stage.name / STAGE_MARKER).read_text())
        except (OSError, ValueError):
            return None
        if done.get("key") != key or not Path(done["entry"]["model_dir"], "config.json").is_file():
            return None
        return done

    def mark_completed(self, stage: StageConfig, key: dict[str, str], entry: dict[str, Any]) -> None:
        folder = self.out / stage.name
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{STAGE_MARKER}.tmp"
        tmp.write_text(json.dumps({"key": key, "entry": entry}, indent=2) + "\n")
        tmp.replace(folder / STAGE_MARKER)

    def _paths(self, specs: str) -> list[Path]:
        """The manifests a stage's comma-separated data specs name."""
        return [self.data_path(spec.strip()) for spec in specs.split(",")]

    def _rows(self, specs: str, decode: bool = True) -> list[Any]:
        from .data.loaders import load_manifest

        return [row for path in self._paths(specs) for row in load_manifest(path, family=self.family, decode=decode)]

    def sft_rows(self, stage: StageConfig) -> tuple[list[Any], str]:
        """An SFT stage's rows (its data, then the replayed rows) and the SFT target they are trained on."""
        from .sft import target_text

        text = stage.kind == "text_pretrain"
        target = {"text_pretrain": "text", "cold_start": "think"}.get(stage.kind, "answer")
        rows = self._rows(stage.data, decode=not text)
        if not stage.replay:
            return rows, target
        for row in rows:  # the stage's own rows must fit its own target, replay or not
            target_text(row, target)
        replay = self._rows(stage.replay, decode=not text)
        count = min(len(replay), round(stage.replay_ratio * len(rows)))
        print(f"[recipe] stage '{stage.name}': {count} rows replayed from {stage.replay}")
        return rows + random.Random(self.cfg.seed).sample(replay, count), "text" if text else "auto"

    def sft(self, stage: StageConfig, model_dir: Path) -> tuple[Path, list[dict]]:
        from transformers import AutoProcessor

        from .sft import AudioStores, SFTSettings, run_sft

        rows, target = self.sft_rows(stage)
        model = self.family.model_class().from_pretrained(model_dir)
        settings = SFTSettings(
            target=target,
            epochs=stage.epochs,
            max_steps=stage.max_steps,
            lr=stage.lr,
            batch_size=stage.batch_size,
            seed=self.cfg.seed,
            logging_steps=1,
            freeze_audio_encoder=stage.freeze_audio_encoder,
            gradient_checkpointing=stage.gradient_checkpointing,
        )
        if self._audio_stores is None and stage.kind in AUDIO_SFT_KINDS:  # the text warm-up reads no audio
            self._audio_stores = AudioStores()
        processor = AutoProcessor.from_pretrained(model_dir)
        return run_sft(model, self.family, processor, rows, self.out / stage.name, settings, stores=self._audio_stores)

    def grpo_config(self, stage: StageConfig, model_dir: Path) -> RunConfig:
        """The GRPO run a ``grpo`` stage starts from ``model_dir``: the recipe's settings and the stage's overrides.

        Raises:
            ConfigError: an override names no setting or has the wrong type (checked when the recipe is built).
        """
        base = OmegaConf.structured(RunConfig)
        values = {
            "output_dir": str(self.out / stage.name),
            "seed": self.cfg.seed,
            "model": {**OmegaConf.to_container(OmegaConf.structured(self.cfg.model)), "path": str(model_dir)},
            "lora": OmegaConf.to_container(OmegaConf.structured(self.cfg.lora)),
            "rollout": OmegaConf.to_container(OmegaConf.structured(self.cfg.rollout)),
            "grpo": OmegaConf.to_container(OmegaConf.structured(self.cfg.grpo)),
            "train": OmegaConf.to_container(OmegaConf.structured(self.cfg.train)),
            "rewards": [OmegaConf.to_container(OmegaConf.structured(r)) for r in self.cfg.rewards],
            "data": {"train": str(self.data_path(stage.data)), "eval": str(self.data_path(self.cfg.eval.data))},
        }
        # The stage folder belongs to the recipe: a run of another input model or settings replaces what is there.
        values["train"]["overwrite"] = True
        merged = merge_config(RunConfig, base, OmegaConf.create(values), f"stage '{stage.name}'")
        overrides = OmegaConf.from_dotlist([f"{k}={v}" for k, v in stage.grpo_overrides.items()])
        merged = merge_config(RunConfig, merged, overrides, f"stage '{stage.name}' grpo_overrides")
        return to_object(merged, RunConfig)

    def grpo(self, stage: StageConfig, model_dir: Path) -> tuple[Path, dict[str, Any]]:
        from .checkpoint import latest_checkpoint
        from .trainer import GRPOTrainer

        run_cfg = self.grpo_config(stage, model_dir)
        trainer = GRPOTrainer(run_cfg)
        try:
            trainer.train()
        finally:
            trainer.close()
        ckpt = latest_checkpoint(Path(run_cfg.output_dir) / "checkpoints", trainer.lineage.run_id)
        records = [json.loads(x) for x in (Path(run_cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
        evals = [r for r in records if any(k.startswith("eval/") for k in r)]
        train = [r for r in records if "reward/mean" in r]
        # Mean reward per function (and in total) at the first and last step and at the first and last evaluation.
        names = ["reward"] + sorted(
            {k[: -len("/mean")] for r in train for k in r if k.startswith("rewards/") and k.endswith("/mean")}
        )
        per_function = {
            (n.split("/")[1] if "/" in n else "total"): {
                "train_first": train[0].get(f"{n}/mean") if train else None,
                "train_last": train[-1].get(f"{n}/mean") if train else None,
                "eval_start": evals[0].get(f"eval/{n}/mean") if evals else None,
                "eval_end": evals[-1].get(f"eval/{n}/mean") if evals else None,
            }
            for n in names
        }
        t = run_cfg.train
        summary = {
            "reward_first": per_function["total"]["train_first"],
            "reward_last": per_function["total"]["train_last"],
            "eval_reward_start": per_function["total"]["eval_start"],
            "eval_reward_end": per_function["total"]["eval_end"],
            "eval_steps": [r["step"] for r in evals],
            "eval_setting": f"{t.eval_rows or 'all'} eval rows x {t.eval_generations} completion(s) at temperature "
            f"{t.eval_temperature:g}" + (" (greedy)" if t.eval_temperature == 0 else ""),
            "rewards": per_function,
            "curves": str(Path(run_cfg.output_dir) / "curves.png"),
        }
        return ckpt / "model", summary

    def evaluate(self, model_dir: Path, name: str, data: str | None = None) -> dict[str, Any]:
        from .data.benchmarks import load_benchmark
        from .evaluate import evaluate_model

        path = self.data_path(data or self.cfg.eval.data)
        if not path.exists():
            return {}
        from .lru import LRUBytes
        from .sft import AudioStores

        rows = load_benchmark(path, family=self.family, answer_format=self.cfg.eval.answer_format).rows
        if self.cfg.eval.max_rows:
            rows = rows[: self.cfg.eval.max_rows]
        if self._eval_stores is None:
            self._eval_stores = AudioStores(features=LRUBytes(1 << 30), encoder=LRUBytes(1 << 30))
        result = evaluate_model(
            model_dir,
            rows,
            engine=self.cfg.eval.engine,
            max_new_tokens=self.cfg.eval.max_new_tokens,
            max_model_len=self.cfg.rollout.max_model_len,
            audio_stores=self._eval_stores,
            prefer=self.cfg.eval.answer_format,
        )
        result["reward"] = self.eval_reward(rows, [r["completion"] for r in result["results"]])
        (self.out / "samples").mkdir(parents=True, exist_ok=True)
        with (self.out / "samples" / f"{name}.jsonl").open("w") as f:
            for r in result.pop("results"):
                f.write(json.dumps(r) + "\n")
        print(
            f"[recipe] eval after '{name}': mcq {result['mcq_accuracy']}, open {result['open_accuracy']}, "
            f"format {result['format_rate']}"
        )
        return {"eval": result}

    def eval_reward(self, rows: list[Any], completions: list[str]) -> dict[str, float]:
        """The GRPO stage's rewards (``rewards:``) on one completion per eval row: the mean of the weighted
        total (``total``) and of each function over the rows it applies to, so that every stage, not only GRPO,
        is scored as GRPO is."""
        from .rewards import RewardSet
        from .trainer import score_completions

        rewards = RewardSet.from_specs(self.cfg.rewards, on_error=self.cfg.grpo.reward_on_error)
        out = score_completions(rewards, rows, completions, list(range(len(rows))))
        means = {
            k.split("/")[1]: v for k, v in out.metrics().items() if k.startswith("rewards/") and k.endswith("/mean")
        }
        return {"total": sum(out.total) / len(out.total) if out.total else math.nan, **means}

    def _write_report(self, wall_s: float) -> None:
        self.report["wall_s"] = round(wall_s, 1)
        (self.out / "report.json").write_text(json.dumps(self.report, indent=2) + "\n")
        lines = [
            f"# Recipe report ({self.family.name})",
            "",
            f"Total wall time: {wall_s / 60:.1f} min",
            "",
            "| stage | kind | MCQ acc | MCQ answers naming one choice | open acc | format rate | eval reward | "
            "per question type |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for s in self.report["stages"]:
            e = s.get("eval", {})
            per = ", ".join(f"{k} {v:.2f}" for k, v in e.get("per_task", {}).items())
            lines.append(
                f"| {s['name']} | {s['kind']} | {_fmt(e.get('mcq_accuracy'))} | {_fmt(e.get('choice_rate'))} | "
                f"{_fmt(e.get('open_accuracy'))} | {_fmt(e.get('format_rate'))} | "
                f"{_fmt(e.get('reward', {}).get('total'))} | {per} |"
            )
        grpo = [s for s in self.report["stages"] if s["kind"] == "grpo"]
        for s in grpo:
            steps = s.get("eval_steps") or []
            lines += [
                "",
                f"GRPO stage '{s['name']}': mean reward per function; eval on {s.get('eval_setting')}, at steps "
                f"{', '.join(map(str, steps)) or '-'}. Curves: {s.get('curves')}",
                "",
                "| reward | train, first step | train, last step | eval, first | eval, last |",
                "|---|---|---|---|---|",
            ]
            for name, r in s.get("rewards", {}).items():
                lines.append(
                    f"| {name} | {_fmt(r['train_first'])} | {_fmt(r['train_last'])} | {_fmt(r['eval_start'])} | "
                    f"{_fmt(r['eval_end'])} |"
                )
        (self.out / "report.md").write_text("\n".join(lines) + "\n")
        self._plot()

    def _plot(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        stages = [s for s in self.report["stages"] if s.get("eval")]
        tasks = sorted({k for s in stages for k in s["eval"].get("per_task", {})})
        if not stages or not tasks:
            return
        fig, ax = plt.subplots(figsize=(max(6, len(tasks) * 1.2), 4))
        width = 0.8 / len(stages)
        for i, s in enumerate(stages):
            vals = [s["eval"]["per_task"].get(t, 0.0) for t in tasks]
            ax.bar([j + i * width for j in range(len(tasks))], vals, width, label=s["name"])
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(tasks))], tasks, rotation=30, ha="right", fontsize=8)
        ax.axhline(0.25, color="grey", ls="--", lw=0.8, label="MCQ chance")
        ax.set(ylabel="accuracy", title="Eval accuracy per stage and question type", ylim=(0, 1))
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(self.out / "stages.png", dpi=110)
        plt.close(fig)


def _digest(value: Any) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _fmt(v: Any) -> str:
    return "-" if v is None or v != v else f"{v:.3f}"  # None or NaN (a reward no sample applied to)

"""What a recipe remembers between runs: each stage's key (what its model depends on), its evaluation's key, and
the records that let a later run skip what is done.

- ``<stage>/STAGE_COMPLETE.json``: a finished stage's key, its evaluation's key and its report entry;
- ``<stage>/STAGE_STARTED.json``: a GRPO stage's key when it last started training (its checkpoints are resumed
  only under the same key);
- ``BASE_EVALUATED.json`` in the output folder: the base model's evaluation, with its key (a tiny base model's
  folder is rebuilt by every run, so the record lives beside it).

A stage's key hashes the settings its kind reads (:data:`READS`, one list a kind, plus the stage's own settings),
the content of the data it trains on, its input model's fingerprint and the key of the stage before it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ..checkpoint import model_fingerprint
from ..config import RecipeConfig, RunConfig, StageConfig
from ..data.benchmarks import read_benchmark
from ..data.loaders import read_manifest
from ..fingerprint import data_fingerprint
from .results import StageResult

# Supervised stage kinds that train on audio, and all supervised kinds (run by ``Recipe.sft``).
AUDIO_SFT_KINDS = ("sft", "cold_start")
SFT_KINDS = ("text_pretrain", *AUDIO_SFT_KINDS)
STAGE_MARKER = "STAGE_COMPLETE.json"
STARTED_MARKER = "STAGE_STARTED.json"
BASE_MARKER = "BASE_EVALUATED.json"

# The recipe's own settings that build the base model and the corpus a stage starts from.
_RECIPE_OWN = ("tiny_model", "standardize_audio", "audio_cache_gb", "synthetic")
# The recipe settings each kind of stage reads besides its own (``StageConfig``): its key hashes these alone, so a
# section added to the config joins a stage's key only once it is named here. A supervised stage (and an ``eval``
# stage, which trains nothing) reads the model, the processes and the seed; a GRPO stage runs the whole of
# ``RunConfig`` (``Recipe.grpo_config``), and its curves are drawn on ``eval.data`` (in its data key).
SUPERVISED_READS = ("seed", "model", "parallel", *_RECIPE_OWN)
GRPO_READS = (*(f.name for f in dataclasses.fields(RunConfig) if f.name != "output_dir"), *_RECIPE_OWN)
READS: dict[str, tuple[str, ...]] = {**{kind: SUPERVISED_READS for kind in (*SFT_KINDS, "eval")}, "grpo": GRPO_READS}


def data_path(out: Path, spec: str) -> Path:
    """A data spec's file: ``synthetic:NAME`` is the synthetic corpus's ``NAME.jsonl`` (or ``NAME`` with its own
    suffix) under the output folder ``out``; anything else is a path."""
    if spec.startswith("synthetic:"):
        name = spec.split(":", 1)[1]
        return out / "data" / (name if Path(name).suffix else f"{name}.jsonl")
    return Path(spec)


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


@dataclasses.dataclass
class StageRecord:
    """A finished stage's ``STAGE_COMPLETE.json``: the ``key`` it trained under, its evaluation's ``eval_key``
    (None for a record without one), and its report ``entry``."""

    key: dict[str, Any]
    eval_key: str | None
    entry: StageResult


class StageKeys:
    """The keys of a recipe's stages and evaluations.

    Args:
        cfg: the recipe.
        out: its output folder (where ``synthetic:`` data lies).
        sampled_after: whether the evaluation after stage ``i`` (-1: the base model) samples
            (``Recipe.sampled_after``).
    """

    def __init__(self, cfg: RecipeConfig, out: Path, sampled_after: Any):
        self.cfg = cfg
        self.out = out
        self.sampled_after = sampled_after
        self._fingerprints: dict[tuple[Any, ...], str] = {}  # by file, reader, size and mtime

    def stage_key(self, stage: StageConfig, input_model: Path, upstream: str | None = None) -> dict[str, Any]:
        """What a stage's model depends on: its own settings (its ``evaluate`` aside) and the recipe settings its
        kind reads (:data:`READS`), the content of the data it trains on (:meth:`data_key`: its ``data`` and
        ``replay`` files, and for GRPO the eval data its curves are drawn on), its input model's fingerprint, and
        ``upstream``, the key of the stage that trained its input model (None for the base model): a stage trained
        again retrains every later stage, whether or not the sampled bytes of its new model differ. What its
        evaluation depends on is :meth:`eval_key`.

        Raises:
            FileNotFoundError: a data file it trains on is not there (the synthetic corpus is written by ``run``).
        """
        cfg = OmegaConf.to_container(OmegaConf.structured(self.cfg))
        read = {name: cfg[name] for name in READS[stage.kind]}
        if stage.kind == "grpo":  # the run's own evaluation data (its curves)
            read["eval_data"] = cfg["eval"]["data"]
        settings = {"stage": OmegaConf.to_container(OmegaConf.structured(stage)), "recipe": read}
        settings["stage"].pop("evaluate")  # what its evaluation depends on
        data: dict[str, str] = {}
        if stage.kind != "eval":  # an eval stage trains nothing: its file is its evaluation's (eval_key)
            data.update(self.data_key(stage.data))
            data.update(self.data_key(stage.replay))
        if stage.kind == "grpo":
            data.update(self.data_key(self.cfg.eval.data, benchmark=True))
        return {
            "settings": digest(settings),
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
            path = data_path(self.out, spec)
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
        return digest(reads)


def completed(out: Path, stage: StageConfig, key: dict[str, Any]) -> StageRecord | None:
    """The stage's completion record if it was completed with ``key`` and its output model is still there (its
    ``model_dir`` found under ``out``, :func:`stage_model_dir`)."""
    try:
        done = json.loads((out / stage.name / STAGE_MARKER).read_text())
    except (OSError, ValueError):
        return None
    if done.get("key") != key:
        return None
    entry = StageResult.from_dict(done["entry"])
    entry.model_dir = str(stage_model_dir(out, entry.model_dir))
    if not Path(entry.model_dir, "config.json").is_file():
        return None
    return StageRecord(key, done.get("eval_key"), entry)


def mark_completed(out: Path, stage: StageConfig, key: dict[str, Any], eval_key: str, entry: StageResult) -> None:
    """Write the stage's ``STAGE_COMPLETE.json``."""
    write_record(out / stage.name / STAGE_MARKER, {"key": key, "eval_key": eval_key, "entry": entry.to_dict()})


def started_under(out: Path, stage: StageConfig, key: dict[str, Any]) -> bool:
    """Whether the GRPO stage's run in its folder started under ``key`` (its ``STAGE_STARTED.json``)."""
    try:
        return json.loads((out / stage.name / STARTED_MARKER).read_text()).get("key") == key
    except (OSError, ValueError):
        return False


def mark_started(out: Path, stage: StageConfig, key: dict[str, Any]) -> None:
    """Write the GRPO stage's ``STAGE_STARTED.json``."""
    write_record(out / stage.name / STARTED_MARKER, {"key": key})


def base_evaluated(out: Path, key: dict[str, Any]) -> StageResult | None:
    """The base model's entry recorded under ``key`` (``BASE_EVALUATED.json``), else None."""
    try:
        done = json.loads((out / BASE_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return StageResult.from_dict(done["entry"]) if done.get("key") == key else None


def mark_base_evaluated(out: Path, key: dict[str, Any], entry: StageResult) -> None:
    """Write ``BASE_EVALUATED.json``."""
    write_record(out / BASE_MARKER, {"key": key, "entry": entry.to_dict()})


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Write ``record`` as JSON to ``path`` whole or not at all (a temporary file renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)


def digest(value: Any) -> str:
    """A 16-hex-digit hash of ``value``'s JSON (keys sorted)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]

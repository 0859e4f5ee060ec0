"""A recipe's checks before its first stage: its own ``data`` section, what must be evaluated, and every data file it
names with its rows (so that a misspelt file or a bad row fails before any compute, not when its stage starts)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import ConfigError, RecipeConfig, RunConfig, StageConfig
from ..data.check import load_rows
from ..data.schema import ContextLimit
from ..data.synthetic import CORPUS_FILES
from ..models import ModelFamily
from .records import data_path

# The run's files a recipe sets for each GRPO stage, and where a recipe names them instead.
STAGE_DATA = {
    "train": "each stage's own data (stages[i].data)",
    "eval": "eval.data (every stage's evaluation, and a GRPO stage's curves)",
    "replay": "each stage's own replay (stages[i].replay)",
}


def check_recipe_data(cfg: RecipeConfig) -> None:
    """A recipe's ``data.train``, ``data.eval`` and ``data.replay`` are empty: each GRPO stage's run takes them from
    the stage and ``eval.data`` (``Recipe.grpo_config``), so a value there would be overwritten unread. The rest of
    ``data`` (``bad_rows``, ``train_tasks``, ``long_audio``, ...) applies to every GRPO stage.

    Raises:
        ConfigError: naming the key and where to put its value.
    """
    for key, where in STAGE_DATA.items():
        value = getattr(cfg.data, key)
        if value.strip():
            raise ConfigError(
                f"data.{key} = {value!r}: a recipe sets it for each GRPO stage; name the file in {where} instead"
            )


def check_evaluated(cfg: RecipeConfig, sampled_after: Callable[[int], bool]) -> None:
    """A stage left unevaluated (``evaluate: false``, ``eval.base: false``) is neither an ``eval`` stage nor one
    the sampled evaluation runs after (GRPO's paired difference needs both sides); else ``ConfigError``."""
    unevaluated = [(-1, "eval.base")] if not cfg.eval.base else []
    unevaluated += [(i, f"stages[{i}] ({s.name!r})") for i, s in enumerate(cfg.stages) if not s.evaluate]
    for index, field in unevaluated:
        if index >= 0 and cfg.stages[index].kind == "eval":
            raise ConfigError(f"{field}: evaluate is false, but an 'eval' stage is its evaluation")
        if sampled_after(index):
            why = (
                "after every model (eval.samples_at: all); or set eval.samples_at: grpo"
                if cfg.eval.samples_at == "all"
                else "after it (eval.samples_at), for GRPO's paired difference"
            )
            raise ConfigError(f"{field}: not evaluated, but the sampled evaluation runs {why}")


def check_data(
    cfg: RecipeConfig, out: Path, family: type[ModelFamily], grpo_config: Callable[[StageConfig, Path], RunConfig]
) -> None:
    """Every data file the recipe names (``eval.data``, each stage's ``data`` and ``replay``, ``eval.final``) is
    there, or is one the synthetic corpus writes (``CORPUS_FILES``) with ``synthetic.enabled``; a training stage
    names at least one. Else ``ConfigError`` naming the field: a misspelt file fails before the first stage, not
    when the stage that reads it starts, and an evaluation is never skipped for want of its file. ``grpo_config``
    gives a GRPO stage's run (its ``data.bad_rows`` and engine context)."""
    fields = [("eval.data", cfg.eval.data)]
    skips: dict[str, str] = {}
    sampled: dict[str, Any] = {}
    for i, stage in enumerate(cfg.stages):
        if not stage.data.strip() and stage.kind != "eval":  # an eval stage's data defaults to eval.data
            raise ConfigError(f"stages[{i}] ({stage.name!r}).data: empty, but a {stage.kind} stage trains on it")
        fields += [(f"stages[{i}] ({stage.name!r}).{name}", getattr(stage, name)) for name in ("data", "replay")]
        if stage.kind == "grpo":  # GRPO reads its rows under data.bad_rows (its overrides included)
            grpo = grpo_config(stage, out)
            skips[fields[-2][0]] = skips[fields[-1][0]] = grpo.data.bad_rows
            sampled[fields[-2][0]] = grpo.rollout  # its prompts must fit the engine's context
    fields += [(f"eval.final[{i}].data", final.data) for i, final in enumerate(cfg.eval.final)]
    files: dict[Path, str] = {}  # the user's own files, each with the first field that names it
    for field, specs in fields:
        for spec in filter(None, (s.strip() for s in specs.split(","))):
            path = data_path(out, spec)
            if spec.startswith("synthetic:"):
                _check_synthetic(cfg, field, spec, path)
            elif not path.is_file():
                raise ConfigError(f"{field}: {spec!r}: no such file")
            else:
                files.setdefault(path, field)
    # A model given by path (not built by the recipe, tiny_model) gives the context GRPO's prompts must fit.
    base = None if cfg.tiny_model else Path(cfg.model.path)
    for path, field in files.items():  # every row and clip, before the first stage spends any compute
        rollout = sampled.get(field)
        context = (
            ContextLimit.from_checkpoint(base, rollout.max_new_tokens, rollout.max_model_len)
            if rollout is not None and base is not None and (base / "config.json").is_file()
            else None
        )
        # as the stage or evaluation that reads it loads it: an eval.final file as a benchmark (RowsError is a
        # ConfigError naming the field)
        load_rows(
            path, field, family, skips.get(field, "raise"), context=context, benchmark=field.startswith("eval.final")
        )


def _check_synthetic(cfg: RecipeConfig, field: str, spec: str, path: Path) -> None:
    """A ``synthetic:`` spec names a file the recipe's corpus writes, else ``ConfigError`` naming ``field``."""
    known = set(CORPUS_FILES.values())
    held_out = {CORPUS_FILES["eval"], CORPUS_FILES["eval_mmau"]}
    if not cfg.synthetic.enabled:
        why = "synthetic.enabled is false"
    elif path.name not in known:
        why = f"the synthetic corpus writes no such file (it writes {', '.join(sorted(known))})"
    elif path.name in held_out and cfg.synthetic.n_eval == 0:
        why = "synthetic.n_eval is 0: the corpus's held-out split is empty"
    else:
        return
    raise ConfigError(f"{field}: {spec!r}: {why}")

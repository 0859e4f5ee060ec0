"""Training checkpoints: written atomically, found again only when complete.

A checkpoint is a folder ``checkpoints/step-000010/`` holding

- ``model/``: the policy in the layout transformers and vLLM load (LoRA folded in), with its processor, written by
  the main process from the gathered weights (tensor by tensor under FSDP2);
- ``state/``: the policy's exact state (LoRA adapters included) and the optimiser's, for resuming, written by every
  process with ``torch.distributed.checkpoint`` (DCP): each process its own shards, loadable on any number of
  processes and any strategy (:func:`load_training_state`);
- ``scheduler.pt``;
- ``rng/rank-00000.pt``, one per process: that process's python, numpy and torch (and CUDA) generator states, so
  that after a resume every process draws its own stream on (dropout, sampling), not the main process's;
- ``trainer_state.json``: step, data position, seed;
- ``lineage.json``: the run it belongs to (:class:`Lineage`: run id, the base model's fingerprint, config hash);
- ``COMPLETE``: written last.

A run's output directory holds ``run.json``, the lineage of the run that writes there. Rotation (``keep_last``) and
``resume: auto`` see only that run's checkpoints; a new run (another base model or config, or ``resume: never``)
in a directory holding other checkpoints is refused, naming them, unless ``train.overwrite`` replaces them.

Everything is written into ``.tmp-step-000010-<run>`` and renamed into place by the main process once every process
has written its part, so a crash while saving leaves a
``.tmp-*`` folder that is ignored (and removed on the next save), never a half checkpoint. Only the newest
``keep_last`` complete checkpoints are kept; older ones are removed after a new one is in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
import shutil
import uuid
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from .errors import UserError
from .parallel import Parallel

logger = logging.getLogger(__name__)

STEP_RE = re.compile(r"^step-(\d{6,})$")
MARKER = "COMPLETE"
LINEAGE = "lineage.json"
RUN_FILE = "run.json"
# Settings that do not change what a run computes up to a given step: a run resumed with other values of these
# is the same run. max_steps: a run may be extended; the learning-rate schedule then follows the new total from
# the step reached.
BOOKKEEPING_KEYS = (
    "output_dir",
    "data.eval",
    "train.max_steps",
    "train.resume",
    "train.overwrite",
    "train.save_every",
    "train.keep_last",
    "train.eval_every",
    "train.eval_rows",
    "train.eval_temperature",
    "train.eval_generations",
    "train.samples_per_eval",
    "train.max_skipped_steps",
    "parallel.strategy",  # how the processes share the model, not what they compute: a run resumes on another one
    "parallel.cpu_offload",
)


class CheckpointError(UserError, RuntimeError):
    """A checkpoint could not be written, or an output directory belongs to another run."""


@dataclass(frozen=True)
class Lineage:
    """Which run a checkpoint belongs to.

    Attributes:
        run_id: drawn when the run starts fresh; kept across resumes.
        base_model: ``model_fingerprint`` of the model the run started from.
        config: ``config_hash`` of the run's settings.
    """

    run_id: str
    base_model: str
    config: str

    @classmethod
    def read(cls, path: Path) -> Lineage | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def same_run(self, base_model: str, config: str) -> bool:
        return (self.base_model, self.config) == (base_model, config)


def new_lineage(base_model: str, config: str) -> Lineage:
    return Lineage(uuid.uuid4().hex[:12], base_model, config)


def model_fingerprint(model_dir: str | Path, sample_bytes: int = 1 << 20) -> str:
    """A digest of a model directory: ``config.json`` whole, and each weight file's name, size and bytes at its
    start, middle and end (``sample_bytes`` each): a retrained or other model differs there, and an 8 B
    checkpoint is fingerprinted without reading 16 GB.

    Raises:
        FileNotFoundError: ``model_dir`` has no ``config.json``.
    """
    folder = Path(model_dir)
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    for path in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with path.open("rb") as f:
            for offset in sorted({0, max(0, size // 2 - sample_bytes // 2), max(0, size - sample_bytes)}):
                f.seek(offset)
                digest.update(f.read(sample_bytes))
    return digest.hexdigest()[:16]


def config_hash(config: Any, rewards: Any = None) -> str:
    """A digest of a config dataclass's settings, ``BOOKKEEPING_KEYS`` left out.

    Args:
        config: the run's config.
        rewards: a ``RewardSet`` built in Python rather than from ``config.rewards`` (whose entries then say nothing
            of the run): described by :func:`reward_identity` in place of the config's list.
    """
    flat: dict[str, Any] = {}

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{prefix}{k}.")
        else:
            flat[prefix[:-1]] = value

    settings = asdict(config)
    if rewards is not None:
        settings["rewards"] = reward_identity(rewards)
    walk(settings, "")
    kept = {k: v for k, v in sorted(flat.items()) if k not in BOOKKEEPING_KEYS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def reward_identity(rewards: Any) -> list[dict[str, Any]]:
    """What a ``RewardSet`` computes, for a run's identity: each reward's name, weight, callable (module and
    qualified name), the tasks it is restricted to and its settings (a reward object's attributes). The code itself
    is left out, as it is for rewards named in a config: a run may resume after a reward's bug is fixed."""

    def describe(fn: Any) -> dict[str, Any]:
        inner = getattr(fn, "fn", None) if hasattr(fn, "tasks") else None  # ForTasks: the reward it restricts
        if inner is not None:
            return {**describe(inner), "tasks": list(fn.tasks)}
        kind = fn if callable(fn) and hasattr(fn, "__qualname__") else type(fn)
        out: dict[str, Any] = {"callable": f"{kind.__module__}:{kind.__qualname__}"}
        if kind is type(fn):
            values = sorted(vars(fn).items()) if hasattr(fn, "__dict__") else []
            out["settings"] = {k: re.sub(r" at 0x[0-9a-f]+", "", repr(v)) for k, v in values}  # no addresses
        return out

    return [
        {"name": name, "weight": weight, **describe(fn)}
        for (fn, weight), name in zip(rewards.rewards, rewards.names, strict=True)
    ]


def checkpoint_dirs(root: str | Path, run_id: str | None = None) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first; only run ``run_id``'s when given."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m[1]), p) for p in root.iterdir() if (m := STEP_RE.match(p.name)) and (p / MARKER).is_file()]
    dirs = [p for _, p in sorted(found)]
    if run_id is not None:
        dirs = [p for p in dirs if (lin := Lineage.read(p / LINEAGE)) is not None and lin.run_id == run_id]
    return dirs


def latest_checkpoint(root: str | Path, run_id: str | None = None) -> Path | None:
    dirs = checkpoint_dirs(root, run_id)
    return dirs[-1] if dirs else None


def start_run(out: str | Path, base_model: str, config: str, resume: str, overwrite: bool) -> tuple[Lineage, bool]:
    """The lineage of the run about to write into ``out``, and whether it continues the run recorded there.

    The run recorded in ``out/run.json`` is continued when ``resume`` is not ``never`` and its base model and
    config are these. Otherwise a new run starts: refused while ``out/checkpoints`` holds checkpoints (of any
    other run), unless ``overwrite``, which removes them.

    Raises:
        CheckpointError: a new run in a directory with another run's checkpoints, without ``overwrite``.
    """
    out = Path(out)
    prior = Lineage.read(out / RUN_FILE)
    if resume != "never" and prior is not None and prior.same_run(base_model, config):
        own = set(checkpoint_dirs(out / "checkpoints", prior.run_id))
        strays = [p for p in checkpoint_dirs(out / "checkpoints") if p not in own]
        if strays and not overwrite:  # resuming past them would silently redo or lose their steps
            raise CheckpointError(
                f"{out}: complete checkpoints that are not this run's or whose {LINEAGE} cannot be read: "
                f"{', '.join(p.name for p in strays)}. Move them away, or set train.overwrite=true to remove them."
            )
        for p in strays:
            shutil.rmtree(p)
        return prior, True
    others = (
        sorted(p for p in (out / "checkpoints").glob("step-*") if p.is_dir()) if (out / "checkpoints").is_dir() else []
    )
    if others and not overwrite:
        why = (
            "resume is 'never'"
            if resume == "never"
            else "no run is recorded there"
            if prior is None
            else "its base model differs"
            if prior.base_model != base_model
            else "its config differs"
        )
        raise CheckpointError(
            f"{out} holds checkpoints of another run ({', '.join(p.name for p in others)}; {why}): a new run there "
            "would mix with them. Choose another output_dir, or set train.overwrite=true to remove them."
        )
    for p in others:
        shutil.rmtree(p)
    lineage = new_lineage(base_model, config)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / RUN_FILE, json.dumps(asdict(lineage), indent=2) + "\n")
    return lineage, False


def check_resume(resume: str, base_model: str, model_path: str | Path) -> None:
    """``train.resume`` naming a checkpoint: a complete one, made from the base model ``model_path`` whose
    fingerprint is ``base_model`` (checked before anything is written into the output directory).

    Raises:
        CheckpointError: not a complete checkpoint folder, no lineage, or another base model.
    """
    if resume in ("auto", "never"):
        return
    path = Path(resume)
    if not (path / "COMPLETE").is_file():
        raise CheckpointError(
            f"train.resume={path}: not a complete checkpoint folder (a checkpoints/step-NNNNNN folder with its "
            "COMPLETE marker)"
        )
    made_from = Lineage.read(path / LINEAGE)
    if made_from is None:
        raise CheckpointError(f"train.resume={path}: the checkpoint records no lineage ({LINEAGE})")
    if made_from.base_model != base_model:
        raise CheckpointError(
            f"train.resume={path}: that checkpoint was made from another base model than model.path {model_path}"
        )


def open_run(
    out: str | Path, model_path: str | Path, base_model: str, config: str, resume: str, overwrite: bool
) -> tuple[Lineage, Path | None]:
    """The lineage of the run about to write into ``out`` and the checkpoint it starts from (None: a fresh start):
    :func:`check_resume`, :func:`start_run` and :func:`resume_from`, in that order. The main process runs it
    (``Parallel.decide``); its outcome, or its error, is every process's."""
    check_resume(resume, base_model, model_path)
    lineage, continuing = start_run(out, base_model, config, resume, overwrite)
    return lineage, resume_from(resume, out, lineage.run_id, continuing)


def resume_from(resume: str, out: str | Path, run_id: str, continuing: bool) -> Path | None:
    """The checkpoint a run starts from: the named one, or with ``auto`` the run's newest when the output directory
    records this run (``continuing``, from :func:`start_run`); None for a fresh start."""
    if resume == "never":
        return None
    if resume != "auto":
        return Path(resume)
    return latest_checkpoint(Path(out) / "checkpoints", run_id) if continuing else None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    """This process's random generators: python's, numpy's global, torch's CPU one and, on a GPU, its CUDA one."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def rng_file(rank: int) -> str:
    """Where a checkpoint keeps process ``rank``'s random state."""
    return f"rng/rank-{rank:05d}.pt"


def training_state(model: Any, optimizer: Any) -> dict[str, Any]:
    """``{"model": ..., "optimizer": ...}``: the state dicts DCP saves and loads in place, keyed by parameter names
    whatever the wrapping (FSDP2's are sharded ``DTensor`` s, each process holding its shards)."""
    model_state, optimizer_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optimizer_state}


def load_training_state(path: str | Path, model: Any, optimizer: Any) -> None:
    """Load a checkpoint's ``state/`` into ``model`` and ``optimizer``, resharded for this run's processes.

    Raises:
        CheckpointError: the checkpoint's state does not fit the model (another architecture, LoRA on or off).
    """
    state = training_state(model, optimizer)
    try:
        with _one_process_is_intended():
            dcp.load(state, checkpoint_id=str(Path(path) / "state"), no_dist=not dist.is_initialized())
    except Exception as e:  # DCP wraps a missing or misshapen key in a CheckpointException carrying each rank's error
        raise CheckpointError(f"checkpoint {path} does not match the model: {e}") from e
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def save_checkpoint(
    root: str | Path,
    step: int,
    write_model,
    state: dict[str, Any],
    scheduler: Any,
    trainer_state: dict[str, Any],
    keep_last: int = 2,
    lineage: Lineage | None = None,
    parallel: Parallel | None = None,
) -> Path:
    """Write checkpoint ``step`` atomically and prune the same run's old ones; every process calls it.

    Args:
        root: the checkpoints folder.
        step: the optimiser step the state is after.
        write_model: ``f(folder, write)`` writing the loadable model into ``folder`` (``write``: this is the main
            process; the others take part in gathering the weights).
        state: what DCP saves (:func:`training_state`, or any dict of tensors).
        scheduler: an object with ``state_dict()``.
        trainer_state: JSON-serialisable loop state (step, data position, ...).
        keep_last: complete checkpoints of the run to keep (>= 1).
        lineage: the run the checkpoint belongs to; pruning sees only its checkpoints.
        parallel: the processes (None: this one alone).

    Raises:
        CheckpointError: the checkpoint could not be written (unwritable or full disk); the half-written folder
            is removed, and the previous checkpoints are untouched.
    """
    root = Path(root)
    main = parallel is None or parallel.process.is_main
    barrier = parallel.barrier if parallel is not None else (lambda: None)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}-{lineage.run_id if lineage else os.getpid()}"
    try:
        if main:
            root.mkdir(parents=True, exist_ok=True)
            for stale in root.glob(".tmp-step-*"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir()
        barrier()
        rank = parallel.process.rank if parallel is not None else 0
        (tmp / "rng").mkdir(exist_ok=True)
        torch.save(rng_state(), tmp / rng_file(rank))  # every process its own
        write_model(tmp / "model", main)
        with _one_process_is_intended():
            dcp.save(state, checkpoint_id=str(tmp / "state"), no_dist=not dist.is_initialized())
        if main:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2, sort_keys=True) + "\n")
            if lineage is not None:
                (tmp / LINEAGE).write_text(json.dumps(asdict(lineage), indent=2) + "\n")
        barrier()
        if main:
            (tmp / MARKER).write_text(f"step {step}\n")
            _fsync_tree(tmp)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        kept = latest_checkpoint(root, lineage.run_id if lineage else None)
        raise CheckpointError(
            f"cannot write checkpoint step {step} under {root}: {e.strerror or e}"
            + (f"; the previous checkpoint {kept.name} is intact" if kept else "")
        ) from e
    if main:
        _pause_for_tests(step, tmp)
        if final.exists():  # a checkpoint of the same step left by a run that was replaced
            shutil.rmtree(final)
        os.rename(tmp, final)
        for old in checkpoint_dirs(root, lineage.run_id if lineage else None)[: -max(1, keep_last)]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


PAUSE_ENV = "GRPO_AUDIO_TEST_PAUSE_BEFORE_RENAME"


def _pause_for_tests(step: int, tmp: Path) -> None:
    """Test-only switch: with ``GRPO_AUDIO_TEST_PAUSE_BEFORE_RENAME=STEP:FILE``, the save of step ``STEP``, once it
    has written every file but before it renames the folder into place, writes its folder's path to ``FILE`` and
    sleeps, so that a test can kill the process at exactly that point and prove it did."""
    at, _, flag = os.environ.get(PAUSE_ENV, "").partition(":")
    if flag and at.isdigit() and int(at) == step:
        import time

        Path(flag).write_text(str(tmp))
        time.sleep(3600)


def load_checkpoint(path: str | Path, rank: int = 0) -> dict[str, Any]:
    """Read back what :func:`save_checkpoint` wrote besides the model and optimiser state (those load in place
    with :func:`load_training_state`; the model's weights stay on disk in ``model/``).

    Returns:
        ``scheduler`` (its state dict), ``trainer_state`` (dict) and ``rng``: process ``rank``'s random state, or
        None when the checkpoint was saved on fewer processes (no state of that rank's to continue from).
    """
    path = Path(path)
    if not (path / MARKER).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {MARKER} marker)")
    own = path / rng_file(rank)
    legacy = path / "rng.pt"  # checkpoints written before each process saved its own: the main process's state
    rng = own if own.is_file() else legacy if legacy.is_file() else None
    return {
        "scheduler": torch.load(path / "scheduler.pt", weights_only=False),
        "rng": torch.load(rng, weights_only=False) if rng is not None else None,
        "trainer_state": json.loads((path / "trainer_state.json").read_text()),
    }


def resume_training(
    path: str | Path, rank: int, model: Any, optimizer: Any, scheduler: Any
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Load the checkpoint ``path`` into a run being built: the weights and optimiser state resharded for these
    processes (:func:`load_training_state`, on any number of them) and the scheduler's state.

    Returns:
        The trainer state (``step``, ``epoch``, ``cursor``, ``seed``) and process ``rank``'s random state, to be
        restored once everything else is built (None: the checkpoint was saved on fewer processes; this one keeps
        its seeded state, with a warning).
    """
    state = load_checkpoint(path, rank)
    load_training_state(path, model, optimizer)
    scheduler.load_state_dict(state["scheduler"])
    trainer_state = state["trainer_state"]
    if state["rng"] is None:
        logger.warning(
            "%s holds no random state of process %d (saved on fewer processes): it goes on from its seed", path, rank
        )
    logger.warning("resumed from %s at step %d", path, trainer_state["step"])
    return trainer_state, state["rng"]


@contextlib.contextmanager
def _one_process_is_intended():
    """DCP warns that it assumes one process whenever no process group exists, even when told so (``no_dist``)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())

"""Training checkpoints: written atomically, found again only when complete.

A checkpoint is a folder ``checkpoints/step-000010/`` holding

- ``model/``: the policy in the layout transformers and vLLM load (LoRA folded in), with its processor;
- ``policy.safetensors``: the trainable model's exact in-memory state (LoRA adapters included) for resuming;
- ``optimizer.pt``, ``scheduler.pt``, ``rng.pt`` (python, numpy, torch generator states);
- ``trainer_state.json``: step, data position, seed;
- ``COMPLETE``: written last.

Everything is written into ``.tmp-step-000010-<pid>`` and renamed into place, so a crash while saving leaves a
``.tmp-*`` folder that is ignored (and removed on the next save), never a half checkpoint. Only the newest
``keep_last`` complete checkpoints are kept; older ones are removed after a new one is in place.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STEP_RE = re.compile(r"^step-(\d{6,})$")
MARKER = "COMPLETE"


def checkpoint_dirs(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m[1]), p) for p in root.iterdir() if (m := STEP_RE.match(p.name)) and (p / MARKER).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str | Path) -> Path | None:
    dirs = checkpoint_dirs(root)
    return dirs[-1] if dirs else None


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(
    root: str | Path,
    step: int,
    write_model,
    policy_state: dict[str, torch.Tensor],
    optimizer: Any,
    scheduler: Any,
    trainer_state: dict[str, Any],
    keep_last: int = 2,
) -> Path:
    """Write checkpoint ``step`` atomically and prune old ones.

    Args:
        root: the checkpoints folder.
        step: the optimiser step the state is after.
        write_model: ``f(folder)`` writing the loadable model into ``folder``.
        policy_state: the trainable model's state dict (exact, for resuming).
        optimizer, scheduler: objects with ``state_dict()``.
        trainer_state: JSON-serialisable loop state (step, data position, ...).
        keep_last: complete checkpoints to keep (>= 1).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-step-*"):
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    tmp.mkdir()
    write_model(tmp / "model")
    save_file({k: v.detach().cpu().contiguous() for k, v in policy_state.items()}, str(tmp / "policy.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2, sort_keys=True) + "\n")
    (tmp / MARKER).write_text(f"step {step}\n")
    _fsync_tree(tmp)
    if final.exists():  # an older run's checkpoint of the same step
        shutil.rmtree(final)
    os.rename(tmp, final)
    for old in checkpoint_dirs(root)[: -max(1, keep_last)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read back what :func:`save_checkpoint` wrote (model weights stay on disk in ``model/``)."""
    path = Path(path)
    if not (path / MARKER).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {MARKER} marker)")
    return {
        "policy_state": load_file(str(path / "policy.safetensors")),
        "optimizer": torch.load(path / "optimizer.pt", weights_only=False),
        "scheduler": torch.load(path / "scheduler.pt", weights_only=False),
        "rng": torch.load(path / "rng.pt", weights_only=False),
        "trainer_state": json.loads((path / "trainer_state.json").read_text()),
    }


def _fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())

"""Temporary folders outside ``output_dir``, removed on any exit.

The only one today is the weight sync's folder: a full copy of the policy's weights in ``/dev/shm`` (RAM-backed),
there for the moment vLLM reads it. A folder is named ``grpo_audio_<kind>.<pid>-<start>.<random>`` after the
process that made it (its PID and start time, so that a PID the system gave to another process since is told
apart), in ``/dev/shm`` where it exists, else the temp dir. It goes away

- when its block ends, normally or by an exception (:func:`scratch_dir`);
- when its process is killed (SIGKILL: nothing in the process runs): the engine's reaper (``rollout/reaper.py``),
  which outlives it, removes every folder named after it (:func:`owner_pattern`);
- when even the reaper could not (the machine's OOM killer took both): the next start removes the folders whose
  owner is gone (:func:`remove_stale`, called when an engine starts).
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil

logger = logging.getLogger(__name__)
PREFIX = "grpo_audio_"
_NAME = re.compile(rf"^{PREFIX}\w+\.(\d+)-(\d+)\.")


def scratch_roots() -> list[Path]:
    """Where scratch folders go (the first) and are looked for: ``/dev/shm`` (when present) and the temp dir."""
    roots = [Path("/dev/shm")] if Path("/dev/shm").is_dir() else []
    return roots + [Path(tempfile.gettempdir())]


def owner_tag(pid: int | None = None) -> str:
    """``<pid>-<start>``: a process's PID and start time (centiseconds since the epoch) as folder names carry them."""
    proc = psutil.Process(pid)
    return f"{proc.pid}-{round(proc.create_time() * 100)}"


def owner_pattern(pid: int | None = None) -> str:
    """A glob matching the scratch folders of process ``pid`` (this one by default), in any root."""
    return f"{PREFIX}*.{owner_tag(pid)}.*"


@contextlib.contextmanager
def scratch_dir(kind: str) -> Iterator[Path]:
    """A new empty folder for the block, named after this process; removed when the block ends."""
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{kind}.{owner_tag()}.", dir=scratch_roots()[0]))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def remove_stale() -> list[Path]:
    """Remove the scratch folders whose owner is no longer running (killed with its reaper); returns them."""
    removed = []
    for root in scratch_roots():
        for path in root.glob(f"{PREFIX}*"):
            m = _NAME.match(path.name)
            if m is None or not path.is_dir() or _alive(int(m[1]), int(m[2])):
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        logger.warning("removed %d folder(s) left by killed runs: %s", len(removed), ", ".join(map(str, removed)))
    return removed


def _alive(pid: int, started_cs: int) -> bool:
    try:
        return round(psutil.Process(pid).create_time() * 100) == started_cs
    except psutil.Error:
        return False


def remove_owned(pattern: str) -> None:
    """Remove every scratch folder matching ``pattern`` (:func:`owner_pattern`) in every root."""
    for root in scratch_roots():
        for path in root.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)

"""One run at a time in an output folder.

Two runs started into one ``output_dir`` would both write its checkpoints, ``metrics.jsonl`` and ``run.json``, and
both report success while one overwrote the other. :class:`RunLock` holds an exclusive ``flock`` on
``OUTPUT_DIR/.lock`` for the run's lifetime; a second run is refused, naming the holder (host, PID, start time and
command line, which the holder writes into the file).

The kernel releases a ``flock`` when its holder exits by any means, SIGKILL included, so a killed run leaves no
stale lock: the file stays, but the next run takes it at once. Under torchrun the main process holds it for all
(``GRPOTrainer`` takes it before anything is written there). ``flock`` is per host on most network filesystems:
two runs on two hosts sharing a folder are not stopped by it. Within one process a new run takes the lock over
from an earlier one (a trainer built again after another that was never closed, as a notebook does): one process
runs one step at a time.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from .errors import UserError

LOCK_FILE = ".lock"
_HELD: dict[Path, RunLock] = {}  # this process's locks, by folder


class RunLockedError(UserError, RuntimeError):
    """The output folder is in use by another running run."""


class RunLock:
    """An exclusive lock on an output folder, held until :meth:`release` or the process's exit.

    Args:
        out: the output folder (created if missing).
        what: the kind of run taking it (``grpo``, ``recipe``), said in the holder's record.

    Raises:
        RunLockedError: another live process holds the folder; the message names it.
    """

    def __init__(self, out: str | Path, what: str = "run"):
        self.path = Path(out) / LOCK_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.folder = self.path.parent.resolve()
        earlier = _HELD.pop(self.folder, None)
        if earlier is not None:
            earlier.release()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _in_use(self.path) from None
        record = {
            "what": what,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd: int | None = fd
        _HELD[self.folder] = self

    @staticmethod
    def check_free(out: str | Path) -> None:
        """Refuse now if another process holds ``out`` (a probe that takes nothing: a command checks before it
        opens its log there, so that a refused run leaves the running one's log alone). The main process only:
        under torchrun the others would find each other's probes.

        Raises:
            RunLockedError: another live process holds the folder.
        """
        path = Path(out) / LOCK_FILE
        if int(os.environ.get("RANK", "0")) != 0 or not path.is_file() or path.parent.resolve() in _HELD:
            return
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(path) from None
        finally:
            os.close(fd)  # closing releases the shared lock taken

    @classmethod
    def on_main(cls, parallel: Any, out: str | Path, what: str = "run") -> RunLock | None:
        """The lock taken by the main process of ``parallel`` for every process (None on the others); its refusal is
        raised on every process (``Parallel.decide``)."""
        held: list[RunLock] = []
        parallel.decide(lambda: held.append(cls(out, what)))
        return held[0] if held else None

    def release(self) -> None:
        """Let the folder go (idempotent); the record stays for the next holder to overwrite."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if _HELD.get(self.folder) is self:
            del _HELD[self.folder]

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _in_use(path: Path) -> RunLockedError:
    return RunLockedError(
        f"{path.parent} is in use by another run ({_describe(path)}); wait for it to finish, stop it, or choose "
        "another output_dir"
    )


def _describe(path: Path) -> str:
    try:
        r = json.loads(path.read_text())
        return f"{r['what']} run, PID {r['pid']} on {r['host']} since {r['started']}: {r['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return f"its record in {path} is unreadable"

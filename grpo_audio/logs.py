"""What a ``grpo-audio`` command shows on the terminal, and the log file that keeps everything.

A GRPO run with vLLM rollouts prints a hundred lines that are not its own: vLLM's INFO records from three
processes (the main one, the engine core, the worker), warnings from its CPU platform checks, C++ warnings
(NUMA binding), deprecation warnings, weight-loading progress bars. Inside :class:`CommandLog`:

- the terminal shows the command's own output: what it prints, grpo-audio's log records (``grpo_audio.*``
  loggers), its progress bars (:func:`terminal`), and errors: ERROR records from any library or child process,
  the command's own error lines, and on a failure the traceback and the libraries' last lines;
- everything else written to the process's stdout and stderr, by any library, in any child process (they
  inherit the file descriptors), or from C++, goes to the log file only, as do the other libraries' log records
  and Python warnings;
- ``verbose`` shows that on the terminal too;
- under torchrun, processes other than the main one (``RANK`` > 0) show only errors, so the terminal reads as one
  process's; their logs go to ``grpo-audio.rankR.log``;
- the log file, ``<output folder>/grpo-audio.log`` (:meth:`CommandLog.log_to`), receives all of it, the command's
  own output included; what was written before the folder was known is kept and written first;
- an error the user caused (one of ``user_errors``: a bad config, a reward that raises, a refused output folder)
  shows as one line naming the cause and the log file, which keeps its traceback; under torchrun only the main
  process says it.

Outside a command (grpo-audio used from Python), nothing is redirected and :func:`terminal` is ``sys.stderr``.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import threading
import traceback
from collections import deque
from pathlib import Path
from typing import Any, TextIO

LOG_FILE = "grpo-audio.log"
VLLM_LOGGING = {"VLLM_LOGGING_STREAM": "ext://sys.stderr", "VLLM_LOGGING_LEVEL": "INFO"}
TAIL_LINES = 30  # the libraries' last lines shown when a command fails
# A log record at ERROR or above in the formats of Python's logging, vLLM and C++ (glog, c10) libraries.
_ERROR_RECORD = re.compile(r"(^|[\s:\]])(ERROR|CRITICAL|FATAL)[\s:\]]|^\[?[EF]\d{4} ")
_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
_active: CommandLog | None = None


def _rank() -> int:
    """This process's rank in a torchrun job (0 outside one)."""
    return int(os.environ.get("RANK", "0"))


def log_file_name() -> str:
    """``grpo-audio.log``, or ``grpo-audio.rankR.log`` for process R > 0 of a torchrun job."""
    rank = _rank()
    return LOG_FILE if rank == 0 else LOG_FILE.replace(".log", f".rank{rank}.log")


def redirected() -> bool:
    """Whether a command's output is being sorted (a :class:`CommandLog` is active)."""
    return _active is not None


def terminal() -> TextIO:
    """The stream a progress bar of grpo-audio's own writes to: the terminal under a command (nowhere on processes
    other than the main one), else stderr."""
    if _active is None:
        return sys.stderr
    return _NOWHERE if _active.secondary else _active.terminal_err


class _Nowhere(io.StringIO):
    """A stream that keeps nothing: the terminal of a process other than the main one."""

    def write(self, text: str) -> int:
        return len(text)


_NOWHERE = _Nowhere()


class _Sink:
    """The log file, thread-safe; before it is opened, what is written waits in memory."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: list[str] | None = []
        self.file: TextIO | None = None

    def write(self, text: str) -> None:
        with self.lock:
            if self.file is not None:
                self.file.write(text)
                self.file.flush()
            elif self.pending is not None:
                self.pending.append(text)

    def open(self, path: Path, header: str = "") -> None:
        with self.lock:
            if self.file is not None:
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = path.open("a", encoding="utf-8")
            self.file.write(header + "".join(self.pending or []))
            self.file.flush()
            self.pending = None

    def flush(self) -> None:  # every write is flushed already
        pass

    def close(self) -> None:
        with self.lock:
            if self.file is not None:
                self.file.close()
            self.file, self.pending = None, None


class _Tee(io.TextIOBase):
    """``sys.stdout`` under a command: the terminal and the log file."""

    def __init__(self, screen: TextIO, sink: _Sink):
        self.screen, self.sink = screen, sink

    def write(self, text: str) -> int:
        self.screen.write(text)
        self.sink.write(text)
        return len(text)

    def flush(self) -> None:
        self.screen.flush()

    def isatty(self) -> bool:
        return self.screen.isatty()


class _LineEnd(io.TextIOBase):
    """The terminal's stderr, knowing whether its last line is unfinished (a progress bar's), so that an error line
    starts on a line of its own."""

    def __init__(self, screen: TextIO):
        self.screen, self.mid_line = screen, False

    def write(self, text: str) -> int:
        if text:
            self.mid_line = not text.endswith("\n")
        return self.screen.write(text)

    def flush(self) -> None:
        self.screen.flush()

    def isatty(self) -> bool:
        return self.screen.isatty()

    def fileno(self) -> int:
        return self.screen.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.screen, "encoding", None) or "utf-8"


class _OwnOrError(logging.Filter):
    """The records the terminal shows by default: grpo-audio's own, and errors from anywhere."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith("grpo_audio") or record.levelno >= logging.ERROR


def _screen(stream: TextIO, fd: int) -> tuple[TextIO, bool]:
    """A stream on the terminal that ``fd`` reaches now, and whether it was opened here (a duplicate of ``fd``);
    a stream not on ``fd`` (a test's capture) is used as it is."""
    try:
        on_fd = stream.fileno() == fd
    except (AttributeError, OSError, ValueError):
        on_fd = False
    if not on_fd:
        return stream, False
    stream.flush()
    return open(os.dup(fd), "w", buffering=1, encoding=getattr(stream, "encoding", None) or "utf-8"), True


class CommandLog:
    """The terminal and log file of one command (see the module docstring); a context manager.

    Args:
        verbose: show everything on the terminal, not only the command's own output and errors.
        user_errors: the exception types the user causes, each shown as one line (its message and where the log
            is) rather than a traceback; the exception still leaves the ``with`` block.
    """

    def __init__(self, verbose: bool = False, user_errors: tuple[type[BaseException], ...] = ()):
        self.verbose = verbose
        self.user_errors = user_errors
        self.secondary = _rank() > 0 and not verbose  # errors only on the terminal
        self.path: Path | None = None
        self._sink = _Sink()
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._failed = False

    # ---- entering and leaving -------------------------------------------------------------------------------
    def __enter__(self) -> CommandLog:
        global _active
        sys.stdout.flush()
        sys.stderr.flush()
        self.terminal_out, self._own_out = _screen(sys.stdout, 1)
        self._raw_err, self._own_err = _screen(sys.stderr, 2)
        self.terminal_err = _LineEnd(self._raw_err)
        self._saved_fds = (os.dup(1), os.dup(2))
        read_end, write_end = os.pipe()
        os.dup2(write_end, 1)
        os.dup2(write_end, 2)
        os.close(write_end)
        self._reader = threading.Thread(target=self._pump, args=(read_end,), name="grpo-audio-log", daemon=True)
        self._reader.start()
        self._saved_stdout = sys.stdout
        sys.stdout = _Tee(_NOWHERE if self.secondary else self.terminal_out, self._sink)
        # vLLM writes its records to stdout unless told otherwise (stderr keeps them off the command's output), and
        # importing TRL sets their level to ERROR for every later process: the log file is to have all of them.
        self._saved_env = {k: os.environ.get(k) for k in VLLM_LOGGING}
        os.environ.update(VLLM_LOGGING)
        self._install_logging()
        _active = self
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        global _active
        if exc is not None:  # the log file gets the traceback; the terminal gets it as the exception leaves main
            self._sink.write("".join(traceback.format_exception(exc_type, exc, tb)))
            if isinstance(exc, self.user_errors):
                self._user_error(exc)
            else:
                self._failed = True
        _active = None
        logging.captureWarnings(False)
        root = logging.getLogger()
        for handler in self._handlers:
            root.removeHandler(handler)
        root.setLevel(self._saved_level)
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout = self._saved_stdout
        os.dup2(self._saved_fds[0], 1)  # closes this process's write ends of the pipe
        os.dup2(self._saved_fds[1], 2)
        for fd in self._saved_fds:
            os.close(fd)
        self._reader.join(timeout=10)  # a child process that outlived the command may still hold the pipe
        if self._failed and not self.verbose and not self.secondary and self._tail:
            # What the libraries wrote last often says why (a child process's error, vLLM's start-up checks).
            self.terminal_err.write(
                f"--- the last {len(self._tail)} lines of the libraries' output"
                + (f" (all of it in {self.path})" if self.path else "")
                + " ---\n"
                + "\n".join(self._tail)
                + "\n---\n"
            )
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for stream, own in ((self.terminal_out, self._own_out), (self._raw_err, self._own_err)):
            stream.flush()
            if own:
                stream.close()
        self._sink.close()

    def log_to(self, folder: str | Path, header: str = "") -> Path:
        """Write the log to ``folder/grpo-audio.log`` (appended to), starting with ``header`` (the command line and
        its config), then what was written so far. Under torchrun, process R > 0 writes ``grpo-audio.rankR.log``."""
        self.path = Path(folder) / log_file_name()
        self._sink.open(self.path, header)
        return self.path

    def error(self, message: str) -> None:
        """A one-line error of the command's own: the terminal and the log file."""
        self.terminal_err.write(message + "\n")
        self._sink.write(message + "\n")

    # ---- plumbing -------------------------------------------------------------------------------------------
    def _user_error(self, exc: BaseException) -> None:
        """The one line of an error the user caused: its cause, and where its traceback is (the main process only:
        under torchrun every process may meet the same error)."""
        if _rank() > 0:
            return
        where = f" (traceback in {self.path})" if self.path else ""
        self.terminal_err.write(("\n" if self.terminal_err.mid_line else "") + f"grpo-audio: {exc}{where}\n")

    def _install_logging(self) -> None:
        root = logging.getLogger()
        self._saved_level = root.level
        root.setLevel(logging.INFO)
        screen = logging.StreamHandler(self.terminal_err)
        screen.setFormatter(_FORMAT)
        if self.secondary:
            screen.setLevel(logging.ERROR)
        elif not self.verbose:
            screen.addFilter(_OwnOrError())
        log = logging.StreamHandler(self._sink)  # type: ignore[arg-type]
        log.setFormatter(_FORMAT)
        self._handlers = [screen, log]
        for handler in self._handlers:
            root.addHandler(handler)
        logging.captureWarnings(True)  # warnings become records of ``py.warnings``: the log file, or -v

    def _pump(self, fd: int) -> None:
        """Copy what arrives on the process's stdout and stderr to the log file; show it on the terminal if
        verbose, else only its error records (a child process's included); keep its last lines for a failure."""
        partial = ""
        with open(fd, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                text = chunk.decode("utf-8", errors="replace")
                self._sink.write(text)
                if self.verbose:
                    self.terminal_err.write(text)
                    self.terminal_err.flush()
                    continue
                lines = (partial + text).split("\n")
                partial = lines.pop()
                for line in lines:
                    self._tail.append(line)
                    if _ERROR_RECORD.search(line):
                        self.terminal_err.write(line + "\n")
                        self.terminal_err.flush()

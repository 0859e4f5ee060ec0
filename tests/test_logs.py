"""A command's terminal shows its own output and errors; the log file keeps everything, child processes and C-level
writes included; ``verbose`` shows everything. Each case runs in a fresh interpreter, whose file descriptors are a
real process's."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = """
import logging, os, subprocess, sys, warnings
from grpo_audio.logs import CommandLog, terminal

with CommandLog(verbose={verbose}) as log:
    print("own print")
    logging.getLogger("grpo_audio.trainer").info("own record")
    logging.getLogger("some_library").warning("library warning")
    logging.getLogger("some_library").error("library error")
    warnings.warn("a deprecation", DeprecationWarning)
    os.write(2, b"c-level write\\n")
    sys.stderr.write("library stderr\\n")
    subprocess.run([sys.executable, "-c", "import sys; print('child stdout'); print('child stderr', file=sys.stderr)"])
    child_error = "(EngineCore pid=1) ERROR 11-30 child error"
    subprocess.run([sys.executable, "-c", f"import sys; print({{child_error!r}}, file=sys.stderr)"])
    terminal().write("own progress bar\\n")
    log.log_to({folder!r})
    log.error("own error line")
    {last}
"""
OWN = ["own print", "own record", "library error", "own progress bar", "own error line", "child error"]
OTHERS = ["library warning", "a deprecation", "c-level write", "library stderr", "child stdout", "child stderr"]


def _run(tmp_path, verbose: bool, last: str = "pass") -> tuple[subprocess.CompletedProcess, str]:
    script = textwrap.dedent(SCRIPT).format(verbose=verbose, folder=str(tmp_path / "out"), last=last)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    return done, (tmp_path / "out" / "grpo-audio.log").read_text()


@pytest.mark.parametrize("verbose", [False, True])
def test_terminal_shows_own_output_and_the_log_keeps_everything(tmp_path, verbose):
    done, log = _run(tmp_path, verbose)
    assert done.returncode == 0, done.stderr
    terminal = done.stdout + done.stderr
    for text in OWN + OTHERS:
        if text != "own progress bar":  # progress bars are for the terminal only
            assert text in log, text  # written before the folder was known, or by another process: kept
    for text in OWN:
        assert text in terminal, text
    for text in OTHERS:
        assert (text in terminal) == verbose, text
    assert "own print" in done.stdout and "own record" in done.stderr  # results on stdout, records on stderr


def test_a_failing_command_leaves_its_traceback_in_the_log_and_on_the_terminal(tmp_path):
    done, log = _run(tmp_path, False, last='raise RuntimeError("the run broke")')
    assert done.returncode == 1
    assert "RuntimeError: the run broke" in done.stderr and "Traceback" in done.stderr
    assert "RuntimeError: the run broke" in log and "c-level write" in log
    # The libraries' last lines come with it (the cause is often there), and where the rest is.
    tail = done.stderr.split("lines of the libraries' output")[1]
    assert "c-level write" in tail and "child stderr" in tail and "grpo-audio.log" in tail.splitlines()[0]

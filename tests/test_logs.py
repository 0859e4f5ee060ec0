"""A command's terminal shows its own output and errors; the log file keeps everything, child processes and C-level
writes included; ``verbose`` shows everything. Each case runs in a fresh interpreter, whose file descriptors are a
real process's."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = """
import logging, os, subprocess, sys, warnings
from grpo_audio.logs import CommandLog, terminal


def command():
    with CommandLog(verbose={verbose}, user_errors=(ValueError,)) as log:
        print("own print")
        logging.getLogger("grpo_audio.trainer").info("own record")
        logging.getLogger("some_library").warning("library warning")
        logging.getLogger("some_library").error("library error")
        warnings.warn("a deprecation", DeprecationWarning)
        os.write(2, b"c-level write\\n")
        sys.stderr.write("library stderr\\n")
        child = "import sys; print('child stdout'); print('child stderr', file=sys.stderr)"
        subprocess.run([sys.executable, "-c", child])
        child_error = "(EngineCore pid=1) ERROR 11-30 child error"
        subprocess.run([sys.executable, "-c", f"import sys; print({{child_error!r}}, file=sys.stderr)"])
        terminal().write("own progress bar\\n")
        log.log_to({folder!r})
        log.error("own error line")
        {last}


try:
    command()
except ValueError:  # one of user_errors: cli.entry's exit status for it
    sys.exit(2)
"""
OWN = ["own print", "own record", "library error", "own progress bar", "own error line", "child error"]
OTHERS = ["library warning", "a deprecation", "c-level write", "library stderr", "child stdout", "child stderr"]


def _run(tmp_path, verbose: bool, last: str = "pass", rank: int = 0) -> tuple[subprocess.CompletedProcess, str]:
    script = textwrap.dedent(SCRIPT).format(verbose=verbose, folder=str(tmp_path / "out"), last=last)
    env = {**os.environ, "RANK": str(rank)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    return done, (tmp_path / "out" / ("grpo-audio.log" if rank == 0 else f"grpo-audio.rank{rank}.log")).read_text()


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


@pytest.mark.parametrize("rank", [0, 1])
def test_an_error_the_user_caused_is_one_line_naming_the_log_that_keeps_its_traceback(tmp_path, rank):
    """One of ``user_errors`` is said in one line with the log file's path, not a traceback nor the libraries' last
    lines; under torchrun the main process says it, the others keep it in their logs."""
    done, log = _run(tmp_path, False, last="raise ValueError(\"reward 'r' raised KeyError\")", rank=rank)
    assert done.returncode == 2  # the exception still leaves the block (the script exits as cli.entry does)
    assert "Traceback" in log and "ValueError: reward 'r' raised KeyError" in log
    lines = done.stderr.splitlines()
    assert "Traceback" not in done.stderr and "libraries' output" not in done.stderr
    if rank == 0:
        where = tmp_path / "out" / "grpo-audio.log"
        assert lines[-1] == f"grpo-audio: reward 'r' raised KeyError (traceback in {where})"
        assert "own error line" in lines[-2]  # the line before it is the command's own
    else:
        assert "reward 'r'" not in done.stderr

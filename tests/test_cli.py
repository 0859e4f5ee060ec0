"""The command line's own behaviour: typed settings for every stage command, a hint for flag-style settings,
``-v`` anywhere, and one-line errors from the ``grpo-audio`` executable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from grpo_audio.cli import main
from grpo_audio.config import ConfigError

TINY_YAML = Path(__file__).resolve().parents[1] / "examples" / "music_flamingo" / "tiny.yaml"

GRPO_AUDIO = Path(sys.executable).parent / "grpo-audio"


def test_flag_style_settings_get_a_key_value_hint(capsys):
    with pytest.raises(SystemExit):
        main(["synth", "--n", "8", "output_dir=x"])
    assert "this command takes key=value settings: n=..." in capsys.readouterr().err


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_verbose_anywhere_on_the_line(tmp_path, where, capsys):
    settings = [f"output_dir={tmp_path / where}", "n=1", "n_eval=0"]
    argv = {"first": ["-v", "synth", *settings], "middle": ["synth", settings[0], "--verbose", *settings[1:]],
            "last": ["synth", *settings, "-v"]}[where]  # fmt: skip
    assert main(argv) == 0
    assert "skills    3 rows" in capsys.readouterr().out
    assert (tmp_path / where / "grpo-audio.log").read_text().startswith("$ grpo-audio ")


def test_nonsense_settings_are_refused_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match=r"'n' = 0 is below its range, >= 1\."):
        main(["synth", f"output_dir={tmp_path / 's'}", "n=0"])
    with pytest.raises(ConfigError, match=r"'max_rows' = -1 is below its range, >= 0\."):
        main(["eval", "model=m", "data=d", "max_rows=-1"])
    with pytest.raises(ConfigError, match=r"'batch_size' = 0 is below its range, >= 1\."):
        main(["eval", "model=m", "data=d", "batch_size=0"])
    with pytest.raises(ConfigError, match="epochs .* or max_steps"):
        main(["sft", "model=m", "data=d", f"output_dir={tmp_path / 'o'}", "epochs=0"])
    with pytest.raises(ConfigError, match=r"eval.data: '/no/such/eval.jsonl': no such file"):
        main(["recipe", str(TINY_YAML), f"output_dir={tmp_path / 'r'}", "eval.data=/no/such/eval.jsonl"])
    assert not (tmp_path / "s").exists() and not (tmp_path / "o").exists() and not (tmp_path / "r").exists()


def test_ctrl_c_is_one_line_and_exit_status_130(tmp_path):
    """SIGINT, as Ctrl-C sends it, while a command runs (a corpus being written): one line, no traceback."""
    import signal
    import time

    out = tmp_path / "corpus"
    # As a terminal's foreground job: SIGINT not ignored, whatever this process inherited (an ignored signal
    # stays ignored across exec, and earlier tests' libraries may leave it so).
    proc = subprocess.Popen([str(GRPO_AUDIO), "synth", f"output_dir={out}", "n=20000"], stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    log = out / "grpo-audio.log"
    deadline = time.monotonic() + 120
    while not (log.is_file() and any((out / "clips").glob("*.wav"))) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None and any((out / "clips").glob("*.wav"))  # the premise: interrupted mid-corpus
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip() == "grpo-audio: interrupted; completed stages and saved checkpoints are kept", err
    assert not (out / "skills.jsonl").exists()  # it stopped before the end


def test_the_executable_reports_bad_input_in_one_line(tmp_path):
    env = {**os.environ, "PATH": f"{GRPO_AUDIO.parent}{os.pathsep}{os.environ['PATH']}"}
    for argv, status, message in (
        (["synth", "output_dir=x", "nn=3"], 2, "grpo-audio: command line: unknown config key 'nn'. Did you mean 'n'?"),
        (["train", str(tmp_path / "missing.yaml")], 2, "grpo-audio: config file not found"),
        (["eval", "model=nowhere", "data=nothing.json"], 1, "grpo-audio eval: not a checkpoint directory"),
    ):
        done = subprocess.run([str(GRPO_AUDIO), *argv], capture_output=True, text=True, cwd=tmp_path, env=env)
        assert done.returncode == status, done.stderr
        assert done.stderr.strip().startswith(message) and "Traceback" not in done.stderr, done.stderr

"""The command line's own behaviour: typed settings for every stage command, a hint for flag-style settings,
``-v`` anywhere, and one-line errors from the ``grpo-audio`` executable: an error the user caused (a config, a
reward, an output folder) is one line naming the cause and the log file, which keeps the traceback."""

from __future__ import annotations

import os
import re
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
    broken = tmp_path / "broken.yaml"
    broken.write_text("output_dir: x\nmodel: {path: p, family: audio_flamingo3\ngrpo: {num_generations: 4}\n")
    good = tmp_path / "good.yaml"
    good.write_text("output_dir: x\nmodel: {path: p, family: audio_flamingo3}\n")
    for argv, status, message in (
        (["synth", "output_dir=x", "nn=3"], 2, "grpo-audio: command line: unknown config key 'nn'. Did you mean 'n'?"),
        (["train", str(tmp_path / "missing.yaml")], 2, "grpo-audio: config file not found"),
        (["train", str(broken)], 2, f"grpo-audio: {broken}:3:5: not valid YAML: while parsing a flow mapping"),
        (
            ["train", str(good), "rollout.gpu_memory_utilization=1.5"],
            2,
            "grpo-audio: config key 'rollout.gpu_memory_utilization' = 1.5 is above its range, (0, 1].",
        ),
        (["train", str(good)], 2, "grpo-audio: model.path='p': not a model folder (no such folder)"),
        (["synth", "output_dir=x", "n=[1,"], 2, "grpo-audio: command line: config key 'n': '[1,' is not valid YAML"),
        (["eval", "model=nowhere", "data=nothing.json"], 2, "grpo-audio: not a checkpoint directory"),
        # an output that cannot be written fails before the model loads, not after the evaluation
        (
            ["eval", "model=nowhere", "data=nothing.json", f"out={tmp_path}"],
            2,
            f"grpo-audio: out={tmp_path}: a folder",
        ),
        (["check-data", "nothing.json"], 2, "grpo-audio: data file not found: nothing.json"),
    ):
        done = subprocess.run([str(GRPO_AUDIO), *argv], capture_output=True, text=True, cwd=tmp_path, env=env)
        assert done.returncode == status, done.stderr
        assert done.stderr.strip().startswith(message) and "Traceback" not in done.stderr, done.stderr
        assert status != 2 or len(done.stderr.strip().splitlines()) == 1, done.stderr


TRAIN_YAML = """output_dir: {out}
model: {{path: {model}, family: audio_flamingo3}}
data: {{train: {manifest}}}
rollout: {{engine: hf, max_new_tokens: 4}}
grpo: {{num_generations: 2}}
train: {{max_steps: 1, prompts_per_step: 2, micro_batch_size: 4}}
rewards: [{{name: "{reward}"}}]
"""


def _train(tmp_path, tiny_checkpoint, reward: str) -> tuple[subprocess.CompletedProcess, Path]:
    """``grpo-audio train`` of one step on two tones (the trainer tests' toy project) with ``reward``."""
    from tests.test_trainer import toy_project

    manifest, env = toy_project(tmp_path, 2)
    (tmp_path / "broken_rewards.py").write_text("def boom(prompts, completions, **kw):\n    return [1 / 0]\n")
    out = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(
        TRAIN_YAML.format(out=out, model=tiny_checkpoint("audio_flamingo3"), manifest=manifest, reward=reward)
    )
    done = subprocess.run(
        [str(GRPO_AUDIO), "train", str(config)], capture_output=True, text=True, env=env, timeout=600
    )
    return done, out


def _own_lines(stderr: str) -> list[str]:
    """The terminal's lines less the progress bar's."""
    return [line for line in re.split(r"[\r\n]", stderr) if line.strip() and not line.startswith("grpo:")]


def test_a_reward_that_raises_is_one_line_naming_it_and_the_log_with_the_traceback(tmp_path, tiny_checkpoint):
    done, out = _train(tmp_path, tiny_checkpoint, "broken_rewards:boom")
    log = out / "grpo-audio.log"
    assert done.returncode == 2, done.stderr
    assert _own_lines(done.stderr) == [
        "grpo-audio: reward 'boom' raised ZeroDivisionError: division by zero (sample id: c0, c1) "
        f"(traceback in {log})"
    ], done.stderr
    text = log.read_text()
    assert "Traceback" in text and "1 / 0" in text and "RewardError: reward 'boom' raised ZeroDivisionError" in text


def test_an_output_folder_of_another_run_is_one_line_naming_it_and_the_log(tmp_path, tiny_checkpoint):
    (tmp_path / "run" / "checkpoints" / "step-000001").mkdir(parents=True)  # another run's, with no record of it
    done, out = _train(tmp_path, tiny_checkpoint, "toy_rewards:digits")
    log = out / "grpo-audio.log"
    assert done.returncode == 2, done.stderr
    (line,) = _own_lines(done.stderr)
    assert line.startswith(f"grpo-audio: {out} holds checkpoints of another run (step-000001"), line
    assert line.endswith(f" (traceback in {log})"), line
    assert "Traceback" in log.read_text() and "CheckpointError" in log.read_text()
    assert (out / "checkpoints" / "step-000001").is_dir()  # refused: nothing removed


@pytest.mark.parametrize("module", ["grpo_audio.config", "grpo_audio.cli"])
def test_the_schemas_and_the_parser_load_without_torch(module):
    """``grpo-audio --help`` and the config schemas need none of the heavy libraries: each command imports its own
    modules when it runs."""
    heavy = ("torch", "transformers", "vllm", "peft", "trl")
    code = f"import sys, {module}; print(','.join(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing {module} imports {out}"

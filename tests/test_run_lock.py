"""One run at a time in an output folder: a second run is refused naming the first; a killed run's lock is gone."""

from __future__ import annotations

import subprocess
import sys

import pytest

from grpo_audio.run_lock import RunLock, RunLockedError
from grpo_audio.trainer import GRPOTrainer
from tests.test_trainer import config, tone_rows

# A first run stand-in: holds the folder as a trainer does, says so, then waits to be killed.
HOLDER = """
import sys, time
from grpo_audio.run_lock import RunLock
lock = RunLock(sys.argv[1], "grpo")
print("held", flush=True)
time.sleep(600)
"""


def test_a_second_run_into_a_held_folder_is_refused_naming_the_first(tmp_path, tiny_checkpoint):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "held"
        cfg = config(tmp_path, tiny_checkpoint("audio_flamingo3"), **{"train.max_steps": 1})
        with pytest.raises(RunLockedError, match=rf"in use by another run \(grpo run, PID {first.pid} on .*-c"):
            GRPOTrainer(cfg, train_rows=tone_rows(4))
        assert not (out / "run.json").exists()  # refused before anything was written there
        first.kill()
        assert first.wait(timeout=30) == -9  # killed: it released nothing itself
        trainer = GRPOTrainer(cfg, train_rows=tone_rows(4))  # the kernel let the killed run's lock go
        try:  # and now this run holds the folder against others
            holder = [sys.executable, "-c", HOLDER, str(out)]
            second = subprocess.run(holder, capture_output=True, text=True, timeout=60)
            assert second.returncode != 0 and "RunLockedError" in second.stderr
        finally:
            trainer.close()
    finally:
        if first.poll() is None:
            first.kill()


def test_a_closed_or_rebuilt_run_in_one_process_lets_the_folder_go(tmp_path):
    a = RunLock(tmp_path, "grpo")
    b = RunLock(tmp_path, "grpo")  # the same process builds a run again (a notebook): it takes the lock over
    assert a._fd is None and b._fd is not None
    b.release()
    done = subprocess.run([sys.executable, "-c", HOLDER.replace("time.sleep(600)", ""), str(tmp_path)], timeout=60)
    assert done.returncode == 0  # another process takes the released folder


def test_a_second_recipe_into_a_held_folder_is_refused_before_any_stage(tmp_path):
    from grpo_audio.config import RecipeConfig, load_config
    from grpo_audio.recipe import Recipe
    from tests.test_trainer import REPO

    out = tmp_path / "out"
    cfg = load_config(
        REPO / "examples/music_flamingo/tiny.yaml",
        [f"output_dir={out}", "tiny_model=test", "synthetic.n=4", "synthetic.n_eval=2", "synthetic.n_rl=2"],
        schema=RecipeConfig,
    )
    first = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=f"PID {first.pid}"):
            Recipe(cfg).run()
        assert not (out / "data").exists() and not (out / "base").exists()  # nothing prepared, no stage run
    finally:
        first.kill()
        first.wait()


def test_a_refused_train_command_leaves_the_running_run_s_log_alone(tmp_path, tiny_checkpoint):
    from grpo_audio.cli import main

    out = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(
        f"output_dir: {out}\nmodel: {{path: {tiny_checkpoint('audio_flamingo3')}, family: audio_flamingo3}}\n"
    )
    first = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "held"
        log = out / "grpo-audio.log"
        log.write_text("the running run's log\n")
        with pytest.raises(RunLockedError, match=f"PID {first.pid}"):
            main(["train", str(config)])
        assert log.read_text() == "the running run's log\n"
    finally:
        first.kill()
        first.wait()

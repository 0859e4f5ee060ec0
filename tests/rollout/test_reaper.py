"""The vLLM engine's own processes and the weight sync's folder in /dev/shm end with the trainer that started them,
even when it is killed (SIGKILL); folders of runs killed with their reaper go at the next start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from grpo_audio.rollout.reaper import Reaper, child_processes
from grpo_audio.rollout.vllm_engine import PAUSE_ENV
from grpo_audio.scratch import owner_pattern, remove_stale, scratch_dir, scratch_roots

# A trainer stand-in: builds the engine, says which processes the reaper watches, then starts a weight sync that
# pauses once its files are written (GRPO_AUDIO_TEST_PAUSE_IN_SYNC) and waits there to be killed.
TRAINER = """
import json, sys, time
from grpo_audio.models import ModelSpec, load_policy
from grpo_audio.rollout.vllm_engine import VLLMEngine
engine = VLLMEngine(sys.argv[1], max_model_len=1024, seed=0, gpu_memory_utilization=0.1)
print("PIDS", json.dumps(engine.reaper.pids), flush=True)
engine.sync_weights(load_policy(ModelSpec(sys.argv[1], "qwen2_audio", "float32")))
time.sleep(600)
"""


@pytest.mark.slow
def test_a_killed_trainer_takes_its_engine_processes_and_sync_folder_with_it(tiny_checkpoint, tmp_path):
    paused = tmp_path / "paused"
    env = {**os.environ, PAUSE_ENV: str(paused)}
    trainer = subprocess.Popen(
        [sys.executable, "-c", TRAINER, str(tiny_checkpoint("qwen2_audio"))],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = ""
        while not line.startswith("PIDS "):  # vLLM writes its own lines first
            line = trainer.stdout.readline()
            assert line, "the trainer ended before its engine was up"
        pids = json.loads(line.removeprefix("PIDS "))
        engine = [psutil.Process(pid) for pid in pids]
        # The premise: vLLM's engine core (and, on the CPU, its worker) run in processes of their own, alive now.
        names = [p.name() for p in engine]
        assert any("EngineCore" in name for name in names), names
        assert all(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in engine)
        deadline = time.monotonic() + 300
        while not paused.exists() and trainer.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        sync = Path(paused.read_text())  # the kill lands mid-sync: the weights are written, not yet loaded
        assert sync.name.startswith("grpo_audio_sync.") and any(sync.glob("*.safetensors"))
        trainer.kill()
        assert trainer.wait(timeout=30) == -9  # killed, not shut down: no engine.close() ran
        _, alive = psutil.wait_procs(engine, timeout=60)
        assert not alive, [p.name() for p in alive]
        deadline = time.monotonic() + 30
        while sync.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not sync.exists()
    finally:
        if trainer.poll() is None:
            trainer.kill()


def test_the_reaper_kills_only_what_it_was_given_and_only_once_its_owner_lets_go():
    """``close`` (or the owner's exit) ends the watched processes; one that already ended is skipped, and a
    process the reaper was not given lives on."""
    sleep = [sys.executable, "-c", "import time; time.sleep(600)"]
    watched, bystander, ended = (subprocess.Popen(sleep) for _ in range(3))
    try:
        mine = child_processes()
        assert {watched.pid, bystander.pid, ended.pid} <= mine.keys()
        ended.kill()
        ended.wait()
        reaper = Reaper({pid: mine[pid] for pid in (watched.pid, ended.pid)})
        assert reaper.pids == [watched.pid]  # an ended process is not watched
        assert watched.poll() is None  # nothing happens while its owner holds on
        reaper.close()
        assert watched.wait(timeout=30) == -9 and bystander.poll() is None
        reaper.close()  # idempotent
    finally:
        for proc in (watched, bystander):
            if proc.poll() is None:
                proc.kill()


# An owner stand-in: a reaper for its scratch folders, and one such folder, then it waits to be killed.
OWNER = """
import sys, time
from grpo_audio.rollout.reaper import Reaper
from grpo_audio.scratch import owner_pattern, scratch_dir, scratch_roots
reaper = Reaper({}, remove=[str(root / owner_pattern()) for root in scratch_roots()])
with scratch_dir("sync") as folder:
    (folder / "model.safetensors").write_bytes(b"0" * 4096)
    print(folder, flush=True)
    time.sleep(600)
"""


def test_a_killed_owner_s_scratch_folder_is_removed_by_its_reaper():
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True)
    try:
        folder = Path(owner.stdout.readline().strip())
        assert folder.is_dir() and folder.parent == scratch_roots()[0]  # premise: in /dev/shm, written
        owner.kill()
        assert owner.wait(timeout=30) == -9  # no finally block of the owner ran
        deadline = time.monotonic() + 30
        while folder.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not folder.exists()
    finally:
        if owner.poll() is None:
            owner.kill()


def test_the_next_start_removes_folders_whose_owner_is_gone_and_only_those():
    gone = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    dead_pattern = owner_pattern(gone.pid)
    gone.kill()
    gone.wait()
    # A folder named after the killed process (as its sync folder was), one of this live process, one of another
    # program: only the first goes.
    dead = scratch_roots()[0] / dead_pattern.replace("*", "sync", 1).replace("*", "x1")
    dead.mkdir()
    other = scratch_roots()[0] / "not_ours_sync.1-2.x"
    other.mkdir()
    try:
        with scratch_dir("sync") as live:
            assert dead in remove_stale()
            assert not dead.exists() and live.is_dir() and other.is_dir()
        assert not live.exists()  # and a block's own folder goes with the block
    finally:
        for path in (dead, other):
            if path.exists():
                path.rmdir()

"""The vLLM engine's own processes end with the trainer that started them, even when it is killed (SIGKILL)."""

from __future__ import annotations

import json
import subprocess
import sys

import psutil
import pytest

from grpo_audio.rollout.reaper import Reaper, child_processes

# A trainer stand-in: builds the engine, says which processes the reaper watches, then waits to be killed.
TRAINER = """
import json, sys, time
from grpo_audio.rollout.vllm_engine import VLLMEngine
engine = VLLMEngine(sys.argv[1], max_model_len=1024, seed=0, gpu_memory_utilization=0.1)
print("PIDS", json.dumps(engine.reaper.pids), flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_a_killed_trainer_takes_its_engine_processes_with_it(tiny_checkpoint):
    trainer = subprocess.Popen(
        [sys.executable, "-c", TRAINER, str(tiny_checkpoint("qwen2_audio"))], stdout=subprocess.PIPE, text=True
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
        trainer.kill()
        assert trainer.wait(timeout=30) == -9  # killed, not shut down: no engine.close() ran
        _, alive = psutil.wait_procs(engine, timeout=60)
        assert not alive, [p.name() for p in alive]
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

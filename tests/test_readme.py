"""Every Python block of the README runs: extracted from README.md and executed in a folder holding the files it
names (a test-size checkpoint at ``runs/mf-demo``, a small synthetic corpus), its rewards also called the way the
trainer calls them. One substitution, stated here: the Python example's 20 GRPO steps become 2 with the transformers
engine (8 new tokens), as does the quick start's run before it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.DOTALL)


def _block(marker: str) -> str:
    found = [b for b in BLOCKS if marker in b]
    assert len(found) == 1, marker
    return found[0]


def test_the_readme_blocks_are_the_ones_tested_here():
    markers = ("trainer = GRPOTrainer(", "out = rewards(prompts", "rows = load_manifest(")
    assert sorted(BLOCKS) == sorted(_block(m) for m in markers)  # a new block needs a test below


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A folder laid out as the README's quick start leaves it."""
    from grpo_audio.data.synthetic import write_corpus
    from grpo_audio.models.tiny import build_tiny_model

    d = tmp_path_factory.mktemp("readme")
    build_tiny_model("music_flamingo", d / "runs" / "mf-demo", size="test", seed=0)
    write_corpus(d / "data" / "synth", n=8, seed=0, n_eval=4)
    rows = [json.loads(x) for x in (d / "data" / "synth" / "rl.jsonl").read_text().splitlines()]
    lines = [json.dumps({**r, "audio": f"synth/{r['audio']}"}) + "\n" for r in rows]  # paths from data/
    (d / "data" / "train.jsonl").write_text("".join(lines))
    (d / "examples" / "music_flamingo").mkdir(parents=True)
    shutil.copy(REPO / "examples/music_flamingo/grpo_synthetic.yaml", d / "examples/music_flamingo")
    return d


def test_loading_block(project, monkeypatch):
    monkeypatch.chdir(project)
    namespace: dict = {}
    exec(_block("rows = load_manifest("), namespace)
    assert len(namespace["rows"]) == sum(1 for _ in (project / "data" / "train.jsonl").open())


def test_rewards_block_scores_completions_as_the_trainer_passes_them(project):
    from grpo_audio.data.loaders import load_manifest

    rows = load_manifest(project / "data" / "synth" / "rl.jsonl", family="music_flamingo")[:2]
    texts = ["<think>a piano plays</think><answer>piano</answer>", "<think>strings</think><answer>flute</answer>"]
    namespace = {
        "prompts": [r.prompt for r in rows],
        "completions": [[{"role": "assistant", "content": t}] for t in texts],  # the trainer's format
        "metadata": [r.metadata for r in rows],
        "row_ids": [r.id for r in rows],
    }
    exec(_block("out = rewards(prompts"), namespace)
    assert namespace["out"].components["mentions_piano"] == [1.0, 0.0]
    through_trainer = namespace["rewards"].score_rows(rows, texts, [0, 1])  # what the trainer calls
    assert through_trainer.components["mentions_piano"] == [1.0, 0.0]
    assert through_trainer.total == namespace["out"].total


SMALL = '"train.max_steps=2", "rollout.engine=hf", "rollout.max_new_tokens=8"'


def test_the_python_example_after_the_quick_start_trains_a_run_of_its_own(project, monkeypatch):
    from grpo_audio.checkpoint import CheckpointError
    from grpo_audio.config import load_config
    from grpo_audio.trainer import GRPOTrainer

    monkeypatch.chdir(project)
    quick_start = GRPOTrainer(load_config("examples/music_flamingo/grpo_synthetic.yaml", eval(f"[{SMALL}]")))
    quick_start.train()  # what the quick start's `grpo-audio train` runs, from the config's rewards
    quick_start.close()
    quick = project / "runs" / "grpo-synthetic"
    assert (quick / "checkpoints" / "step-000002" / "COMPLETE").exists()
    code = _block("trainer = GRPOTrainer(")
    assert '"train.max_steps=20"' in code and '"output_dir=runs/grpo-piano"' in code
    exec(code.replace('"train.max_steps=20"', SMALL), {"__name__": "__main__"})
    run = project / "runs" / "grpo-piano"
    assert (run / "checkpoints" / "step-000002" / "COMPLETE").exists() and (run / "curves.png").exists()
    ids = [json.loads((d / "run.json").read_text())["run_id"] for d in (quick, run)]
    assert ids[0] != ids[1]
    # The same example aimed at the quick start's folder is another run (its rewards come from Python): refused,
    # not resumed at the quick start's last step with 0 steps to train.
    into_quick = code.replace('"train.max_steps=20"', SMALL).replace("runs/grpo-piano", "runs/grpo-synthetic")
    with pytest.raises(CheckpointError, match="its config differs"):
        exec(into_quick, {"__name__": "__main__"})


SHELL_BLOCKS = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.DOTALL)
# Shell blocks that cannot run inside the test suite, and why; every other block runs below.
NOT_RUN = {
    "make test    #": "the test suite itself (CI runs it)",
    "python -m venv .venv && . .venv/bin/activate": "a GPU installation (this suite runs on the CPU)",
    "torchrun --nproc_per_node 8": "eight GPUs and a real checkpoint",
    "MMAU/mmau-test-mini.json": "needs the MMAU repository, its audio and its scorer; the layout, export and the "
    "scorer's rule are tested on the real file in tests/data/test_benchmarks.py",
}
# The quick start at test size: a test-size checkpoint, 8 clips, 2 steps (the block as written otherwise).
QUICK_START = {"--size demo": "--size test", "n=200 n_eval=50": "n=8 n_eval=2", "max_steps=20": "max_steps=2",
               "step-000020": "step-000002"}  # fmt: skip


def _shell(marker: str) -> str:
    found = [b for b in SHELL_BLOCKS if marker in b]
    assert len(found) == 1, marker
    return found[0]


def test_every_shell_block_is_run_or_says_why_not():
    run = ("grpo-audio tiny-model music_flamingo runs/mf-demo", "grpo-audio check-data data/train.jsonl")
    assert sorted(SHELL_BLOCKS) == sorted(_shell(m) for m in (*NOT_RUN, *run))


def _run_lines(block: str, cwd: Path, substitutions: dict[str, str]) -> list[subprocess.CompletedProcess]:
    """Each command of the block in ``cwd`` (``. .venv/bin/activate`` is this interpreter's environment)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    outputs = []
    for line in block.splitlines():
        command = line.split("  #")[0].strip()
        if not command or command.startswith(". .venv"):
            continue
        for old, new in substitutions.items():
            command = command.replace(old, new)
        done = subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-2000:])
        outputs.append(done)
    return outputs


def test_quick_start_shell_block(tmp_path):
    (tmp_path / "examples" / "music_flamingo").mkdir(parents=True)
    shutil.copy(REPO / "examples/music_flamingo/grpo_synthetic.yaml", tmp_path / "examples/music_flamingo")
    block = _shell("grpo-audio tiny-model music_flamingo runs/mf-demo")
    assert all(old in block for old in QUICK_START)
    out = _run_lines(block, tmp_path, QUICK_START)
    assert "rows: " in out[2].stdout and "0 bad" in out[2].stdout  # check-data
    assert "mcq_accuracy" in out[-1].stdout  # eval printed its report
    run = tmp_path / "runs/grpo-synthetic"
    assert (run / "checkpoints/step-000002/COMPLETE").exists()
    # The terminal shows the run's own output: its progress bar and result, not vLLM's records from its three
    # processes, its platform warnings or the C++ ones; the log file has all of them.
    train = out[3]
    assert "train.max_steps=2" in train.args
    terminal = [line for line in (train.stdout + train.stderr).replace("\r", "\n").splitlines() if line.strip()]
    assert [line for line in terminal if not line.startswith("grpo:")] == [
        "done: step 2, reward " + train.stdout.split("reward ")[1].split(";")[0] + "; outputs in runs/grpo-synthetic"
    ]
    log = (run / "grpo-audio.log").read_text()
    for process in ("MainProcess", "EngineCore", "Worker"):
        assert f"({process} pid=" in log and " INFO " in log, process
    assert "NUMA binding" in log and "done: step 2" in log
    # The README's Python example saved as a script and run after the quick start (vLLM rollouts, 2 steps): a run
    # of its own beside the quick start's (vLLM runs the script again in its engine's processes).
    script = tmp_path / "example.py"
    script.write_text(_block("trainer = GRPOTrainer(").replace('"train.max_steps=20"', '"train.max_steps=2"'))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    piano = tmp_path / "runs/grpo-piano"
    assert (piano / "checkpoints/step-000002/COMPLETE").exists()
    ids = {json.loads((d / "run.json").read_text())["run_id"] for d in (run, piano)}
    assert len(ids) == 2


def test_data_shell_block(project):
    out = _run_lines(_shell("grpo-audio check-data data/train.jsonl"), project, {"n=400": "n=8 n_eval=2"})
    # rl.jsonl: a multiple-choice, an open and a caption prompt for each of the 8 clips
    assert "24 rows: 24 ok, 0 bad" in out[0].stdout and (project / "data/synth/eval.jsonl").exists()
    assert "24 rows: 24 ok, 0 bad" in out[1].stdout and "context 2048 tokens with max_new_tokens 96" in out[1].stdout

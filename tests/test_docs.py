"""The README and the pages of ``docs/`` say what the code does.

Every code block runs here, or is listed in ``NOT_RUN`` with the reason it cannot and the test that covers it. The
Python and shell blocks run in a folder holding the files they name (a test-size checkpoint at ``runs/mf-demo``, a
small synthetic corpus); one substitution, stated here: the quick start's and the Python example's 20 GRPO steps
become 2 (the Python example's also with the transformers engine and 8 new tokens in-process). YAML blocks load
against the config schema. Beside the blocks: every ``grpo-audio`` command and ``make`` target named exists, every
relative link and anchor resolves, every measured number links to its entry in ``benchmarks/results.md``, and the
README stays a front door (at most 300 lines, the quick start within its first 80; each docs page under 250)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = sorted((REPO / "docs").glob("*.md"))
DOCS = [README, *PAGES, REPO / "examples" / "README.md"]
RESULTS = REPO / "benchmarks" / "results.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.DOTALL | re.MULTILINE)


def _fenced(path: Path) -> list[tuple[str, str]]:
    """(language, text) of every fenced code block of a Markdown file."""
    return FENCE.findall(path.read_text())


BLOCKS = [(path, lang, text) for path in DOCS for lang, text in _fenced(path)]


def _block(marker: str, lang: str = "python") -> str:
    found = [text for _, kind, text in BLOCKS if kind == lang and marker in text]
    assert len(found) == 1, (marker, len(found))
    return found[0]


# ---- every block is run or says why not ---------------------------------------------------------------------
# Marker (text found in exactly one block) -> the test below that runs or loads it.
RUN = {
    "trainer = GRPOTrainer(": "test_the_python_example_after_the_quick_start_trains_a_run_of_its_own, "
    "test_quick_start_shell_block (as a script)",
    "out = rewards(prompts": "test_rewards_block_scores_completions_as_the_trainer_passes_them",
    "rows = load_manifest(": "test_loading_block",
    "grpo-audio tiny-model music_flamingo runs/mf-demo": "test_quick_start_shell_block",
    "grpo-audio check-data data/train.jsonl": "test_data_shell_block",
    "grpo-audio config-help train": "test_config_help_block",
    '"custom_reward:says_the_tempo"': "test_yaml_blocks_load_against_the_schema",
    "grpo_overrides: {data.train_tasks": "test_yaml_blocks_load_against_the_schema",
    "synthetic:eval_mmau.json": "test_yaml_blocks_load_against_the_schema",
}
# Marker -> why the block cannot run here, and what covers it instead.
NOT_RUN = {
    'pip install "torch==2.13.0"': "it installs the project; its steps are the Makefile's install steps "
    "(test_the_install_block_is_the_makefiles), which `make test` runs",
    "make demo    #": "`make demo` is the whole embedded recipe (a quarter of an hour) and `make test` the suite "
    "itself; the recipe's stages run at test size in tests/recipe/test_recipe.py",
    "torchrun --nproc_per_node 8": "eight GPUs and a real checkpoint; tests/test_parallel.py runs DDP, FSDP2 and two "
    "nodes on the CPU, tests/test_plan.py the plan line; its grpo-audio lines parse (test_every_command_line_parses)",
    "MMAU/mmau-test-mini.json": "needs the MMAU repository, its audio and its scorer; the layout, the export and the "
    "scorer's rule are tested on the real file in tests/data/test_benchmarks.py",
}
FIGURES = "text"  # ```text blocks are diagrams (architecture.md's data flow): nothing to run


def test_every_code_block_is_run_or_says_why_not():
    markers = {**RUN, **NOT_RUN}
    for path, lang, text in BLOCKS:
        if lang == FIGURES:
            continue
        found = [m for m in markers if m in text]
        where = f"{path.relative_to(REPO)}: a {lang or 'plain'} block"
        assert len(found) == 1, f"{where} needs one entry in RUN or NOT_RUN"
    for marker in markers:
        assert sum(marker in text for _, lang, text in BLOCKS if lang != FIGURES) == 1, marker


def test_the_install_block_is_the_makefiles():
    makefile = (REPO / "Makefile").read_text()
    steps = [line.strip().removeprefix("$(BIN)/") for line in makefile.splitlines() if "$(BIN)/pip " in line]
    block = _block('pip install "torch==2.13.0"', "bash")
    commands = [line.split("  #")[0].strip() for line in block.splitlines()]
    assert steps and [c for c in commands if c.startswith("pip ")] == steps


def _yaml_schema(text: str):
    from grpo_audio.config import RecipeConfig, RunConfig

    return RecipeConfig if re.search(r"^(stages|eval):", text, flags=re.MULTILINE) else RunConfig


# The keys a run must name, which the blocks leave to the reader's own config.
REQUIRED = "model: {family: music_flamingo, path: runs/mf-demo}\noutput_dir: runs/docs\n"


def test_yaml_blocks_load_against_the_schema(tmp_path, monkeypatch):
    from grpo_audio.config import load_config

    monkeypatch.syspath_prepend(str(REPO / "examples"))  # custom_reward:says_the_tempo, as its docstring runs it
    blocks = [text for _, lang, text in BLOCKS if lang == "yaml"]
    assert len(blocks) == 3
    for text in blocks:
        path = tmp_path / "block.yaml"
        path.write_text(REQUIRED + text)
        cfg = load_config(path, schema=_yaml_schema(text))
        if "rewards:" in text:
            assert [r.name for r in cfg.rewards][-1] == "custom_reward:says_the_tempo"
        if "stages:" in text:
            assert [s.kind for s in cfg.stages] == ["sft", "cold_start", "grpo"]
        if "final:" in text:
            assert [f.answer_format for f in cfg.eval.final] == ["text", "letter"]


def test_config_help_block(capsys):
    """Run in this process (``main`` is the ``grpo-audio`` executable's body): a second interpreter would spend its
    time importing torch."""
    from grpo_audio.cli import main

    lines = [line.split("  #")[0].strip() for line in _block("grpo-audio config-help train", "bash").splitlines()]
    expected = {"train": ["grpo.loss_type (str, 'dapo')", "rewards[].name"], "recipe": ["stages[].kind", "eval.final"]}
    for line in filter(None, lines):
        command = shlex.split(line)
        assert command[:2] == ["grpo-audio", "config-help"] and main(command[1:]) == 0
        out = capsys.readouterr().out
        assert all(key in out for key in expected[command[2]]), (line, out[:500])


# ---- commands, targets, links -------------------------------------------------------------------------------
def _prose(path: Path) -> str:
    return FENCE.sub("", path.read_text())


def _mentions(pattern: str, files: list[Path] = DOCS) -> list[tuple[Path, str]]:
    """(file, match) for ``pattern`` in inline code spans and code blocks of the README and docs."""
    found = []
    for path in files:
        spans = re.findall(r"`([^`\n]+)`", _prose(path)) + [text for lang, text in _fenced(path)]
        found += [(path, m) for span in spans for m in re.findall(pattern, span)]
    return found


def test_every_grpo_audio_command_named_exists():
    from grpo_audio.cli import COMMANDS

    names = {c.name for c in COMMANDS}
    mentions = _mentions(r"(?:grpo-audio|grpo_audio\.cli) ([a-z][a-z-]*)")
    assert {"recipe", "train", "eval", "check-data"} <= {m for _, m in mentions}  # the pattern reads the pages
    stale = [(p.relative_to(REPO), m) for p, m in mentions if m not in names]
    assert not stale, f"no such grpo-audio command: {stale}"


def _command_lines() -> list[str]:
    """Every ``grpo-audio ...`` (or ``-m grpo_audio.cli ...``) line of the code blocks, continuations joined."""
    lines = []
    for _, lang, text in BLOCKS:
        if lang != "bash":
            continue
        for line in text.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if "grpo-audio " in line or "grpo_audio.cli " in line:
                lines.append(line)
    return lines


def test_every_command_line_parses():
    """The lines no test runs still parse: their options and positional arguments are the command's."""
    from grpo_audio.cli import build_parser

    lines = _command_lines()
    assert len(lines) >= 8
    for line in lines:
        argv = shlex.split(line)
        start = argv.index("grpo_audio.cli") if "grpo_audio.cli" in argv else argv.index("grpo-audio")
        args = argv[start + 1 :]
        try:
            _, unknown = build_parser().parse_known_args(args)
        except SystemExit as e:
            raise AssertionError(f"does not parse: {line}") from e
        assert all("=" in a and not a.startswith("-") for a in unknown), (line, unknown)


def test_every_make_target_named_exists():
    targets = set(re.findall(r"^([A-Za-z][\w-]*):", (REPO / "Makefile").read_text(), flags=re.MULTILINE))
    named = _mentions(r"\bmake ([a-z][\w-]*)")
    assert {"demo", "test", "install"} <= {m for _, m in named}
    missing = [(p.relative_to(REPO), m) for p, m in named if m not in targets]
    assert not missing, f"no such make target: {missing}"


SOURCE_PATH = re.compile(r"\b((?:grpo_audio|rewards|tests|examples|benchmarks|docs)/[\w./-]*)")


def test_every_source_path_named_exists():
    """Files of the project named in code spans (``grpo_audio/plan.py``, ``tests/test_plan.py``) are there."""
    named = [(p, m.rstrip(".")) for p, m in _mentions(SOURCE_PATH.pattern, [*DOCS, RESULTS])]
    assert len(named) > 50
    missing = sorted({(str(p.relative_to(REPO)), m) for p, m in named if not (REPO / m).exists()})
    assert not missing, f"no such file: {missing}"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (not hyphens or underscores), spaces to
    hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link's text only
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor in a Markdown file, repeated headings numbered as GitHub numbers them."""
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6} (.+)$", FENCE.sub("", path.read_text()), flags=re.MULTILINE):
        base = slug(heading)
        n = seen.get(base, 0)
        found.add(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    return found


def test_slug_follows_github():
    assert slug("GRPO's own randomness (2026-12-07)") == "grpos-own-randomness-2026-12-07"
    assert slug("Are the answers in the audio features?") == "are-the-answers-in-the-audio-features"
    assert slug("Rollout throughput: vLLM vs `generate`") == "rollout-throughput-vllm-vs-generate"


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _links(path: Path) -> list[str]:
    return [t for t in LINK.findall(_prose(path)) if not re.match(r"[a-z]+:", t)]


def test_every_relative_link_and_anchor_resolves():
    checked = 0
    for path in [*DOCS, RESULTS]:
        for target in _links(path):
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            assert dest.exists(), f"{path.relative_to(REPO)}: broken link {target}"
            if anchor:
                assert dest.suffix == ".md" and anchor in anchors(dest), f"{path.relative_to(REPO)}: no {target}"
            checked += 1
    assert checked > 40


# ---- measured numbers live in benchmarks/results.md ---------------------------------------------------------
# A measurement: a ratio (4.6x), a time, a size or a rate in an abbreviated unit (5.5 s, 2 min, 375 MB, 1491
# tokens/s), a percentage, a signed change (+0.012), an accuracy or reward stated with two or more decimals. Settings
# and limits are written with their units in full ("30-second clips", "20 minutes"), so that they do not read as
# measurements; the few written otherwise are listed in SPECS.
MEASUREMENT = re.compile(
    r"\b\d+(?:\.\d+)?x\b"
    r"|\b\d+(?:\.\d+)? ?(?:ms|s|min|MB|GB|MiB|GiB|tokens/s|s/step)(?![\w/-])"
    r"|\d%"
    r"|(?<![\w.])[+-]0\.\d+"
    r"|\b(?:accuracy|MCQ|reward|pass@\d+|read-out)\b[^.;:]{0,40}?\b0\.\d{2,}"
)
SPECS = {
    "80 GB": "a GPU's memory: the memory plan's input",
    "512 MiB": "the size cap of a weight-sync file (rollout/vllm_engine.py SYNC_FILE_BYTES)",
    "95%": "the confidence level of the intervals the evaluation reports",
}


def _units(path: Path) -> list[str]:
    """Paragraphs, list items and table rows of a Markdown file, code blocks left out."""
    units: list[str] = []
    for paragraph in re.split(r"\n\s*\n", _prose(path)):
        for part in re.split(r"\n(?=\s*(?:[-*] |\d+\. |\|))", paragraph):
            units.append(part)
    return units


def _measured(unit: str) -> list[str]:
    for spec in SPECS:
        unit = unit.replace(spec, "")
    return [m.group(0) for m in MEASUREMENT.finditer(unit)]


def test_the_measurement_pattern():
    assert _measured("shared prefix 4.6x faster, 5.5 s vs 13.5 s, 375 MB, 1491 tokens/s, within 8%")
    assert _measured("paired change +0.012 [+0.003, +0.021]") and _measured("MCQ 0.7325 after the cold start")
    assert not _measured("30-second clips, 12 roots x 7 qualities, a 2 x 2 grid, lr 1e-6, G = 5, Qwen2-Audio")
    assert not _measured("vLLM at 0.35 of each GPU, a weight of 0.5, 95% intervals, arXiv 2511.10289")


def test_every_measured_number_links_to_its_result():
    unlinked = []
    for path in DOCS:
        for unit in _units(path):
            if _measured(unit) and "results.md#" not in unit:
                unlinked.append(f"{path.relative_to(REPO)}: {_measured(unit)} in {unit.strip()[:100]!r}")
    assert not unlinked, "\n".join(unlinked)


def test_results_open_with_one_table_of_current_figures():
    text = RESULTS.read_text()
    headings = re.findall(r"^## (.+)$", text, flags=re.MULTILINE)
    assert headings[0] == "Current figures"
    section = text.split("## Current figures", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")][2:]
    assert len(rows) >= 10
    for row in rows:
        targets = re.findall(r"\]\(#([^)]+)\)", row)
        assert len(targets) == 1 and targets[0] in anchors(RESULTS), row
        assert re.search(r"\| 20\d\d-\d\d-\d\d \|", row), f"undated: {row}"


# ---- shape of the pages -------------------------------------------------------------------------------------
def test_the_readme_is_a_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) <= 300
    assert lines.index("## Quick start") < 80
    assert 'if __name__ == "__main__":' in _block("trainer = GRPOTrainer(")


def test_one_page_a_topic_each_read_in_one_sitting():
    names = {p.name for p in PAGES}
    topics = {"data", "rewards", "rollouts", "grpo", "distributed", "recipe", "evaluation", "architecture"}
    assert {f"{t}.md" for t in topics} <= names
    for page in PAGES:
        assert len(page.read_text().splitlines()) < 250, page.name
        assert f"(docs/{page.name})" in README.read_text(), f"the README links every page: {page.name}"


# ---- the blocks that run ------------------------------------------------------------------------------------
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


# The quick start at test size: a test-size checkpoint, 8 clips, 2 steps (the block as written otherwise).
QUICK_START = {"--size demo": "--size test", "n=200 n_eval=50": "n=8 n_eval=2", "max_steps=20": "max_steps=2",
               "step-000020": "step-000002"}  # fmt: skip


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
    block = _block("grpo-audio tiny-model music_flamingo runs/mf-demo", "bash")
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
    out = _run_lines(_block("grpo-audio check-data data/train.jsonl", "bash"), project, {"n=400": "n=8 n_eval=2"})
    # rl.jsonl: a multiple-choice, an open and a caption prompt for each of the 8 clips
    assert "24 rows: 24 ok, 0 bad" in out[0].stdout and (project / "data/synth/eval.jsonl").exists()
    assert "24 rows: 24 ok, 0 bad" in out[1].stdout and "context 2048 tokens with max_new_tokens 96" in out[1].stdout

"""A shortened recipe (every stage, few steps): each stage's model loads, the report has its fields."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from grpo_audio.config import RecipeConfig, load_config
from grpo_audio.models import get_family
from grpo_audio.recipe import Recipe
from grpo_audio.rewards import load_reward

REPO = Path(__file__).resolve().parents[2]


def test_short_recipe_runs_every_stage(tmp_path, capsys):
    stages = (
        '[{name: text, kind: text_pretrain, data: "synthetic:skills,synthetic:think", max_steps: 2, batch_size: 8},'
        ' {name: sft, kind: sft, data: "synthetic:skills", max_steps: 3, lr: 1e-3, batch_size: 8},'
        ' {name: cold_start, kind: cold_start, data: "synthetic:think", max_steps: 2, lr: 1e-3, batch_size: 8},'
        ' {name: grpo, kind: grpo, data: "synthetic:rl", grpo_overrides: {train.max_steps: 2, train.eval_every: 1,'
        " train.eval_rows: 3}}, {name: final, kind: eval}]"
    )
    overrides = [
        f"output_dir={tmp_path / 'out'}",
        "tiny_model=test",
        "synthetic.n=10",
        "synthetic.n_eval=5",
        "synthetic.n_rl=4",  # GRPO's prompts ask about clips of their own, as tiny.yaml's do
        "eval.base=true",  # (tiny.yaml leaves the base model unevaluated)
        "rollout.engine=hf",
        "rollout.max_new_tokens=8",
        "eval.max_new_tokens=8",
        "eval.max_rows=6",
        "train.prompts_per_step=2",
        "grpo.num_generations=4",
        "eval.samples=2",
    ]
    cfg = load_config(
        REPO / "examples/music_flamingo/tiny.yaml", [*overrides, f"stages={stages}"], schema=RecipeConfig
    )
    cfg.eval.final[0].max_rows = 3  # the first file's first 3 questions only
    report = Recipe(cfg).run().to_dict()
    out = tmp_path / "out"
    assert [s["name"] for s in report["stages"]] == ["base", "text", "sft", "cold_start", "grpo", "final"]
    family = get_family("music_flamingo")
    eval_rows = {r["id"]: r for r in map(json.loads, (out / "data" / "eval.jsonl").read_text().splitlines())}
    names = {"total", *(spec.name for spec in cfg.rewards)}  # tiny.yaml's rewards, music_theory among them
    graded_spec = next(spec for spec in cfg.rewards if spec.name == "music_theory")
    theory = load_reward(graded_spec.name, **graded_spec.kwargs)
    previous = None
    for stage in report["stages"][1:5]:
        model = family.model_class().from_pretrained(stage["model_dir"])
        weights = model.lm_head.weight.detach().clone()
        if stage["kind"] != "grpo":  # (the GRPO stage sees all-zero rewards at this size: no signal, no update)
            assert previous is None or not torch.equal(weights, previous), stage["name"]
        previous = weights
        assert {"mcq_accuracy", "open_accuracy", "format_rate", "per_task"} <= set(stage["eval"])
        # Every stage's completions are scored with the GRPO rewards (format 0.5; accuracy 1.0 on multiple-choice
        # rows by mcq_accuracy and on open rows by answer_accuracy, each row by one of them; music_theory's partial
        # credit 0.5 on key and tempo rows).
        samples = [json.loads(x) for x in (out / "samples" / f"{stage['name']}.jsonl").read_text().splitlines()]
        reward = stage["eval"]["reward"]
        mcq, open_ = ([x["correct"] for x in samples if x["kind"] == kind] for kind in ("mcq", "open"))
        graded = [
            theory(None, [x["completion"]], metadata=[eval_rows[x["id"]]["metadata"]])[0]
            for x in samples
            if x["task"] in graded_spec.tasks
        ]
        assert set(reward) == names
        assert reward["format"] == pytest.approx(stage["eval"]["format_rate"])
        assert reward["mcq_accuracy"] == pytest.approx(sum(mcq) / len(mcq)) and len(mcq) == 3
        assert reward["answer_accuracy"] == pytest.approx(sum(open_) / len(open_)) and len(open_) == 3
        if graded:
            assert reward["music_theory"] == pytest.approx(sum(graded) / len(graded))
        else:
            assert math.isnan(reward["music_theory"])
        total = (sum(0.5 * x["format"] + x["correct"] for x in samples) + graded_spec.weight * sum(graded)) / 6
        assert reward["total"] == pytest.approx(total) and math.isnan(reward["structured_caption"])
    assert report["stages"][4]["reward_first"] is not None and Path(report["stages"][4]["curves"]).exists()
    saved = json.loads((out / "report.json").read_text())
    assert saved["wall_s"] > 0 and len(saved["stages"]) == 6
    text = (out / "report.md").read_text()
    assert "| grpo | grpo |" in text
    for stage in saved["stages"]:  # the eval reward column
        line = next(x for x in text.splitlines() if x.startswith(f"| {stage['name']} | {stage['kind']} |"))
        assert line.split("|")[7].strip() == f"{stage['eval']['reward']['total']:.3f}", line
    grpo = saved["stages"][4]
    assert grpo["eval_steps"] == [0, 1, 2] and grpo["eval_setting"].startswith("3 eval rows x 1 completion(s)")
    assert set(grpo["rewards"]) == names
    for name, r in grpo["rewards"].items():
        assert set(r) == {"train_first", "train_last", "eval_start", "eval_end"}, name
        line = next(x for x in text.splitlines() if x.startswith(f"| {name} |"))
        assert line.count("|") == 6, line
        if name in ("total", "format"):  # every completion gets these: a number in each column
            assert all(c.strip() not in ("-", "nan") for c in line.split("|")[2:6]), line
    assert grpo["reward_first"] == grpo["rewards"]["total"]["train_first"]
    assert (out / "stages.png").stat().st_size > 5000
    # Sampled evaluation where GRPO acts (eval.samples_at: grpo): after the GRPO stage and the stage it starts
    # from, and the GRPO stage against that one, paired.
    assert [s["name"] for s in saved["stages"] if "sampled" in s["eval"]] == ["cold_start", "grpo"]
    for stage in saved["stages"][3:5]:
        sampled = stage["eval"]["sampled"]
        assert sampled["k"] == 2 and len(sampled["prompts"]) == 6 and sampled["reward"]["n"] == 6
        assert sampled["reward"]["low"] <= sampled["reward"]["value"] <= sampled["reward"]["high"]
        line = next(x for x in text.splitlines() if x.startswith(f"| {stage['name']} | {stage['kind']} |"))
        assert line.split("|")[8].strip().startswith(f"{sampled['reward']['value']:.3f} ["), line
    assert grpo["sampled_vs"]["stage"] == "cold_start" and grpo["sampled_vs"]["reward"]["n"] == 6
    assert "Against 'cold_start', paired (the same prompts and seeds): sampled reward" in text
    assert "not the randomness of this one GRPO run" in text  # what the interval does not cover, said with it
    # The last model on the held-out questions as an MMAU file, in each answer format of tiny.yaml's eval.final.
    finals = saved["final"]
    assert [(f["answer_format"], f["think"]) for f in finals] == [
        ("letter", False), ("text", False), ("letter", True), ("text", True)
    ]  # fmt: skip
    for i, f in enumerate(finals):
        n = 3 if i == 0 else 5
        assert f["layout"] == "mmau" and f["n"] == n
        rows = [json.loads(x) for x in (out / "samples" / f"final-{i}.jsonl").read_text().splitlines()]
        assert len(rows) == n and f["mcq_accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / n)
        assert f["choice_rate"] == pytest.approx(sum(r["picked_one_choice"] for r in rows) / n)
        think = "yes" if f["think"] else "no"
        head = f"| synthetic:eval_mmau.json | mmau | {f['answer_format']} | {think} | {n} |"
        line = next(x for x in text.splitlines() if x.startswith(head))
        own = saved["stages"][-1]["eval"]["mcq_accuracy"]
        assert f"| {f['mcq_accuracy']:.3f} | {f['mcq_accuracy'] - own:+.3f} |" in line, line

    # The fresh base model's projector was standardised on the first audio stage's clips (all 10 here).
    from transformers import AutoProcessor

    from grpo_audio.data.loaders import load_manifest
    from grpo_audio.recipe.calibrate import audio_embeddings

    clips = {row.audio: row for row in load_manifest(out / "data" / "skills.jsonl", family=family)}
    base = family.model_class().from_pretrained(out / "base")
    emb = audio_embeddings(base, family, AutoProcessor.from_pretrained(out / "base"), list(clips.values()))
    assert len(clips) == 10
    torch.testing.assert_close(emb.mean(0), torch.zeros(emb.shape[1]), atol=1e-4, rtol=0)
    torch.testing.assert_close(emb.std(0), torch.ones(emb.shape[1]), atol=1e-3, rtol=0)

    from vllm import LLM

    llm = LLM(
        model=report["stages"][4]["model_dir"],
        dtype="float32",
        max_model_len=1024,
        gpu_memory_utilization=0.3,
        enforce_eager=True,
        limit_mm_per_prompt={"audio": 1},
    )
    assert llm.llm_engine.model_config.architecture == family.vllm_architecture
    del llm

    # Run again: every stage is skipped (same settings, same input models), the report entries are the same.
    def trained():  # the stages' models (the base model is rebuilt, same bytes, by every run)
        return {p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors") if out / "base" not in p.parents}

    stamps = trained()
    assert len(stamps) >= 4
    base_samples = (out / "samples" / "base.jsonl").stat().st_mtime_ns
    again = Recipe(cfg).run().to_dict()
    assert json.dumps(again["stages"], sort_keys=True) == json.dumps(report["stages"], sort_keys=True)
    assert trained() == stamps  # nothing retrained
    assert (out / "samples" / "base.jsonl").stat().st_mtime_ns == base_samples  # nor the base model re-evaluated

    # The folder moved (as a recipe resumed from another directory sees it): the records' model paths are found
    # under the new folder, so nothing is trained or evaluated again (it was, when the recorded paths were read
    # as they were written).
    moved = tmp_path / "moved"
    out.rename(moved)
    elsewhere = Recipe(dataclasses.replace(cfg, output_dir=str(moved))).run().to_dict()
    assert [s["model_dir"] for s in elsewhere["stages"][1:]] == [
        s["model_dir"].replace(str(out), str(moved)) for s in report["stages"][1:]
    ]
    assert all(Path(s["model_dir"], "config.json").is_file() for s in elsewhere["stages"][1:])
    moved.rename(out)
    assert trained() == stamps

    # Other evaluation settings: every stage is evaluated again (6 -> 4 rows), none is trained again.
    fewer = load_config(
        REPO / "examples/music_flamingo/tiny.yaml", [*overrides, "eval.max_rows=4", f"stages={stages}"],
        schema=RecipeConfig,
    )  # fmt: skip
    evaluated = Recipe(fewer).run().to_dict()
    assert trained() == stamps
    assert [s["model_dir"] for s in evaluated["stages"][1:]] == [s["model_dir"] for s in report["stages"][1:]]
    for stage in evaluated["stages"]:
        assert len((out / "samples" / f"{stage['name']}.jsonl").read_text().splitlines()) == 4, stage["name"]
    assert evaluated["stages"][4]["sampled_vs"]["stage"] == "cold_start"

    # The base and text models left unevaluated (eval.base, a stage's evaluate): they lose their numbers, in the
    # report too; no other stage is evaluated again, and none is trained again (evaluate is not in a stage's key).
    kept = {n: (out / "samples" / f"{n}.jsonl").stat().st_mtime_ns for n in ("sft", "cold_start", "grpo", "final")}
    unevaluated = stages.replace("max_steps: 2, batch_size: 8}", "max_steps: 2, batch_size: 8, evaluate: false}")
    assert unevaluated != stages
    skipping = load_config(
        REPO / "examples/music_flamingo/tiny.yaml",
        [*overrides, "eval.max_rows=4", "eval.base=false", f"stages={unevaluated}"],
        schema=RecipeConfig,
    )
    capsys.readouterr()
    skipped = Recipe(skipping).run().to_dict()
    said = capsys.readouterr().out
    assert "stage 'text' already completed; its evaluation settings or data changed: its evaluation dropped" in said
    assert ["eval" in s for s in skipped["stages"]] == [False, False, True, True, True, True]
    assert {n: (out / "samples" / f"{n}.jsonl").stat().st_mtime_ns for n in kept} == kept
    assert trained() == stamps
    text = (out / "report.md").read_text()
    assert "| base | base | - | - | - | - | - | - |" in text and "| text | text_pretrain | - | - | - |" in text

    # An interrupted GRPO stage (its completion record gone, its checkpoints there) resumes from its checkpoint.
    (out / "grpo" / "STAGE_COMPLETE.json").unlink()
    run_id = json.loads((out / "grpo" / "run.json").read_text())["run_id"]
    resumed = Recipe(cfg).run().to_dict()
    assert json.loads((out / "grpo" / "run.json").read_text())["run_id"] == run_id
    assert resumed["stages"][4]["model_dir"] == report["stages"][4]["model_dir"]
    assert trained() == stamps  # the checkpoint is of step 2 of 2: no new step

    # Another cold start: the GRPO stage starts over from the new model, never from the old run's checkpoints.
    changed = load_config(
        REPO / "examples/music_flamingo/tiny.yaml",
        [*overrides, f"stages={stages.replace('max_steps: 2, lr: 1e-3', 'max_steps: 3, lr: 1e-3')}"],
        schema=RecipeConfig,
    )
    Recipe(changed).run()
    lineage = json.loads((out / "grpo" / "run.json").read_text())
    assert lineage["run_id"] != run_id
    for checkpoint in (out / "grpo" / "checkpoints").glob("step-*"):
        assert json.loads((checkpoint / "lineage.json").read_text())["run_id"] == lineage["run_id"]
    steps = [json.loads(x)["step"] for x in (out / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2]  # a fresh run's metrics, not appended to the old ones


def test_replay_mixes_rows_into_a_stage_and_keeps_its_own_check(tmp_path, capsys):
    from grpo_audio.data.synthetic import write_corpus

    out = tmp_path / "out"
    write_corpus(out / "data", n=10, seed=2)  # 10 clips: 30 skills rows, 20 think rows
    stages = (
        '[{name: cs, kind: cold_start, data: "synthetic:think", replay: "synthetic:skills", replay_ratio: 0.75},'
        ' {name: plain, kind: cold_start, data: "synthetic:think"},'
        ' {name: bad, kind: cold_start, data: "synthetic:skills", replay: "synthetic:think"}]'
    )
    cfg = load_config(
        REPO / "examples/music_flamingo/tiny.yaml",
        [f"output_dir={out}", f"stages={stages}"],
        schema=RecipeConfig,
    )
    recipe = Recipe(cfg)
    rows, target = recipe.sft_rows(cfg.stages[0])
    assert target == "auto" and len(rows) == 35
    assert all(r.thinking for r in rows[:20]) and {r.id for r in rows[20:]} <= {
        r.id for r in recipe._rows("synthetic:skills")
    }
    assert len({r.id for r in rows[20:]}) == 15  # drawn without repeats
    assert [r.id for r in recipe.sft_rows(cfg.stages[0])[0]] == [r.id for r in rows]  # same seed, same rows
    assert "cs': 15 rows replayed from synthetic:skills" in capsys.readouterr().out
    plain, target = recipe.sft_rows(cfg.stages[1])
    assert target == "think" and len(plain) == 20
    with pytest.raises(ValueError, match="field 'thinking'"):  # the stage's own rows still need their chains
        recipe.sft_rows(cfg.stages[2])


def test_a_grpo_stage_replays_its_rows_beside_the_policy_loss(tmp_path):
    from grpo_audio.config import ConfigError

    def recipe(grpo_overrides):
        stages = f"[{{name: grpo, kind: grpo, data: 'synthetic:rl', replay: 'synthetic:think,synthetic:skills', grpo_overrides: {grpo_overrides}}}]"  # noqa: E501
        overrides = [f"output_dir={tmp_path}", f"stages={stages}", "eval.base=true"]
        return Recipe(load_config(REPO / "examples/music_flamingo/tiny.yaml", overrides, schema=RecipeConfig))

    built = recipe("{grpo.replay_coef: 0.3}")
    run = built.grpo_config(built.cfg.stages[0], tmp_path / "base")
    assert run.data.replay == f"{tmp_path / 'data' / 'think.jsonl'},{tmp_path / 'data' / 'skills.jsonl'}"
    assert run.grpo.replay_coef == 0.3
    with pytest.raises(ConfigError, match="data.replay=.*think.jsonl.*grpo.replay_coef is 0"):
        recipe("{}")  # replay rows nothing would train on: refused when the recipe is built


@pytest.mark.parametrize(
    "override, field",
    [
        ("synthetic.chord_qualities=[major]", "synthetic.chord_qualities"),
        ("synthetic.tempo_step=0", "synthetic.tempo_step"),
        ("synthetic.registers=[70]", "synthetic.registers"),
        ("eval.max_rows=-1", r"'eval.max_rows' = -1 is below"),
        ("eval.batch_size=0", r"'eval.batch_size' = 0 is below"),
        ("eval.final=[{data: 'synthetic:eval_mmau.json', max_rows: -5}]", r"'eval.final\[0\].max_rows' = -5 is below"),
        ("stages=[{name: sft, kind: sft, data: 'synthetic:skills', replay_ratio: -1}]", r"'stages\[0\].replay_ratio'"),
    ],
)
def test_a_bad_label_space_or_row_count_fails_before_any_stage(tmp_path, override, field):
    from grpo_audio.config import ConfigError

    with pytest.raises(ConfigError, match=field):  # a value below a field's least one, when the YAML is read
        cfg = load_config(
            REPO / "examples/music_flamingo/tiny.yaml", [f"output_dir={tmp_path}", override], schema=RecipeConfig
        )
        Recipe(cfg)
    cfg = load_config(REPO / "examples/music_flamingo/tiny.yaml", [f"output_dir={tmp_path}"], schema=RecipeConfig)
    cfg.eval.batch_size = 0  # a config built in code: refused by the recipe before any stage
    with pytest.raises(ConfigError, match=r"'eval.batch_size' = 0 is below"):
        Recipe(cfg)
    assert not any(tmp_path.iterdir())  # nothing generated


@pytest.mark.parametrize(
    "overrides, stage_edit, why",
    [
        (["eval.final=[{data: /no/such/mmau.json}]"], None,
         r"eval.final\[0\].data: '/no/such/mmau.json': no such file"),
        (["eval.data=synthetic:evl"], None, r"eval.data: 'synthetic:evl': the synthetic corpus writes no such file "
         r"\(it writes eval.jsonl, eval_mmau.json, rl.jsonl, skills.jsonl, think.jsonl\)"),
        (["eval.data=/no/such/eval.jsonl"], None, r"eval.data: '/no/such/eval.jsonl': no such file"),
        (["synthetic.enabled=false"], None, r"eval.data: 'synthetic:eval': synthetic.enabled is false"),
        ([f"eval.data={REPO / 'README.md'}", "synthetic.enabled=false"], None,
         r"stages\[0\] \('text'\).data: 'synthetic:skills': synthetic.enabled is false"),
        ([], (1, "data", "synthetic:skils"), r"stages\[1\] \('sft'\).data: 'synthetic:skils': the synthetic corpus"),
        ([], (2, "replay", "synthetic:skills, /no/such.jsonl"),
         r"stages\[2\] \('cold_start'\).replay: '/no/such.jsonl': no such file"),
        ([], (1, "data", " "), r"stages\[1\] \('sft'\).data: empty, but a sft stage trains on it"),
        (["synthetic.n_eval=0"], None,
         r"eval.data: 'synthetic:eval': synthetic.n_eval is 0: the corpus's held-out split is empty"),
        (["eval.final=[{data: MISSING_AUDIO}]"], None,
         r"eval.final\[0\].data: .*mmau-test-mini.json: \d+ of 1000 rows are bad:\n  row '3fe64f3d-282c-4bc8-a753-"
         r"68f8f6c35652': field 'audio': file not found"),
        ([], (3, "data", "BAD_ROW"), r"stages\[3\] \('grpo'\).data: .*rl.jsonl: 1 of 2 rows are bad:\n  row 'r1': "
         r"field 'answer'"),
    ],
)  # fmt: skip
def test_a_data_file_that_is_not_there_fails_before_any_stage(tmp_path, overrides, stage_edit, why):
    """Every file the recipe names is checked when it is built: a misspelt evaluation file would otherwise skip
    every evaluation, and a misspelt stage file fail only when its stage starts."""
    from grpo_audio.config import ConfigError

    tiny = REPO / "examples/music_flamingo/tiny.yaml"
    out = tmp_path / "run"
    # Files of the user's own, read before any stage: one whose audio is not there, one with a bad row.
    clip = tmp_path / "clip.wav"
    sf.write(clip, np.zeros(16000, dtype=np.float32), 16000)
    rows = [{"id": "r0", "audio": str(clip), "prompt": "Which chord?", "answer": "C major", "task": "chord"},
            {"id": "r1", "audio": str(clip), "prompt": "Which chord?", "task": "chord",
             "choices": ["C major", "D minor"], "answer": "E major"}]  # fmt: skip
    (tmp_path / "rl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # MMAU test-mini as published, without its audio folder.
    mmau = REPO / "tests" / "fixtures" / "benchmarks" / "mmau-test-mini.json"
    paths = {"MISSING_AUDIO": str(mmau), "BAD_ROW": str(tmp_path / "rl.jsonl")}
    Recipe(load_config(tiny, [f"output_dir={out}"], schema=RecipeConfig))  # the committed config passes
    rows[1]["answer"] = "C major"  # and so does the same file with the row mended
    (tmp_path / "rl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    mended = load_config(tiny, [f"output_dir={out}"], schema=RecipeConfig)
    mended.stages[3].data = paths["BAD_ROW"]
    Recipe(mended)
    (tmp_path / "rl.jsonl").write_text("".join(json.dumps({**r, "answer": "E major"} if r["id"] == "r1" else r) + "\n"
                                           for r in rows))  # fmt: skip
    skipping = load_config(tiny, [f"output_dir={out}"], schema=RecipeConfig)  # GRPO may skip bad rows
    skipping.stages[3].data = paths["BAD_ROW"]
    skipping.stages[3].grpo_overrides["data.bad_rows"] = "skip"
    Recipe(skipping)
    overrides = [o.replace("MISSING_AUDIO", paths["MISSING_AUDIO"]) for o in overrides]
    cfg = load_config(tiny, [f"output_dir={out}", *overrides], schema=RecipeConfig)
    if stage_edit:
        index, field, value = stage_edit
        setattr(cfg.stages[index], field, paths.get(value, value))
    with pytest.raises(ConfigError, match=why):
        Recipe(cfg)
    assert not out.exists()  # nothing generated


@pytest.mark.parametrize(
    "edit, why",
    [
        ("stages[2].evaluate", r"stages\[2\] \('cold_start'\): not evaluated, but the sampled evaluation runs after"),
        ("stages[3].evaluate", r"stages\[3\] \('grpo'\): not evaluated, but the sampled evaluation runs after it"),
        ("eval.samples_at", r"eval.base: not evaluated, but the sampled evaluation runs after every model \(eval"),
        ("an eval stage", r"stages\[4\] \('check'\): evaluate is false, but an 'eval' stage is its evaluation"),
    ],
)
def test_a_stage_that_must_be_evaluated_fails_before_any_stage_when_it_is_not(tmp_path, edit, why):
    from grpo_audio.config import ConfigError, StageConfig

    cfg = load_config(REPO / "examples/music_flamingo/tiny.yaml", [f"output_dir={tmp_path}"], schema=RecipeConfig)
    cfg.eval.base = cfg.stages[0].evaluate = False  # tiny.yaml's stages: text, sft, cold_start, grpo
    Recipe(cfg)  # the base and text models may go unevaluated
    if edit.startswith("stages"):
        cfg.stages[int(edit[7])].evaluate = False
    elif edit == "eval.samples_at":
        cfg.eval.samples_at = "all"
    else:
        cfg.stages.append(StageConfig(name="check", kind="eval", data="synthetic:eval", evaluate=False))
    with pytest.raises(ConfigError, match=why):
        Recipe(cfg)
    assert not any(tmp_path.iterdir())  # nothing generated


def test_grpo_overrides_are_checked_when_the_recipe_is_built(tmp_path):
    from grpo_audio.config import ConfigError

    stages = "[{name: grpo, kind: grpo, data: 'synthetic:rl', grpo_overrides: {train.max_stepz: 9}}]"
    overrides = [f"output_dir={tmp_path}", f"stages={stages}", "eval.base=true"]  # GRPO starts from the base model
    cfg = load_config(REPO / "examples/music_flamingo/tiny.yaml", overrides, schema=RecipeConfig)
    with pytest.raises(ConfigError, match="stage 'grpo' grpo_overrides: .*train.max_stepz.*max_steps"):
        Recipe(cfg)
    assert not any(tmp_path.iterdir())


def test_a_grpo_setting_changes_only_the_grpo_stages_key(tmp_path, tiny_checkpoint):
    from grpo_audio.data.synthetic import write_corpus

    model = tiny_checkpoint("music_flamingo")
    write_corpus(tmp_path / "data", n=8, n_eval=4, n_rl=4)  # the files the keys fingerprint, as run() writes them

    def keys(*overrides):
        cfg = load_config(REPO / "examples/music_flamingo/tiny.yaml", [f"output_dir={tmp_path}", *overrides],
                          schema=RecipeConfig)  # fmt: skip
        recipe = Recipe(cfg)
        return {s.name: (recipe.keys.stage_key(s, model), recipe.keys.eval_key(i)) for i, s in enumerate(cfg.stages)}

    base, changed = keys(), keys("train.lr=0.5")
    grpo = [s for s in base if s.startswith("grpo")]
    assert grpo and all(base[s] == changed[s] for s in base if s not in grpo)
    assert all(base[s][0] != changed[s][0] and base[s][1] == changed[s][1] for s in grpo)
    # An evaluation setting changes every stage's evaluation key and no stage's model key.
    evaluation = keys("eval.max_new_tokens=7")
    assert all(evaluation[s][0] == base[s][0] and evaluation[s][1] != base[s][1] for s in base)
    # A reward changes the GRPO stages' model keys, and every evaluation key.
    rewarded = keys("rewards=[{name: format, weight: 1.0}]")
    assert all((rewarded[s][0] != base[s][0]) == (s in grpo) and rewarded[s][1] != base[s][1] for s in base)
    # What the last model is asked besides (eval.final) is asked anew each run: no stage is evaluated again for it.
    final = keys("eval.final=[{data: 'synthetic:eval_mmau.json', max_rows: 3}]")
    assert final == base


def _edit_in_place(path: Path, content: bytes) -> None:
    """Write ``content`` over ``path``, the same size, and put its modification time back: only its bytes tell."""
    before = path.stat()
    assert len(content) == before.st_size and content != path.read_bytes()  # the premise: an edit, size kept
    path.write_bytes(content)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def test_the_keys_follow_the_data_files_content_not_their_paths_or_times(tmp_path, tiny_checkpoint):
    """A data file or a clip edited in place (same path, size and modification time) changes the key of each stage
    that trains on it and of each evaluation that reads it, and no other; the same bytes written again (the
    synthetic corpus, rewritten by every run) change none."""
    from grpo_audio.data.synthetic import write_corpus

    model = tiny_checkpoint("music_flamingo")
    data = tmp_path / "data"
    write_corpus(data, n=8, n_eval=4, n_rl=4)
    cfg = load_config(REPO / "examples/music_flamingo/tiny.yaml", [f"output_dir={tmp_path}"], schema=RecipeConfig)
    # tiny.yaml's stages and what they train on: text (skills, think), sft (skills), cold_start (think, skills
    # replayed), grpo (rl, think replayed, and the eval data its curves are drawn on).
    assert [(s.name, s.data, s.replay) for s in cfg.stages] == [
        ("text", "synthetic:skills,synthetic:think", ""), ("sft", "synthetic:skills", ""),
        ("cold_start", "synthetic:think", "synthetic:skills"), ("grpo", "synthetic:rl", "synthetic:think"),
    ]  # fmt: skip

    def keys():
        recipe = Recipe(cfg)
        stages = {s.name: recipe.keys.stage_key(s, model) for s in cfg.stages}
        return stages, {s.name: recipe.keys.eval_key(i) for i, s in enumerate(cfg.stages)} | {
            "base": recipe.keys.eval_key(-1)
        }

    def changed(before, after):
        return sorted(n for n in before if before[n] != after[n])

    stages, evals = keys()
    rl = data / "rl.jsonl"
    _edit_in_place(rl, "".join(reversed(rl.read_text().splitlines(keepends=True))).encode())  # the rows reordered
    edited_stages, edited_evals = keys()
    assert changed(stages, edited_stages) == ["grpo"] and edited_evals == evals
    assert edited_stages["grpo"]["data"]["synthetic:rl"] != stages["grpo"]["data"]["synthetic:rl"]

    held_out = data / "eval.jsonl"
    text = held_out.read_bytes()
    at = text.index(b'"prompt": "') + len(b'"prompt": "')
    _edit_in_place(held_out, text[:at] + text[at : at + 1].swapcase() + text[at + 1 :])  # one letter of one row
    stages2, evals2 = keys()
    assert changed(edited_stages, stages2) == ["grpo"]  # (its curves)
    assert changed(edited_evals, evals2) == ["base", "cold_start", "grpo", "sft", "text"]

    clip = data / "clips" / "eval-00000.wav"  # a held-out clip, its samples shifted: same length, same size
    assert f'"audio": "clips/{clip.name}"' in held_out.read_text() and clip.name not in rl.read_text()
    wave, rate = sf.read(clip, dtype="int16")
    buffer = io.BytesIO()
    sf.write(buffer, np.roll(wave, 1234), rate, subtype="PCM_16", format="WAV")
    _edit_in_place(clip, buffer.getvalue())
    stages3, evals3 = keys()
    assert changed(stages2, stages3) == ["grpo"] and changed(evals2, evals3) == sorted(evals)

    times = rl.stat().st_mtime_ns
    write_corpus(data, n=8, n_eval=4, n_rl=4)  # the same bytes again, newer times
    assert rl.stat().st_mtime_ns != times
    assert keys() == (stages, evals)


def test_a_data_file_edited_in_place_retrains_its_stage_and_every_later_one(tmp_path, capsys):
    """The user's own files, edited in place between runs (same paths, sizes and modification times): the stage
    that trains on an edited file and every stage after it train again (a GRPO stage from scratch, not from its old
    checkpoint), the stages before it are skipped; an edited eval file re-evaluates every model and retrains none;
    an untouched run skips everything."""
    from grpo_audio.data.synthetic import write_corpus

    data, out = tmp_path / "data", tmp_path / "out"
    write_corpus(data, n=6, n_eval=3, n_rl=2)
    stages = (
        f'[{{name: sft, kind: sft, data: "{data / "skills.jsonl"}", max_steps: 1, batch_size: 4}},'
        f' {{name: cold_start, kind: cold_start, data: "{data / "think.jsonl"}", max_steps: 1, batch_size: 4}},'
        f' {{name: grpo, kind: grpo, data: "{data / "rl.jsonl"}", grpo_overrides: {{train.max_steps: 1}}}}]'
    )
    overrides = [
        f"output_dir={out}", "tiny_model=test", "synthetic.enabled=false", f"eval.data={data / 'eval.jsonl'}",
        "eval.final=[]", "eval.samples=0", "eval.base=true", "eval.max_rows=2", "eval.max_new_tokens=2",
        "rollout.engine=hf", "rollout.max_new_tokens=2", "train.prompts_per_step=2", "grpo.num_generations=2",
        "grpo.dynamic_sampling=false", "train.eval_every=0", f"stages={stages}",
    ]  # fmt: skip
    cfg = load_config(REPO / "examples/music_flamingo/tiny.yaml", overrides, schema=RecipeConfig)
    names = ("sft", "cold_start", "grpo")

    def run() -> tuple[dict[str, int], dict[str, int], str]:
        """Each stage's model's and each evaluation's modification time after a run, and what the run said."""
        capsys.readouterr()
        report = Recipe(cfg).run().to_dict()
        models = {n: Path(s["model_dir"], "model.safetensors").stat().st_mtime_ns for n, s in
                  zip(names, report["stages"][1:], strict=True)}  # fmt: skip
        evaluated = {n: (out / "samples" / f"{n}.jsonl").stat().st_mtime_ns for n in ("base", *names)}
        return models, evaluated, capsys.readouterr().out

    def grpo_run() -> tuple[str, list[int]]:
        steps = [json.loads(x)["step"] for x in (out / "grpo" / "metrics.jsonl").read_text().splitlines()]
        return json.loads((out / "grpo" / "run.json").read_text())["run_id"], steps

    def evaluated_ids(name: str) -> list[str]:
        return [json.loads(x)["id"] for x in (out / "samples" / f"{name}.jsonl").read_text().splitlines()]

    models, evaluated, said = run()
    assert all(f"[recipe] stage '{n}' ({cfg.stages[i].kind}) from" in said for i, n in enumerate(names))  # trained
    first_grpo = grpo_run()

    # Untouched: every stage and the base model's evaluation skipped.
    again, evaluated_again, said = run()
    assert (again, evaluated_again) == (models, evaluated)
    assert said.count("already completed from this input with these settings: skipped") == 3
    assert "base model already evaluated with these settings: skipped" in said

    # The cold start's file edited in place: the sft stage is skipped, the cold start and GRPO train again, GRPO as
    # a new run (its input model changed).
    think = data / "think.jsonl"
    _edit_in_place(think, "".join(reversed(think.read_text().splitlines(keepends=True))).encode())
    retrained, evaluated2, said = run()
    assert retrained["sft"] == models["sft"] and "stage 'sft' already completed" in said
    assert all(retrained[n] != models[n] and f"[recipe] stage '{n}' (" in said for n in ("cold_start", "grpo"))
    assert evaluated2["base"] == evaluated["base"] and evaluated2["sft"] == evaluated["sft"]
    second_grpo = grpo_run()
    assert second_grpo[0] != first_grpo[0] and second_grpo[1] == first_grpo[1] == [1]  # its one step, anew

    # GRPO's own prompts edited in place: the same input model and settings, so the trainer alone would resume its
    # finished run (step 1 of 1) and train nothing; it starts over. The held-out file edited too: every model is
    # evaluated again on its new first rows, none but GRPO's trained again.
    rl, held_out = data / "rl.jsonl", data / "eval.jsonl"
    _edit_in_place(rl, "".join(reversed(rl.read_text().splitlines(keepends=True))).encode())
    rows = held_out.read_text().splitlines(keepends=True)
    _edit_in_place(held_out, "".join(rows[2:] + rows[:2]).encode())
    assert evaluated_ids("sft") == [json.loads(r)["id"] for r in rows[:2]]  # the premise: the old first rows
    third, evaluated3, said = run()
    assert third["sft"] == models["sft"] and third["cold_start"] == retrained["cold_start"]
    assert third["grpo"] != retrained["grpo"] and "[recipe] stage 'grpo' (grpo) from" in said
    third_grpo = grpo_run()
    assert third_grpo[0] != second_grpo[0] and third_grpo[1] == [1]
    assert said.count("its evaluation settings or data changed: evaluated") == 2  # sft, cold_start
    assert "base model already evaluated" not in said
    for name in ("base", *names):
        assert evaluated3[name] != evaluated2[name]
        assert evaluated_ids(name) == [json.loads(r)["id"] for r in rows[2:4]], name


@pytest.mark.slow
def test_recipe_under_torchrun(tmp_path):
    """Two processes: the supervised stage trains data-parallel through TRL, the GRPO stage on FSDP2 (both
    processes write their shards), the main process alone evaluates and writes the report; one line per stage."""
    import subprocess
    import sys

    stages = (
        '[{name: sft, kind: sft, data: "synthetic:skills", max_steps: 2, lr: 1e-3, batch_size: 4},'
        ' {name: grpo, kind: grpo, data: "synthetic:rl", grpo_overrides: {train.max_steps: 2}},'
        " {name: final, kind: eval}]"
    )
    overrides = [
        f"output_dir={tmp_path / 'out'}",
        "tiny_model=test",
        "synthetic.n=8",
        "synthetic.n_eval=4",
        "synthetic.n_rl=4",
        "rollout.engine=hf",
        "rollout.max_new_tokens=6",
        "eval.engine=hf",
        "eval.max_new_tokens=6",
        "eval.base=true",
        "train.prompts_per_step=2",
        "train.eval_every=0",
        "grpo.num_generations=2",
        "grpo.dynamic_sampling=false",  # tiny.yaml's; it runs on one process only
        "parallel.strategy=fsdp2",
        f"stages={stages}",
    ]
    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node",
            "2",
            "-m",
            "grpo_audio.cli",
            "recipe",
            str(REPO / "examples/music_flamingo/tiny.yaml"),
            *overrides,
        ],  # fmt: skip
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    out = tmp_path / "out"
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for stage in ("sft", "grpo", "final"):  # said once, by the main process
        assert proc.stdout.count(f"[recipe] stage '{stage}'") == 1, proc.stdout
        assert proc.stdout.count(f"[recipe] eval after '{stage}'") == 1, proc.stdout
    assert proc.stderr.count("supervised stage on 2 processes") == 1, proc.stderr  # the other process is quiet
    report = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in report["stages"]] == ["base", "sft", "grpo", "final"]
    assert all("eval" in s for s in report["stages"])
    log, rank1 = (out / "grpo-audio.log").read_text(), (out / "grpo-audio.rank1.log").read_text()
    assert "supervised stage on 2 processes" in log and "supervised stage on 2 processes" in rank1
    state = out / "grpo" / "checkpoints" / "step-000002" / "state"
    assert sorted(p.name for p in state.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    family = get_family("music_flamingo")
    for stage in report["stages"][1:3]:
        family.model_class().from_pretrained(stage["model_dir"])


@pytest.mark.slow
def test_same_seed_same_report(tmp_path):
    """A shortened recipe run twice with one seed on one machine: every number of the two reports is the same
    (the wall times aside); a third run with another seed differs, so the comparison would see a difference."""
    stages = (
        '[{name: sft, kind: sft, data: "synthetic:skills", max_steps: 3, lr: 1e-3, batch_size: 4},'
        ' {name: grpo, kind: grpo, data: "synthetic:rl", grpo_overrides: {train.max_steps: 2, train.eval_every: 1,'
        " train.eval_rows: 3}}]"
    )

    def report(name: str, seed: int) -> dict:
        overrides = [
            f"output_dir={tmp_path / name}", f"seed={seed}", "tiny_model=test", "synthetic.n=8", "synthetic.n_eval=4",
            "synthetic.n_rl=4", "rollout.engine=hf", "rollout.max_new_tokens=6", "eval.max_new_tokens=6",
            "eval.samples=2", "train.prompts_per_step=2", "grpo.num_generations=2", f"stages={stages}",
        ]  # fmt: skip
        Recipe(load_config(REPO / "examples/music_flamingo/tiny.yaml", overrides, schema=RecipeConfig)).run()
        text = (tmp_path / name / "report.json").read_text().replace(str(tmp_path / name), "OUT")
        return json.loads(text)

    def numbers(value, path=""):
        if isinstance(value, dict):
            return {
                k: v
                for key, item in value.items()
                if key != "wall_s"
                for k, v in numbers(item, f"{path}/{key}").items()
            }
        if isinstance(value, list):
            return {k: v for i, item in enumerate(value) for k, v in numbers(item, f"{path}[{i}]").items()}
        return {path: value}

    first, again, other = numbers(report("a", 3)), numbers(report("b", 3)), numbers(report("c", 4))
    assert len(first) > 100 and first == again
    assert first.keys() == other.keys() and first != other


@pytest.mark.parametrize(
    "stages, own",
    [
        ([("sft", "sft", 0.5), ("grpo", "grpo", 0.7)], 0.7),
        ([("sft", "sft", 0.5), ("grpo", "grpo", None)], None),  # the last model left unevaluated
        ([("grpo", "grpo", 0.7), ("mmau", "eval", 0.3)], 0.7),  # an eval stage scores another file
    ],
)
def test_the_final_files_are_compared_with_the_last_models_own_evaluation(stages, own):
    """The report's final table compares the last model with its own eval-split accuracy, never an earlier model's
    or an 'eval' stage's other file."""
    from grpo_audio.recipe import RecipeReport
    from grpo_audio.recipe.report import markdown

    final = {"data": "f.json", "layout": "mmau", "answer_format": "text", "think": False, "max_rows": 0, "n": 10,
             "mcq_accuracy": 0.8, "choice_rate": 1.0, "format_rate": 1.0}  # fmt: skip
    report = {
        "family": "music_flamingo",
        "stages": [
            {"name": n, "kind": k, **({"eval": {"mcq_accuracy": a}} if a is not None else {})} for n, k, a in stages
        ],
        "final": [final],
        "wall_s": 60.0,
    }
    text = "\n".join(markdown(RecipeReport.from_dict(report)))
    row = next(x for x in text.splitlines() if x.startswith("| f.json |"))
    if own is None:
        assert "its MCQ accuracy on the eval split" not in text and row.split("|")[7].strip() == "-"
    else:
        assert f"its MCQ accuracy on the eval split: {own:.3f}" in text
        assert row.split("|")[7].strip() == f"{0.8 - own:+.3f}"


def test_the_sampled_evaluation_runs_after_the_model_grpo_starts_from_past_an_eval_stage(tmp_path):
    """An eval stage between the cold start and GRPO hands the cold-start model on: the cold start's evaluation
    samples (GRPO is compared with it), the eval stage's, on its own file, does not; so the cold start may not go
    unevaluated."""
    from grpo_audio.config import ConfigError, StageConfig

    cfg = load_config(REPO / "examples/music_flamingo/tiny.yaml", [f"output_dir={tmp_path}"], schema=RecipeConfig)
    cfg.stages.insert(3, StageConfig(name="mmau", kind="eval", data="synthetic:eval_mmau.json"))
    recipe = Recipe(cfg)  # stages: text, sft, cold_start, mmau, grpo
    assert [recipe.start_of(i) for i in range(5)] == [-1, 0, 1, 2, 2]
    assert [recipe.sampled_after(i) for i in range(-1, 5)] == [False, False, False, True, False, True]
    cfg.stages[2].evaluate = False
    with pytest.raises(ConfigError, match=r"stages\[2\] \('cold_start'\): not evaluated, but the sampled evaluation"):
        Recipe(cfg)
    assert not any(tmp_path.iterdir())

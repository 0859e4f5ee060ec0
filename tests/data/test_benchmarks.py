"""Benchmark layouts read from the real files (``tests/fixtures/benchmarks/``), checked item by item against the
source; predictions written back and scored by the official scorers' rules.

Audio is not part of the benchmark files: each test writes a short clip at every path the items name.
"""

from __future__ import annotations

import ast
import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from grpo_audio.cli import main
from grpo_audio.config import ConfigError
from grpo_audio.data.benchmarks import LayoutError, load_benchmark, read_benchmark, write_predictions
from grpo_audio.data.schema import DataError
from grpo_audio.rewards.matching import Choices

BENCHMARKS = Path(__file__).resolve().parents[1] / "fixtures" / "benchmarks"
CLIP = (0.1 * np.sin(np.arange(1600) / 5)).astype(np.float32)  # 0.1 s at 16 kHz
LETTER = "Answer with the letter of the correct choice."


def _clip(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, CLIP, 16000, format="MP3" if path.suffix == ".mp3" else "WAV")


# ---------------------------------------------------------------- the official scorers' rules, as documented


def _words(text: str) -> set[str]:
    return set(re.findall(r"\b\w+\b", text.lower()))


def mmau_credits(item: dict, prediction: str) -> bool:
    """MMAU's and MMAR's rule: every word of the right choice is in the prediction, and no word that only a wrong
    choice has (words shared with the right choice do not count against it)."""
    said, right = _words(prediction), _words(item["answer"])
    wrong = set().union(*(_words(c) - right for c in item["choices"] if _words(c) != right))
    return bool(said) and right <= said and said.isdisjoint(wrong)


def muchomusic_response(prediction: str, answers: list[str]) -> int:
    """MuChoMusic's rule: after "The correct answer is:", exactly one of the characters A-D names that option;
    otherwise the first option whose lower-cased text is in the lower-cased output; -1 for none."""
    output = prediction.split("The correct answer is:")[-1].strip()
    letters = sorted(set("ABCD") & set(output))
    if len(letters) == 1:
        return "ABCD".index(letters[0])
    return next((i for i, a in enumerate(answers) if a.lower().strip() in output.lower()), -1)


# ---------------------------------------------------------------- MMAU


@pytest.fixture(scope="module")
def mmau(tmp_path_factory):
    d = tmp_path_factory.mktemp("mmau")
    shutil.copy(BENCHMARKS / "mmau-test-mini.json", d / "mmau-test-mini.json")
    items = json.loads((d / "mmau-test-mini.json").read_text())
    for item in items:
        _clip(d / item["audio_id"])
    return d / "mmau-test-mini.json", items


def test_mmau_rows_item_by_item(mmau):
    path, items = mmau
    bench = load_benchmark(path, family="music_flamingo")
    assert bench.layout == "mmau" and len(bench.rows) == len(items) == 1000
    assert bench.spec.prediction_field == "model_output"
    for item, row in zip(items, bench.rows, strict=True):
        lettered = "\n".join(f"({'ABCDEFGH'[j]}) {c}" for j, c in enumerate(item["choices"]))
        assert row.id == item["id"]
        assert row.prompt == f"{item['question'].strip()}\n{lettered}\n{LETTER}"
        assert row.choices == item["choices"]
        assert row.choices[Choices(row.choices).answer_index(row.answer)] == item["answer"]
        assert Path(row.audio) == (path.parent / item["audio_id"])
        category = item["category"] if isinstance(item["category"], list) else [item["category"]]
        assert row.groups == {
            "task": [item["task"]],
            "category": category,
            "sub-category": [item["sub-category"]],
            "difficulty": [item["difficulty"]],
        }
        assert row.task == item["task"]
    assert sum(isinstance(i["category"], list) for i in items) == 13  # the premise: list-valued categories


def test_mmau_report_axes_and_list_values(mmau):
    from grpo_audio.eval import score

    path, items = mmau
    rows = load_benchmark(path, decode=False).rows
    out = score(rows, [f"<answer>{r.answer}</answer>" for r in rows])
    assert out.mcq_accuracy == 1.0 and out.choice_rate == 1.0
    assert set(out.per_group) == {"task", "category", "sub-category", "difficulty"}
    assert {k: v.n for k, v in out.per_group["task"].items()} == {"music": 334, "sound": 333, "speech": 333}
    assert set(out.per_group["category"]) == {i["category"] for i in items if isinstance(i["category"], str)}
    assert out.per_group["category"]["Reasoning"].n == sum(
        (i["category"] if isinstance(i["category"], list) else [i["category"]]) == ["Reasoning"] for i in items
    )
    assert {k: v.n for k, v in out.per_group["difficulty"].items()} == {"easy": 224, "hard": 236, "medium": 540}


def test_mmau_predictions_score_under_the_official_rule(mmau, tmp_path):
    """A run that answers every item's right letter exports the right choice's words: 1.0 under MMAU's rule
    (a bare letter would score nothing there). A wrong letter exports the wrong choice's words: 0 for the item,
    except where the wrong choice has exactly the right choice's words in another order, which the rule cannot
    tell apart (12 choices of 9 items in the source)."""
    path, items = mmau
    bench = load_benchmark(path, decode=False)
    bare = sum(mmau_credits(i, "ABCDEFGH"[i["choices"].index(i["answer"])]) for i in items)
    assert bare <= 10  # the premise: a bare letter, what the prompt asks for, scores (almost) nothing there
    right = {r.id: f"<answer>({chr(65 + Choices(r.choices).answer_index(r.answer))})</answer>" for r in bench.rows}
    out = write_predictions(bench, right, tmp_path / "right.json").path
    exported = json.loads(out.read_text())
    assert [{k: v for k, v in e.items() if k != "model_output"} for e in exported] == items  # items unchanged
    assert sum(mmau_credits(e, e["model_output"]) for e in exported) == 1000

    wrong, indistinct = {}, 0
    for r in bench.rows:
        answer = Choices(r.choices).answer_index(r.answer)
        j = next(j for j in range(len(r.choices)) if Choices(r.choices).canonical[j] != answer)
        wrong[r.id] = f"<think>listening</think><answer>({chr(65 + j)})</answer>"
        indistinct += _words(r.choices[j]) == _words(r.choices[answer])
    exported = json.loads(write_predictions(bench, wrong, tmp_path / "wrong.json").path.read_text())
    assert sum(mmau_credits(e, e["model_output"]) for e in exported) == indistinct <= 9


def test_check_data_on_mmau(mmau, capsys):
    path, _ = mmau
    assert main(["check-data", str(path), "--family", "music_flamingo"]) == 0
    assert "mmau layout, 1000 rows: 1000 ok, 0 bad" in capsys.readouterr().out


# ---------------------------------------------------------------- MMAR


MMAR_ITEMS = [
    {"id": "mmar-1", "audio_path": "./audio/mmar-1.wav", "question": "How many beats per bar?",
     "choices": ["2", "3", "4", ""], "answer": "3", "modality": "music", "category": "Perception",
     "sub-category": "Meter", "language": "en", "source": "x", "url": "u", "timestamp": "0"},
    {"id": "mmar-2", "audio_path": "./audio/mmar-2.wav", "question": "Who speaks first?",
     "choices": ["the man", "the woman"], "answer": "the woman", "modality": "speech", "category": "Semantic",
     "sub-category": "Turn", "language": "en", "source": "x", "url": "u", "timestamp": "0"},
    {"id": "mmar-3", "audio_path": "./audio/mmar-3.wav", "question": "Which sound comes last?",
     "choices": ["a dog", "a bell", "rain", "a car", "a door", "thunder"], "answer": "thunder",
     "modality": "sound-music", "category": "Perception", "sub-category": "Order", "language": "en",
     "source": "x", "url": "u", "timestamp": "0"},
    {"id": "mmar-4", "audio_path": "./audio/mmar-4.wav", "question": "Which chord ends the piece?",
     "choices": ["A minor", "C major", "", ""], "answer": "A minor", "modality": "music", "category": "Semantic",
     "sub-category": "Harmony", "language": "en", "source": "x", "url": "u", "timestamp": "0"},
]  # fmt: skip


@pytest.fixture
def mmar(tmp_path):
    path = tmp_path / "MMAR-meta.jsonl"
    path.write_text("".join(json.dumps(i) + "\n" for i in MMAR_ITEMS))
    for item in MMAR_ITEMS:
        _clip(tmp_path / item["audio_path"])
    return path


def test_mmar_jsonl(mmar, capsys, tmp_path):
    bench = load_benchmark(mmar)
    assert bench.layout == "mmar" and bench.dropped_choices == 3 and bench.kind == "jsonl"
    for item, row in zip(MMAR_ITEMS, bench.rows, strict=True):
        kept = [c for c in item["choices"] if c]
        assert row.id == item["id"] and row.choices == kept
        assert row.choices[Choices(row.choices).answer_index(row.answer)] == item["answer"]
        assert row.prompt.startswith(item["question"] + "\n(A) " + kept[0])
        assert row.groups == {k: [item[k]] for k in ("modality", "category", "sub-category")}
    assert main(["check-data", str(mmar)]) == 0
    assert "mmar layout, 4 rows: 4 ok, 0 bad, 0 truncated, 3 empty trailing choices dropped" in capsys.readouterr().out

    exported = write_predictions(bench, {r.id: "<answer>(A)</answer>" for r in bench.rows}, tmp_path / "p.jsonl")
    lines = [json.loads(x) for x in exported.path.read_text().splitlines()]
    assert [{k: v for k, v in e.items() if k != "answer_prediction"} for e in lines] == MMAR_ITEMS
    assert [e["answer_prediction"] for e in lines] == ["2", "the man", "a dog", "A minor"]
    assert [mmau_credits(e, e["answer_prediction"]) for e in lines] == [False, False, False, True]


def test_bad_rows_are_named_and_skippable(mmar, capsys):
    items = [json.loads(x) for x in mmar.read_text().splitlines()]
    items[1]["choices"] = ["the man", "", "the woman"]  # an empty choice that is not trailing shifts the letters
    items[2]["answer"] = "a cat"
    items[3]["audio_path"] = "./audio/missing.wav"
    mmar.write_text("".join(json.dumps(i) + "\n" for i in items))
    with pytest.raises(DataError) as e:
        load_benchmark(mmar)
    message = str(e.value)
    assert "3 of 4 rows are bad" in message
    assert "row 'mmar-2': field 'choices'" in message and "row 'mmar-3': field 'answer'" in message
    assert "row 'mmar-4': field 'audio': file not found" in message
    assert [r.id for r in load_benchmark(mmar, bad_rows="skip").rows] == ["mmar-1"]
    assert main(["check-data", str(mmar)]) == 1
    assert main(["check-data", str(mmar), "--bad-rows", "skip"]) == 0
    assert "4 rows: 1 ok, 3 bad" in capsys.readouterr().out


# ---------------------------------------------------------------- MuChoMusic


def _muchomusic_audio(root: Path) -> None:
    for name in ("sdd/audio/01/1001.2min.mp3", "sdd/audio/02/1002.2min.mp3", "sdd/audio/00/415600.2min.mp3"):
        _clip(root / "data" / name)
    for name in ("[abcDEF12345]-[30-40].wav", "[xyz_987654]-[0-10].wav"):
        _clip(root / "data" / "musiccaps" / "audio" / name)


@pytest.fixture
def muchomusic(tmp_path):
    for name in ("layout_stub_muchomusic.csv", "layout_stub_prepare_prompts_output.json", "readme_example_item.json"):
        shutil.copy(BENCHMARKS / "muchomusic" / name, tmp_path / name)
    _muchomusic_audio(tmp_path)
    return tmp_path


def test_muchomusic_csv(muchomusic):
    path = muchomusic / "layout_stub_muchomusic.csv"
    source = list(csv.DictReader(path.open()))
    bench = load_benchmark(path)
    assert bench.layout == "muchomusic" and len(bench.rows) == len(source) == 6
    # ids: the track id, as MuChoMusic's own preparation gives it, made unique where a track has two questions
    assert [r.id for r in bench.rows] == ["1001", "1001#2", "1002", "abcDEF12345", "abcDEF12345#2", "xyz_987654"]
    assert [bench.source_id[r.id] for r in bench.rows] == ["1001", "1001", "1002", "abcDEF12345", "abcDEF12345",
                                                            "xyz_987654"]  # fmt: skip
    for item, row in zip(source, bench.rows, strict=True):
        options = [item["correct_answer"], *(item[f"distractor_{k}_answer"] for k in (1, 2, 3))]
        assert sorted(row.choices) == sorted(options)
        assert row.choices[Choices(row.choices).answer_index(row.answer)] == item["correct_answer"]
        assert row.prompt.startswith(item["question"] + "\n(A) ") and row.prompt.endswith(LETTER)
        assert row.groups["dataset"] == [item["dataset"]]
        assert row.groups["knowledge"] == ast.literal_eval(item["music_knowledge"])  # "['melody']" written as text
        assert row.groups["reasoning"] == ast.literal_eval(item["music_reasoning"])
        assert row.groups["genre"] == ([item["genre"]] if item["genre"] else [])
    # the right answer is not always first (the CSV lists it first)
    assert {Choices(r.choices).answer_index(r.answer) for r in bench.rows} != {0}
    assert [r.choices for r in load_benchmark(path).rows] == [r.choices for r in bench.rows]  # same order each time
    assert Path(bench.rows[3].audio).name == "[abcDEF12345]-[30-40].wav"


def test_muchomusic_prepared_prompts_and_their_scorer(muchomusic, tmp_path, capsys):
    path = muchomusic / "layout_stub_prepare_prompts_output.json"
    source = json.loads(path.read_text())
    bench = load_benchmark(path)
    assert bench.layout == "muchomusic_prompts"
    assert [r.id for r in bench.rows] == ["1001", "1001#2", "1002", "abcDEF12345", "abcDEF12345#2", "xyz_987654"]
    csv_rows = {r["question"]: r for r in csv.DictReader((muchomusic / "layout_stub_muchomusic.csv").open())}
    for item, row in zip(source, bench.rows, strict=True):
        right = item["answers"][item["answer_orders"].index(0)]
        question = item["prompt"].rsplit("Question:", 1)[-1].split("Options:")[0].strip()
        assert row.choices == item["answers"]  # the file's order: letters mean what they mean to its scorer
        assert row.choices[Choices(row.choices).answer_index(row.answer)] == right
        assert row.prompt.startswith(question + "\n(A) ") and "Four on the floor" not in row.prompt
        assert right == csv_rows[question]["correct_answer"]  # the prompt file was prepared from the CSV
        assert row.groups == {"dataset": [item["dataset"]], "genre": [item["genre"]] if item["genre"] else [],
                              "knowledge": item["knowledge"], "reasoning": item["reasoning"]}  # fmt: skip
        assert Path(row.audio) == muchomusic / item["audio_path"]

    # a run answering each right choice by its text exports letters, which MuChoMusic's scorer reads first
    right = {r.id: f"<answer>{r.choices[r.answer]}</answer>" for r in bench.rows}
    exported = json.loads(write_predictions(bench, right, tmp_path / "right.json").path.read_text())
    assert [{k: v for k, v in e.items() if k != "model_output"} for e in exported] == [
        {k: v for k, v in i.items() if k != "model_output"} for i in source
    ]
    picked = [muchomusic_response(e["model_output"], e["answers"]) for e in exported]
    assert picked == [e["answer_orders"].index(0) for e in exported]
    # the choice's text itself would not do: "drums" is the text, but "Drums"/"Calm" carry a capital letter
    wrong = {r.id: f"<answer>{r.choices[(r.answer + 1) % 4]}</answer>" for r in bench.rows}
    exported = json.loads(write_predictions(bench, wrong, tmp_path / "wrong.json").path.read_text())
    assert all(muchomusic_response(e["model_output"], e["answers"]) != e["answer_orders"].index(0) for e in exported)

    assert main(["check-data", str(path)]) == 0
    assert main(["check-data", str(muchomusic / "readme_example_item.json")]) == 0
    assert "muchomusic_prompts layout, 1 rows: 1 ok" in capsys.readouterr().out


def test_audio_root_and_unknown_layouts(muchomusic, tmp_path):
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copy(muchomusic / "layout_stub_prepare_prompts_output.json", moved / "prompts.json")
    with pytest.raises(DataError, match="file not found"):
        load_benchmark(moved / "prompts.json")
    assert len(load_benchmark(moved / "prompts.json", audio_root=muchomusic).rows) == 6

    odd = tmp_path / "odd.csv"
    odd.write_text("q,opts,gold,wav\nWhich?,\"['x', 'y']\",y,a.wav\n")
    with pytest.raises(LayoutError, match="no known layout has the fields"):
        read_benchmark(odd)
    bench = read_benchmark(odd, fields="question=q,choices=opts,answer=gold,audio=wav")
    assert bench.rows[0].choices == ["x", "y"] and bench.rows[0].answer == "y"
    with pytest.raises(LayoutError, match="names fields no item has"):
        read_benchmark(odd, fields="question=q,choices=options,answer=gold,audio=wav")
    with pytest.raises(LayoutError, match="names fields no item has: \\['mood'\\]"):
        read_benchmark(odd, fields="question=q,choices=opts,answer=gold,audio=wav,group=mood")
    with pytest.raises(LayoutError, match="gives 'audio' twice"):
        read_benchmark(odd, fields="question=q,choices=opts,answer=gold,audio=wav,audio=x")
    with pytest.raises(LayoutError, match="expected KEY=FIELD"):
        read_benchmark(odd, fields="question=q,choices=opts,answer=gold,audio=wav,colour=red")


def test_eval_command_end_to_end_with_predictions(mmar, tiny_checkpoint, tmp_path, capsys):
    """``grpo-audio eval`` on an MMAR JSONL with a bad row skipped: report by the benchmark's axes, and the scored
    source items written back with ``answer_prediction``, the skipped one left out and said so."""
    items = [json.loads(x) for x in mmar.read_text().splitlines()]
    items[2]["audio_path"] = "./audio/missing.wav"
    mmar.write_text("".join(json.dumps(i) + "\n" for i in items))
    model = str(tiny_checkpoint("music_flamingo"))
    out, predictions = tmp_path / "report.json", tmp_path / "pred.jsonl"
    args = ["eval", f"model={model}", f"data={mmar}", "engine=hf", "max_new_tokens=3", "bad_rows=skip"]
    assert main([*args, f"out={out}", f"predictions_out={predictions}", "answer_format=text"]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert "mmar layout: 3 rows" in printed and "by modality:" in printed
    assert [r["id"] for r in report["results"]] == ["mmar-1", "mmar-2", "mmar-4"]
    assert set(report["per_group"]) == {"modality", "category", "sub-category"}
    assert sum(g["n"] for g in report["per_group"]["modality"].values()) == 3
    lines = [json.loads(x) for x in predictions.read_text().splitlines()]
    assert [{k: v for k, v in e.items() if k != "answer_prediction"} for e in lines] == items[:2] + items[3:]
    assert all(isinstance(e["answer_prediction"], str) for e in lines)
    right = sum(bool(r["correct"]) for r in report["results"])
    head = f"predictions (answer_prediction) written to {predictions}: the 3 scored items of 4 (the others left out)"
    assert head + "\nwarning: 1 of 4 items were not scored (skipped as bad rows: 1; beyond max_rows: 0)" in printed
    assert f"on all 4 items it would report {right / 4:.3f} ({right} right)" in printed


def test_eval_export_leaves_out_what_it_did_not_score_and_says_what_the_official_scorer_would_report(
    mmar, tmp_path, capsys, monkeypatch
):
    """``bad_rows=skip`` and ``max_rows``: of MMAR's 4 items, one is a bad row (its clip is gone) and one lies beyond
    ``max_rows=2``; of the 2 scored, grpo-audio counts 1 right (0.500). The export holds the 2 scored items, so that
    MMAU/MMAR's rule scores that file 1 of 2 (0.500), as grpo-audio does; the message says the official scorer,
    given every item with the unscored ones empty, would report 1 of 4 (0.250), and a file kept whole scores just
    that under the rule."""
    import grpo_audio.eval
    from grpo_audio.eval import score

    items = [json.loads(x) for x in mmar.read_text().splitlines()]
    items[1]["audio_path"] = "./audio/missing.wav"  # mmar-2: a bad row, skipped
    mmar.write_text("".join(json.dumps(i) + "\n" for i in items))
    said = {"mmar-1": "<answer>(B)</answer>", "mmar-3": "<answer>(A)</answer>"}  # "3": right; "a dog": wrong
    monkeypatch.setattr(  # what the command imports when it runs
        grpo_audio.eval, "evaluate_model", lambda model, rows, **_: score(rows, [said[r.id] for r in rows])
    )
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["MusicFlamingoForConditionalGeneration"]}))
    predictions = tmp_path / "pred.jsonl"
    args = ["eval", f"model={model}", f"data={mmar}", "bad_rows=skip", "max_rows=2", f"predictions_out={predictions}"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "mcq_accuracy   0.500" in printed  # grpo-audio's number: 1 of the 2 scored
    exported = [json.loads(x) for x in predictions.read_text().splitlines()]
    assert [e["id"] for e in exported] == ["mmar-1", "mmar-3"]
    assert [e["answer_prediction"] for e in exported] == ["3", "a dog"]
    assert [mmau_credits(e, e["answer_prediction"]) for e in exported] == [True, False]  # the official rule: 1 / 2
    assert (
        f"predictions (answer_prediction) written to {predictions}: the 2 scored items of 4 (the others left out)\n"
        "warning: 2 of 4 items were not scored (skipped as bad rows: 1; beyond max_rows: 1). The official scorer "
        "counts an unscored item as wrong: on all 4 items it would report 0.250 (1 right), where grpo-audio reports "
        "0.500 (1 of the 2 scored items). Left out of this file, the unscored items do not lower the official "
        "scorer's number on it, which is then over the 2 scored items only, not the benchmark's full set.\n"
    ) in printed

    # Every item kept (the library's keep_unscored): the unscored ones empty, and the rule gives 1 of 4.
    bench = load_benchmark(mmar, bad_rows="skip")
    kept = write_predictions(
        bench, {r: said[r] for r in ("mmar-1", "mmar-3")}, tmp_path / "all.jsonl", keep_unscored=True
    )
    whole = [json.loads(x) for x in kept.path.read_text().splitlines()]
    assert [e["answer_prediction"] for e in whole] == ["3", "", "a dog", ""]
    assert sum(mmau_credits(e, e["answer_prediction"]) for e in whole) / len(whole) == 0.25
    assert "This file holds them with an empty prediction" in kept.message(right=1)
    assert "on all 4 items it would report 0.250 (1 right)" in kept.message(right=1)


# ---------------------------------------------------------------- files as users have them


def test_relative_paths_from_another_folder(muchomusic, monkeypatch):
    """A MuChoMusic CSV named by a relative path, from its parent folder, with and without --audio-root."""
    monkeypatch.chdir(muchomusic.parent)
    rel = Path(muchomusic.name)
    assert len(load_benchmark(rel / "layout_stub_muchomusic.csv").rows) == 6
    assert len(load_benchmark(rel / "layout_stub_muchomusic.csv", audio_root=rel).rows) == 6
    assert main(["check-data", str(rel / "layout_stub_prepare_prompts_output.json")]) == 0


def test_manifest_kinds_and_predictions_on_the_right_items(tmp_path):
    """A manifest as JSONL (with a bad JSON line and a row with an unknown field, skipped), as a pretty-printed JSON
    list, and with a byte-order mark: every row read, and each prediction written on its own item."""
    _clip(tmp_path / "a.wav")
    rows = [
        {"id": "m1", "audio": "a.wav", "prompt": "Q1", "choices": ["x", "y"], "answer": "x"},
        {"id": "m2", "audio": "a.wav", "prompt": "Q2", "choices": ["x", "y"], "answer": "x", "colour": "red"},
        {"id": "m3", "audio": "a.wav", "prompt": "Q3", "choices": ["x", "y"], "answer": "y"},
    ]
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[1]) + "\n{oops\n" + json.dumps(rows[2]) + "\n")
    bench = load_benchmark(jsonl, bad_rows="skip")
    assert [r.id for r in bench.rows] == ["m1", "m3"]
    export = write_predictions(bench, {"m1": "(B)", "m3": "(B)"}, tmp_path / "p.jsonl")
    assert [json.loads(x)["id"] for x in export.path.read_text().splitlines()] == ["m1", "m3"]  # the scored ones
    assert (export.items, export.scored, export.bad, export.not_asked) == (4, 2, 2, 0)  # m2 and the line not JSON
    kept = write_predictions(bench, {"m1": "(B)", "m3": "(B)"}, tmp_path / "p.jsonl", keep_unscored=True)
    lines = kept.path.read_text().splitlines()
    assert [json.loads(x)["prediction"] for x in (lines[0], lines[1], lines[2])] == ["y", "", "y"]
    assert len(lines) == 3  # the line that is not JSON has no item to write back

    listed = tmp_path / "m.json"
    listed.write_text(json.dumps([rows[0], rows[2]], indent=2))
    assert [r.id for r in load_benchmark(listed).rows] == ["m1", "m3"]
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + (json.dumps(rows[0]) + "\n" + json.dumps(rows[2]) + "\n").encode())
    assert [r.id for r in load_benchmark(bom).rows] == ["m1", "m3"]


def test_ids_extra_cells_empty_cells_and_values(tmp_path, capsys):
    _clip(tmp_path / "a.wav")
    base = {"audio_id": "a.wav", "question": "Q?", "choices": ["x", "y"], "answer": "x", "task": "music"}
    items = [{**base, "id": "ok"}, {**base, "id": "ok"}, {**base, "id": "ok#2"}, {**base, "id": ""},
             {**base, "id": None}, {**base, "id": 7, "choices": [1, 2.5, 3], "answer": 2.5},
             {**base, "id": "b", "choices": ["True", "False"], "answer": False},
             {**base, "id": "none", "choices": []}]  # fmt: skip
    path = tmp_path / "mmau.json"
    path.write_text(json.dumps(items))
    bench = load_benchmark(path, bad_rows="skip")
    assert [r.id for r in bench.rows] == ["ok", "ok#3", "ok#2", "3", "4", "7", "b"]
    assert [bench.source_id[r.id] for r in bench.rows] == ["ok", "ok", "ok#2", "3", "4", "7", "b"]
    assert [r.choices[Choices(r.choices).answer_index(r.answer)] for r in bench.rows[5:]] == ["2.5", "False"]
    assert main(["check-data", str(path)]) == 1
    assert "BAD  none: choices: missing or empty" in capsys.readouterr().out

    csv_path = tmp_path / "g.csv"
    csv_path.write_text("q,opts,gold,wav\nQ1?,\"['x','y']\",x,a.wav,EXTRA\nQ2?,\"['x','y']\",y,a.wav\n")
    fields = "question=q,choices=opts,answer=gold,audio=wav"
    bench = load_benchmark(csv_path, fields=fields, bad_rows="skip")
    assert [b.id for b in bench.bad] == ["row 1"] and "1 more cells than the header" in bench.bad[0].reason
    out = write_predictions(bench, {r.id: "(B)" for r in bench.rows}, tmp_path / "p.csv").path
    assert [(r["q"], r["prediction"]) for r in csv.DictReader(out.open())] == [("Q2?", "y")]
    out = write_predictions(bench, {r.id: "(B)" for r in bench.rows}, tmp_path / "p.csv", keep_unscored=True).path
    assert [r["prediction"] for r in csv.DictReader(out.open())] == ["", "y"]

    stub = list(csv.DictReader((BENCHMARKS / "muchomusic" / "layout_stub_muchomusic.csv").open()))
    for row in stub:
        row["distractor_3_answer"] = ""
    short = tmp_path / "short.csv"
    with short.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(stub[0]))
        writer.writeheader()
        writer.writerows(stub)
    _muchomusic_audio(tmp_path)
    assert {len(r.choices) for r in load_benchmark(short).rows} == {3}  # every row alike, wherever "" would fall


def test_empty_and_single_object_files(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("\n")
    with pytest.raises(LayoutError, match="the file is empty"):
        read_benchmark(empty)
    (tmp_path / "none.json").write_text("[]")
    with pytest.raises(LayoutError, match="holds no items"):
        read_benchmark(tmp_path / "none.json")
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"id": "q", "audio_id": "a.wav", "question": "Q?", "choices": ["x", "y"], "answer": "y"},
                              indent=2))  # fmt: skip
    assert [r.id for r in read_benchmark(one).rows] == ["q"]
    with pytest.raises(LayoutError, match="holds no items"):  # the user's: one line, exit status 2
        main(["check-data", str(tmp_path / "none.json")])


def test_letter_export_keeps_the_letter_of_a_repeated_text(tmp_path):
    item = {"id": 1, "prompt": "Question: Which?\n Options: (A) piano (B) violin (C) piano (D) drums \n The correct "
            "answer is: ", "answers": ["piano", "violin", "piano", "drums"], "answer_orders": [1, 2, 0, 3],
            "dataset": "sdd", "genre": "", "reasoning": [], "knowledge": [], "audio_path": "a.wav"}  # fmt: skip
    path = tmp_path / "p.json"
    path.write_text(json.dumps([item]))
    bench = read_benchmark(path)
    exported = json.loads(write_predictions(bench, {"1": "<answer>C</answer>"}, tmp_path / "o.json").path.read_text())
    assert exported[0]["model_output"] == "C"
    assert muchomusic_response("C", item["answers"]) == item["answer_orders"].index(0)


def test_eval_with_no_good_row_stops_before_the_model(tmp_path, capsys):
    path = tmp_path / "allbad.json"
    path.write_text(json.dumps([{"id": "q", "audio_id": "gone.wav", "question": "Q?", "choices": ["x", "y"],
                                 "answer": "x"}]))  # fmt: skip
    model = tmp_path / "model"
    model.mkdir()
    config = {"architectures": ["MusicFlamingoForConditionalGeneration"]}
    (model / "config.json").write_text(json.dumps(config))  # no weights: loading the model would fail
    # Each the user's: one line naming the cause (exit status 2 from the executable), before the model loads.
    with pytest.raises(ConfigError, match="no row passed validation"):
        main(["eval", f"model={model}", f"data={path}", "bad_rows=skip"])
    with pytest.raises(DataError, match="field 'audio': file not found"):
        main(["eval", f"model={model}", f"data={path}"])
    assert "field 'audio': file not found" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        main(["eval", f"model={model}", f"data={tmp_path / 'nope.json'}"])


@pytest.mark.parametrize(
    "name",
    [
        "mmau-test-mini.json",
        "MMAR-meta.jsonl",
        "layout_stub_muchomusic.csv",
        "layout_stub_prepare_prompts_output.json",
    ],
)
def test_every_layout_through_check_data_and_eval(name, mmau, muchomusic, tmp_path, tiny_checkpoint, capsys):
    """``check-data`` then ``eval`` (the first rows, a tiny model) on each benchmark layout: the rows evaluated are
    the file's first items, reported on the benchmark's own axes."""
    path = {"mmau-test-mini.json": mmau[0], "MMAR-meta.jsonl": tmp_path / name}.get(name, muchomusic / name)
    if name == "MMAR-meta.jsonl":
        path.write_text("".join(json.dumps(i) + "\n" for i in MMAR_ITEMS))
        for item in MMAR_ITEMS:
            _clip(tmp_path / item["audio_path"])
    bench = read_benchmark(path)
    assert main(["check-data", str(path)]) == 0
    assert f"{bench.layout} layout, {len(bench.rows)} rows: {len(bench.rows)} ok, 0 bad" in capsys.readouterr().out
    model = str(tiny_checkpoint("music_flamingo"))
    out = tmp_path / "report.json"
    args = ["eval", f"model={model}", f"data={path}", "engine=hf", "max_new_tokens=3", "max_rows=2", f"out={out}"]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert f"{bench.layout} layout: 2 rows of {len(bench.rows)}" in capsys.readouterr().out
    assert [r["id"] for r in report["results"]] == [r.id for r in bench.rows[:2]]
    assert [r["answer"] for r in report["results"]] == [r.answer for r in bench.rows[:2]]
    axes = {a for r in bench.rows[:2] for a, v in r.groups.items() if v}
    assert set(report["per_group"]) == axes and axes

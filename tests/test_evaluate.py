"""Evaluation: scores per question type checked by hand, the MuChoMusic / MMAU layout, the `eval` command."""

from __future__ import annotations

import json

import soundfile as sf

from grpo_audio.cli import main
from grpo_audio.data.schema import Row
from grpo_audio.evaluate import load_benchmark_json, score
from tests.conftest import sine

CHOICES = ["C major", "A minor", "G major", "E minor"]


def _row(i, task, answer, choices=CHOICES):
    return Row(id=f"q{i}", prompt="Which key?", audio="a.wav", task=task, choices=choices, answer=answer)


def test_score_by_hand():
    rows = [
        _row(0, "key", "A minor"),
        _row(1, "key", "A minor"),
        _row(2, "key", "C major"),
        _row(3, "chord", "G major"),
        _row(4, "key", "C major", choices=None),
    ]
    completions = [
        "<think>..</think><answer>A minor</answer>",  # right
        "<answer>D minor</answer>",  # names no choice: wrong, not a pick
        "<answer>C major or G major</answer>",  # names two: wrong, not a pick
        "<answer>C major</answer>",  # one choice, the wrong one
        "<answer>C major</answer>",  # open answer, right, no think block
    ]
    out = score(rows, completions)
    assert out["mcq_accuracy"] == 1 / 4
    assert out["choice_rate"] == 2 / 4
    assert out["open_accuracy"] == 1.0
    assert out["format_rate"] == 1 / 5
    assert out["per_task"] == {"mcq/chord": 0.0, "mcq/key": 1 / 3, "open/key": 1.0}
    assert out["counts"] == {"mcq/chord": 1, "mcq/key": 3, "open/key": 1}
    assert [r["picked_one_choice"] for r in out["results"]] == [True, False, False, True, None]


def test_benchmark_json_layout(tmp_path):
    (tmp_path / "audio").mkdir()
    sf.write(tmp_path / "audio" / "x.wav", sine(1.0), 16000)
    items = [
        {"id": "m1", "audio_path": "audio/x.wav", "question": "Which instrument?", "choices": ["piano", "violin"],
         "answer": "violin", "category": "instrument"},
        {"audio": "audio/x.wav", "prompt": "Which genre?", "options": ["jazz", "rock", "pop"], "label": "C",
         "question_type": "genre"},
    ]  # fmt: skip
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(items))
    rows = load_benchmark_json(path)
    assert [r.id for r in rows] == ["m1", "1"]
    assert [r.task for r in rows] == ["instrument", "genre"]
    assert rows[0].prompt.startswith("Which instrument?\n(A) piano\n(B) violin\n")
    assert rows[1].choices == ["jazz", "rock", "pop"] and rows[1].answer == "C"
    assert rows[0].audio == str(tmp_path / "audio" / "x.wav")
    think = load_benchmark_json(path, think=True)
    assert think[0].prompt.endswith("<answer></answer>.")
    out = score(rows, ["<answer>(B)</answer>", "<answer>pop</answer>"])  # a letter or the choice's text
    assert out["mcq_accuracy"] == 1.0 and out["per_task"] == {"mcq/genre": 1.0, "mcq/instrument": 1.0}


def test_eval_command_on_a_benchmark_json(tmp_path, tiny_checkpoint, capsys):
    (tmp_path / "audio").mkdir()
    sf.write(tmp_path / "audio" / "x.wav", sine(1.0), 16000)
    items = [
        {"id": f"m{i}", "audio_path": "audio/x.wav", "question": "Which key?", "choices": CHOICES,
         "answer": CHOICES[i], "category": "key"}
        for i in range(3)
    ]  # fmt: skip
    (tmp_path / "bench.json").write_text(json.dumps(items))
    model = str(tiny_checkpoint("music_flamingo"))
    args = ["eval", model, str(tmp_path / "bench.json"), "--engine", "hf", "--max-new-tokens", "4"]
    assert main([*args, "--out", str(tmp_path / "r.json")]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())
    assert f"mcq_accuracy   {report['mcq_accuracy']:.3f}" in printed
    assert f"choice_rate    {report['choice_rate']:.3f}" in printed
    assert "mcq/key" in printed and report["counts"] == {"mcq/key": 3}
    assert [r["id"] for r in report["results"]] == ["m0", "m1", "m2"]

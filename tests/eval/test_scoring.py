"""Scoring: scores per question type checked by hand, the MuChoMusic / MMAU layout, the `eval` command."""

from __future__ import annotations

import json

import soundfile as sf
import torch

from grpo_audio.cli import main
from grpo_audio.data.benchmarks import load_benchmark
from grpo_audio.data.schema import Row
from grpo_audio.eval import GroupScore, score
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
    assert out.mcq_accuracy == 1 / 4
    assert out.choice_rate == 2 / 4
    assert out.open_accuracy == 1.0
    assert out.format_rate == 1 / 5
    assert out.per_task == {"mcq/chord": 0.0, "mcq/key": 1 / 3, "open/key": 1.0}
    assert out.counts == {"mcq/chord": 1, "mcq/key": 3, "open/key": 1}
    assert [r.picked_one_choice for r in out.results] == [True, False, False, True, None]


def test_generic_layout_through_a_field_map(tmp_path):
    """A file of no known layout, read with a field map: prompts lettered with the requested instruction,
    relative audio from the file's folder, an integer answer (0 is an index), the group axes of the map."""
    (tmp_path / "audio").mkdir()
    sf.write(tmp_path / "audio" / "x.wav", sine(1.0), 16000)
    items = [
        {"uid": "m1", "wav": "audio/x.wav", "q": "Which instrument?", "opts": ["piano", "violin"], "gold": 0,
         "kind": "instrument"},
        {"uid": "m2", "wav": "audio/x.wav", "q": "Which genre?", "opts": ["jazz", "rock", "pop"], "gold": "C",
         "kind": "genre"},
    ]  # fmt: skip
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(items))
    fields = "question=q,choices=opts,answer=gold,audio=wav,group=kind,id=uid"
    bench = load_benchmark(path, fields=fields)
    rows = bench.rows
    assert bench.layout == "generic" and [r.id for r in rows] == ["m1", "m2"]
    assert [r.groups for r in rows] == [{"kind": ["instrument"]}, {"kind": ["genre"]}]
    assert rows[0].prompt == "Which instrument?\n(A) piano\n(B) violin\nAnswer with the letter of the correct choice."
    assert rows[1].choices == ["jazz", "rock", "pop"] and rows[1].answer == "C"
    assert rows[0].audio == str(tmp_path / "audio" / "x.wav")
    think = load_benchmark(path, fields=fields, think=True, answer_format="text").rows
    assert "Answer with the text of the correct choice." in think[0].prompt
    assert think[0].prompt.endswith("<answer></answer>.")
    out = score(rows, ["<answer>(A)</answer>", "<answer>pop</answer>"])  # a letter or the choice's text
    assert out.mcq_accuracy == 1.0 and out.per_group == {
        "kind": {"genre": GroupScore(accuracy=1.0, n=1), "instrument": GroupScore(accuracy=1.0, n=1)}
    }


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
    args = ["eval", f"model={model}", f"data={tmp_path / 'bench.json'}", "engine=hf", "max_new_tokens=4"]
    assert main([*args, f"out={tmp_path / 'r.json'}"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())
    assert f"mcq_accuracy   {report['mcq_accuracy']:.3f}" in printed
    assert f"choice_rate    {report['choice_rate']:.3f}" in printed
    assert "mcq/key" in printed and report["counts"] == {"mcq/key": 3}
    assert [r["id"] for r in report["results"]] == ["m0", "m1", "m2"]


def test_evaluation_reuses_each_clips_audio_across_rows_and_calls(tmp_path, tiny_checkpoint, monkeypatch):
    """With an audio cache (as the recipe passes it), each clip's log-mel features and encoder outputs are
    computed once: not again for a second question about the clip, nor in a later call (the next stage's
    evaluation). A checkpoint whose encoder differs is encoded again. Completions equal the uncached ones."""
    from transformers import AutoProcessor, WhisperFeatureExtractor

    from grpo_audio.audio_cache import AudioCache
    from grpo_audio.eval import evaluate_model
    from grpo_audio.models import get_family

    family = get_family("music_flamingo")
    model_dir = tiny_checkpoint("music_flamingo")
    model = family.model_class().from_pretrained(model_dir)
    encoder_class = type(family.audio_encoder(model))
    computed = {"windows": 0, "encoded": 0}
    extract, encode = WhisperFeatureExtractor.__call__, encoder_class.forward

    def counting_extract(self, raw_speech, *args, **kwargs):
        computed["windows"] += len(raw_speech) if isinstance(raw_speech, list) else 1
        return extract(self, raw_speech, *args, **kwargs)

    def counting_encode(self, input_features, *args, **kwargs):
        computed["encoded"] += input_features.shape[0]
        return encode(self, input_features, *args, **kwargs)

    monkeypatch.setattr(WhisperFeatureExtractor, "__call__", counting_extract)
    monkeypatch.setattr(encoder_class, "forward", counting_encode)

    (tmp_path / "audio").mkdir()
    for name, freq, seconds in (("a", 440.0, 1.0), ("b", 660.0, 1.5)):
        sf.write(tmp_path / "audio" / f"{name}.wav", sine(seconds, freq), 16000)
    items = [
        {"id": f"{clip}{i}", "audio_path": f"audio/{clip}.wav", "question": "Which key?", "choices": CHOICES,
         "answer": CHOICES[i], "category": "key"}
        for clip in "ab" for i in range(2)
    ]  # fmt: skip
    (tmp_path / "bench.json").write_text(json.dumps(items))
    rows = load_benchmark(tmp_path / "bench.json", family).rows

    def run(directory, stores=None):
        computed.update(windows=0, encoded=0)
        out = evaluate_model(directory, rows, engine="hf", max_new_tokens=6, audio_cache=stores)
        return [r.completion for r in out.results], dict(computed)

    plain, work = run(model_dir)
    assert work == {"windows": 4, "encoded": 4}  # one per row
    stores = AudioCache()
    assert run(model_dir, stores) == (plain, {"windows": 2, "encoded": 2})  # one per clip
    assert run(model_dir, stores) == (plain, {"windows": 0, "encoded": 0})  # the next stage: nothing recomputed

    with torch.no_grad():
        next(family.audio_encoder(model).parameters()).add_(0.5)
    model.save_pretrained(tmp_path / "changed")
    AutoProcessor.from_pretrained(model_dir).save_pretrained(tmp_path / "changed")
    changed, work = run(tmp_path / "changed", stores)
    assert work == {"windows": 0, "encoded": 2}  # same front end, another encoder
    assert run(tmp_path / "changed") == (changed, {"windows": 4, "encoded": 4})

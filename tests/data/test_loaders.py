"""Loaders: a manifest with every kind of bad row reports all of them, good rows still load."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import soundfile as sf

from grpo_audio.cli import main
from grpo_audio.data.loaders import from_hf_dataset, from_records, load_manifest
from grpo_audio.data.schema import DataError

SR = 16000


def tone(seconds=1.0, sr=SR, channels=1):
    x = 0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * sr)) / sr)
    return (np.stack([x] * channels, 1) if channels > 1 else x).astype(np.float32)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """Two good rows and one row of each bad kind the issue lists (plus a good 6-channel 48 kHz clip)."""
    d = tmp_path_factory.mktemp("manifest")
    (d / "clips").mkdir()
    sf.write(d / "clips/good.wav", tone(2.0), SR)
    sf.write(d / "clips/six.wav", tone(1.0, 48000, 6), 48000)
    (d / "clips/empty.wav").write_bytes(b"")
    (d / "clips/text.wav").write_text("hello, I am text\n" * 10)
    sf.write(d / "clips/a.flac", tone(3.0), SR)
    flac = (d / "clips/a.flac").read_bytes()
    (d / "clips/trunc.flac").write_bytes(flac[: len(flac) // 2])
    sf.write(d / "clips/nan.wav", np.array([0.1, np.nan] * 800, np.float32), SR, subtype="FLOAT")
    sf.write(d / "clips/zero.wav", np.zeros(0, np.float32), SR)
    # 30 minutes at 8 kHz (kept small on disk); Music Flamingo's limit is 20 minutes.
    sf.write(d / "clips/long.wav", np.zeros(30 * 60 * 8000, np.int16), 8000, subtype="PCM_16")
    rows = [
        {"id": "good", "audio": "clips/good.wav", "prompt": "Which chord?", "choices": ["C", "D"], "answer": "B"},
        {"id": "six", "audio": "clips/six.wav", "prompt": "Describe it."},
        {"id": "missing", "audio": "clips/nope.wav", "prompt": "Q"},
        {"id": "empty", "audio": "clips/empty.wav", "prompt": "Q"},
        {"id": "text", "audio": "clips/text.wav", "prompt": "Q"},
        {"id": "trunc", "audio": "clips/trunc.flac", "prompt": "Q"},
        {"id": "nan", "audio": "clips/nan.wav", "prompt": "Q"},
        {"id": "zero", "audio": "clips/zero.wav", "prompt": "Q"},
        {"id": "long", "audio": "clips/long.wav", "prompt": "Q"},
        {"id": "noprompt", "audio": "clips/good.wav"},
        {
            "id": "twoaudio",
            "audio": "clips/good.wav",
            "prompt": [
                {"role": "user", "content": [{"type": "audio"}, {"type": "audio"}, {"type": "text", "text": "Q"}]}
            ],
        },
        {"id": "literal", "audio": "clips/good.wav", "prompt": "<sound> Which chord?"},
        {"id": "badanswer", "audio": "clips/good.wav", "prompt": "Q", "choices": ["C", "D"], "answer": "E"},
        {"id": "typo", "audio": "clips/good.wav", "prompt": "Q", "anwser": "x"},
    ]
    path = d / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    return path


EXPECTED_BAD = {
    "missing": "file not found",
    "empty": "file is empty",
    "text": "not a readable audio file",
    "trunc": "not a readable audio file",
    "nan": "NaN or Inf",
    "zero": "audio is empty",
    "noprompt": "prompt",
    "twoaudio": "has 2 audio placeholders",
    "literal": "has 2 audio placeholders",
    "badanswer": "neither one of the choices",
    "typo": "unknown field(s) ['anwser']",
    "line 15": "not valid JSON",
}


def test_raise_lists_every_bad_row(manifest):
    with pytest.raises(DataError) as e:
        load_manifest(manifest, family="music_flamingo")
    msg = str(e.value)
    assert f"{len(EXPECTED_BAD)} of 15 rows are bad" in msg
    for rid, reason in EXPECTED_BAD.items():
        line = next(x for x in msg.splitlines() if f"row '{rid}'" in x)
        assert reason in line, (rid, line)
    assert "row 'good'" not in msg and "row 'six'" not in msg and "row 'long'" not in msg


def test_skip_keeps_good_rows_and_counts(manifest, caplog):
    with caplog.at_level(logging.WARNING):
        rows = load_manifest(manifest, family="music_flamingo", bad_rows="skip")
    assert [r.id for r in rows] == ["good", "six", "long"]
    assert "skipped 12 of 15 rows" in caplog.text
    assert "truncated 1 clips to the 1200 s limit" in caplog.text
    six = rows[1].load_audio(__import__("grpo_audio.models", fromlist=["x"]).get_family("music_flamingo"))
    assert six.wave.ndim == 1 and six.sampling_rate == 16000 and len(six.wave) == 16000


def test_thirty_minute_file_truncate_or_reject(manifest):
    from grpo_audio.models import get_family

    rows = load_manifest(manifest, family="music_flamingo", bad_rows="skip")
    long = next(r for r in rows if r.id == "long")
    clip = long.load_audio(get_family("music_flamingo"))
    assert clip.truncated and clip.seconds == 1200.0 and clip.original_seconds == 1800.0
    with pytest.raises(
        DataError, match="row 'long': field 'audio': audio is 1800.0 s, longer than the limit of 1200 s"
    ):
        load_manifest(manifest, family="music_flamingo", long_audio="reject", bad_rows="raise")
    # Audio Flamingo 3's limit is 10 minutes.
    af3 = long.load_audio(get_family("audio_flamingo3"))
    assert af3.seconds == 600.0


def test_truncated_audio_gives_matching_placeholders_and_features(tmp_path):
    """A clip over the limit is cut before the processor: audio tokens in the prompt match the features."""
    from transformers import AutoProcessor

    from grpo_audio.models import get_family
    from grpo_audio.models.tiny import build_tiny_model

    fam = get_family("audio_flamingo3")
    path = build_tiny_model(fam.name, tmp_path / "m")
    proc = AutoProcessor.from_pretrained(path)
    rows = from_records(
        [{"id": "x", "audio": tone(75.0), "sampling_rate": SR, "prompt": "Q"}], family=fam, max_audio_seconds=45.0
    )
    clip = rows[0].load_audio(fam, max_seconds=45.0)
    out = fam.process(proc, [fam.render_prompt(proc, rows[0].messages(fam))], [clip.wave])
    n_tokens = int((out["input_ids"] == proc.tokenizer.convert_tokens_to_ids("<sound>")).sum())
    windows = out["input_features"].shape[0]
    assert windows == 2 and n_tokens == 750 + 375  # 30 s + 15 s


def test_check_data_cli(manifest, capsys, tmp_path):
    assert main(["check-data", str(manifest), "--family", "music_flamingo"]) == 1
    out = capsys.readouterr().out
    assert "BAD  nan: audio: audio contains" in out and "ok   good: 2.0 s" in out
    assert "ok   long: 1800.0 s  (truncated to 1200 s), 30000 audio tokens" in out  # the family's limit and count
    assert "15 rows: 3 ok, 12 bad, 1 truncated (limit 1200 s)" in out
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"id": "g", "audio": str(manifest.parent / "clips/good.wav"), "prompt": "Q"}) + "\n")
    assert main(["check-data", str(good)]) == 0


def test_records_and_hf_dataset(manifest):
    from datasets import Audio, Dataset

    rows = from_records([{"id": "a", "audio": tone(1.0), "sampling_rate": SR, "prompt": "Q", "answer": "x"}])
    assert rows[0].answer == "x"
    with pytest.raises(DataError, match="row 'item 0': field 'audio': an audio array needs its sampling_rate"):
        from_records([{"audio": tone(1.0), "prompt": "Q"}])

    clips = manifest.parent / "clips"
    ds = Dataset.from_dict(
        {
            "audio": [str(clips / "good.wav"), str(clips / "nan.wav")],
            "question": ["Which chord?", "Tempo?"],
            "label": ["C major", "120"],
            "id": ["h1", "h2"],
            "extra": [1, 2],
        }
    ).cast_column("audio", Audio())
    rows = from_hf_dataset(ds, column_map={"question": "prompt", "label": "answer"}, bad_rows="skip")
    assert [r.id for r in rows] == ["h1"] and rows[0].prompt == "Which chord?" and rows[0].answer == "C major"
    assert rows[0].audio == str(clips / "good.wav")  # read undecoded (a path here), decoded by soundfile
    in_memory = Dataset.from_dict(
        {"audio": [{"bytes": (clips / "good.wav").read_bytes(), "path": None}], "prompt": ["Q"]}
    ).cast_column("audio", Audio())
    rows = from_hf_dataset(in_memory)
    assert isinstance(rows[0].audio, bytes) and rows[0].id == "item 0"
    with pytest.raises(DataError, match="row 'h2': field 'audio': audio contains"):
        from_hf_dataset(ds, column_map={"question": "prompt", "label": "answer"})

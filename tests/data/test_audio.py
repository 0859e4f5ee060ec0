"""Audio decoding: formats, downmix, resampling, and every failure naming the row and field."""

from __future__ import annotations

import io
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from grpo_audio.audio import AudioError, load_audio
from grpo_audio.data.schema import BAD_ROWS, DataError, Row, apply_policy, validate_rows

SR = 16000


def tone(freq=440.0, seconds=1.0, sr=SR, channels=1):
    t = np.arange(int(seconds * sr)) / sr
    x = 0.4 * np.sin(2 * np.pi * freq * t)
    return np.stack([x] * channels, axis=1).astype(np.float32) if channels > 1 else x.astype(np.float32)


def peak_hz(wave, sr):
    spec = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return np.fft.rfftfreq(len(wave), 1 / sr)[spec.argmax()]


def test_resampled_sine_keeps_its_frequency(tmp_path):
    sf.write(tmp_path / "a.wav", tone(1000.0, 2.0, 44100), 44100)
    clip = load_audio(tmp_path / "a.wav", sample_id="r1", target_sr=16000)
    assert clip.sampling_rate == 16000 and abs(len(clip.wave) - 32000) <= 1
    assert abs(peak_hz(clip.wave, 16000) - 1000.0) < 1.0


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("MP3", None)])
def test_formats_decode(tmp_path, fmt, subtype):
    path = tmp_path / f"a.{fmt.lower()}"
    sf.write(path, tone(440.0, 1.0), SR, format=fmt, subtype=subtype)
    clip = load_audio(path, sample_id="r")
    assert abs(clip.seconds - 1.0) < 0.06 and abs(peak_hz(clip.wave, SR) - 440) < 3


def test_bytes_and_arrays(tmp_path):
    buf = io.BytesIO()
    sf.write(buf, tone(), SR, format="WAV")
    assert load_audio(buf.getvalue(), sample_id="b").wave.shape == (SR,)
    clip = load_audio(tone(500.0, 1.0, 8000, channels=2), sample_id="arr", sampling_rate=8000)
    assert clip.wave.ndim == 1 and len(clip.wave) == SR and abs(peak_hz(clip.wave, SR) - 500) < 2
    with pytest.raises(AudioError, match="row 'arr2': field 'audio': an audio array needs its sampling_rate"):
        load_audio(tone(), sample_id="arr2")


def test_six_channel_48k_is_downmixed_and_resampled(tmp_path):
    x = tone(700.0, 1.0, 48000, channels=6)
    x[:, 3] = 0.0  # a silent channel: the downmix is the mean
    sf.write(tmp_path / "six.wav", x, 48000)
    clip = load_audio(tmp_path / "six.wav", sample_id="six")
    assert clip.wave.ndim == 1 and len(clip.wave) == SR
    assert abs(peak_hz(clip.wave, SR) - 700) < 2
    assert abs(np.abs(clip.wave).max() - 0.4 * 5 / 6) < 0.02


def test_length_limit_truncate_or_reject(tmp_path):
    sf.write(tmp_path / "long.wav", tone(seconds=5.0), SR)
    clip = load_audio(tmp_path / "long.wav", sample_id="L", max_seconds=2.0)
    assert clip.truncated and clip.seconds == 2.0 and clip.original_seconds == 5.0
    with pytest.raises(AudioError, match="row 'L': field 'audio': audio is 5.0 s, longer than the limit of 2 s"):
        load_audio(tmp_path / "long.wav", sample_id="L", max_seconds=2.0, long_audio="reject")


@pytest.mark.parametrize(
    "make,reason",
    [
        (lambda p: None, "file not found"),
        (lambda p: p.write_bytes(b""), "file is empty"),
        (lambda p: p.write_text("this is not audio\n" * 20), "not a readable audio file"),
        (lambda p: sf.write(p, np.zeros((0,), np.float32), SR), "audio is empty"),
        (lambda p: sf.write(p, np.array([0.1, np.nan, 0.2] * 400, np.float32), SR, subtype="FLOAT"), "NaN or Inf"),
    ],
    ids=["missing", "empty-file", "text-as-wav", "zero-length", "nan"],
)
def test_bad_files_name_row_field_reason(tmp_path, make, reason):
    path = tmp_path / "x.wav"
    make(path)
    with pytest.raises(AudioError) as e:
        load_audio(path, sample_id="row-9", field="audio")
    assert str(e.value).startswith("row 'row-9': field 'audio': ") and reason in str(e.value)
    assert e.value.sample_id == "row-9" and e.value.field == "audio"


@pytest.mark.parametrize("damage", ["truncate", "corrupt"])
def test_truncated_or_corrupt_flac(tmp_path, damage):
    sf.write(tmp_path / "a.flac", tone(seconds=3.0), SR)
    data = bytearray((tmp_path / "a.flac").read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 3 : len(data) // 3 + 2000] = (
            np.random.default_rng(0).integers(0, 256, 2000, np.uint8).tobytes()
        )
    (tmp_path / "b.flac").write_bytes(bytes(data))
    with pytest.raises(
        AudioError, match="row 'f': field 'audio': (not a readable audio file|truncated: declares 3.00 s)"
    ):
        load_audio(tmp_path / "b.flac", sample_id="f")


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint8])
def test_integer_pcm_arrays_are_scaled_like_decoded_files(tmp_path, dtype):
    """A 0.5-amplitude sine given as integer PCM reaches the model at peak 0.5, the value soundfile gives for the
    same samples written to a file (where the subtype exists)."""
    x = 0.5 * np.sin(2 * np.pi * 440 * np.arange(SR) / SR)
    info = np.iinfo(dtype)
    middle = 0 if info.min < 0 else 128
    pcm = np.round(x * (info.max - middle) + middle).astype(dtype)
    clip = load_audio(pcm, sample_id="r", sampling_rate=SR)
    assert clip.wave.dtype == np.float32 and abs(float(np.abs(clip.wave).max()) - 0.5) < 2e-2
    subtype = {np.int16: "PCM_16", np.int32: "PCM_32"}.get(dtype)  # soundfile writes these arrays as they are
    if subtype:
        sf.write(tmp_path / "a.wav", pcm, SR, subtype=subtype)
        assert np.abs(load_audio(tmp_path / "a.wav", sample_id="r").wave - clip.wave).max() < 1e-6


def test_arrays_that_are_not_samples_are_rejected_naming_the_dtype():
    with pytest.raises(AudioError, match="row 'r': field 'audio': expected a numeric array .* got bool"):
        load_audio(np.ones(SR, dtype=bool), sample_id="r", sampling_rate=SR)


def _round_trips(fmt: str) -> bool:
    """libsndfile here writes this container and reads the whole file back (SD2 and RAW do not). Files, not
    in-memory buffers: libsndfile's MP3 writer seeks back to finish its header, which a buffer does not keep."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"a.{fmt.lower()}"
        try:
            sf.write(path, tone(440.0, 0.1), SR, format=fmt)
            sf.info(path)
        except (sf.LibsndfileError, TypeError, ValueError):
            return False
    return True


WRITABLE = [f for f in sf.available_formats() if _round_trips(f)]


@pytest.mark.parametrize("fmt", WRITABLE)
def test_a_file_cut_short_is_rejected_or_decoded_to_what_is_present(tmp_path, fmt):
    """Every container libsndfile writes and reads here (20-odd: WAV, FLAC, OGG, MP3, AIFF, CAF, W64, ...), cut to
    half its bytes: an AudioError naming the row, or the clip
    actually present (no more than the written half, finite samples), never another exception."""
    whole_path = tmp_path / f"whole.{fmt.lower()}"
    sf.write(whole_path, tone(440.0, 1.0), SR, format=fmt)
    whole = whole_path.read_bytes()
    written = sf.info(whole_path).duration
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(whole[: len(whole) // 2])
    try:
        clip = load_audio(path, sample_id="r")
    except AudioError as e:
        assert e.sample_id == "r" and e.field == "audio"
        return
    assert clip.original_seconds <= written / 2 + 0.02 and np.isfinite(clip.wave).all()


# The four containers rows come in, as soundfile writes them here (MP3 through libsndfile's LAME encoder, which
# writes a Xing/Info header with the frame count).
CONTAINERS = [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")]


def _ten_seconds(tmp_path: Path, fmt: str, subtype: str) -> tuple[Path, Path]:
    """A 10 s file of ``fmt`` and a copy of its first 40% of bytes (an interrupted copy). A tone with some noise, so
    that a compressed file's bytes grow with its audio rather than being mostly headers."""
    x = tone(440.0, 10.0) + 0.05 * np.random.default_rng(0).standard_normal(10 * SR).astype(np.float32)
    whole = tmp_path / f"whole.{fmt.lower()}"
    sf.write(whole, x, SR, format=fmt, subtype=subtype)
    data = whole.read_bytes()
    cut = tmp_path / f"cut.{fmt.lower()}"
    cut.write_bytes(data[: int(len(data) * 0.4)])
    return whole, cut


def test_mp3_is_written_here():
    """The premise of the MP3 cases: this libsndfile writes MP3 itself (no encoder binary, no committed file)."""
    assert "MP3" in sf.available_formats() and "MPEG_LAYER_III" in sf.available_subtypes("MP3")


@pytest.mark.parametrize("fmt,subtype", CONTAINERS)
@pytest.mark.parametrize("max_seconds", [None, 2.0], ids=["whole", "limit-2s"])
def test_a_container_cut_short_is_truncated_not_a_shorter_clip(tmp_path, fmt, subtype, max_seconds):
    """The intact file loads as 10 s; its first 40% is rejected as truncated, naming the row and the field, from a
    path and from bytes, whether decoded whole or only up to a 2 s limit. WAV, FLAC and MP3 declare 10 s; the cut
    holds about 4 s (WAV exactly: 40% of the bytes less the 44-byte header, 2 bytes a frame); Ogg declares no
    length, and its cut stream lacks the end-of-stream page."""
    whole, cut = _ten_seconds(tmp_path, fmt, subtype)
    clip = load_audio(whole, sample_id="row-3", max_seconds=max_seconds)
    assert abs(clip.original_seconds - 10.0) < 0.06 and abs(clip.seconds - (max_seconds or 10.0)) < 0.06
    for source in (cut, cut.read_bytes()):
        with pytest.raises(AudioError) as e:
            load_audio(source, sample_id="row-3", field="audio", max_seconds=max_seconds)
        assert e.value.sample_id == "row-3" and e.value.field == "audio"
        assert str(e.value).startswith("row 'row-3': field 'audio': truncated: "), str(e.value)
        if fmt == "OGG":
            held = float(re.search(r"no end-of-stream page, holds (\d+\.\d\d) s", str(e.value))[1])
        else:
            declared, held = map(float, re.search(r"declares (\S+) s, holds (\S+) s", str(e.value)).groups())
            assert declared == 10.0
        expected = (int(cut.stat().st_size) - 44) // 2 / SR if fmt == "WAV" else 4.0
        assert abs(held - expected) < (0.005 if fmt == "WAV" else 1.5), str(e.value)


def test_a_truncated_file_is_a_bad_row(tmp_path, caplog):
    """Through the loaders' bad-row handling: ``raise`` lists the row and its reason, ``skip`` drops only it."""
    assert BAD_ROWS == ("raise", "skip")
    whole, cut = _ten_seconds(tmp_path, "FLAC", "PCM_16")
    rows = [Row(id="ok", audio=str(whole), prompt="Describe."), Row(id="cut", audio=str(cut), prompt="Describe.")]
    report = validate_rows(rows)
    assert [r.id for r in report.good] == ["ok"] and [(b.id, b.field) for b in report.bad] == [("cut", "audio")]
    assert report.bad[0].reason.startswith("truncated: declares 10.00 s, holds ")
    with pytest.raises(DataError, match="truncated: declares 10.00 s"):
        apply_policy(report, "rows.jsonl", "raise", 2, None)
    assert [r.id for r in apply_policy(report, "rows.jsonl", "skip", 2, None)] == ["ok"]

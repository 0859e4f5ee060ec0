"""Audio decoding and validation: soundfile to decode, soxr to resample, one error type naming the sample.

Every failure raises :class:`AudioError`, whose message names the row id, the field and the reason, so that a
bad clip in a 100k-row dataset can be found. Long audio follows the model family's limit: cut to the limit
(``truncate``, the caller counts and reports how many) or reject the row (``reject``). Cutting happens here,
before the processor sees the audio, so the processor never truncates on its own and the number of audio
placeholders in the prompt always matches the features.

A file that holds less audio than its container declares (an interrupted copy) is rejected, never used as a
shorter clip: the row is bad, and ``data.bad_rows`` raises or skips it like any other. What a container declares:
WAV, the size of its ``data`` chunk (libsndfile quietly shortens it to the bytes present, so the header is read
here); FLAC, the sample count of its STREAMINFO block; MP3, the frame count of its Xing/Info header (as libsndfile
reads them); Ogg (Vorbis, Opus) declares no length, so a stream whose last page is cut or lacks the end-of-stream
flag is the truncated one. The FLAC and MP3 check decodes to the declared end: a file read only up to the length
limit is also checked by seeking to its declared last frame, so whether a row is bad never depends on the limit.
An MP3 without a Xing/Info header declares nothing either (libsndfile estimates its length from its size) and a
cut one is not caught; neither is a WAV whose header a streaming writer left at 0 or 0xFFFFFFFF bytes.

Run as a library: ``clip = load_audio("song.flac", sample_id="row-7", target_sr=16000, max_seconds=600)``.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import soundfile as sf
import soxr

from .errors import UserError

# Sample rates outside this range are not audio a model can use (or a corrupt header).
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 384_000
# Audio shorter than one 10 ms mel frame gives no features.
MIN_SECONDS = 0.01
# What to do with audio over the length limit.
LONG_AUDIO = ("truncate", "reject")


class AudioError(UserError, ValueError):
    """An audio input could not be used. ``sample_id``, ``field`` and ``reason`` are kept as attributes."""

    def __init__(self, sample_id: str, field: str, reason: str):
        self.sample_id, self.field, self.reason = sample_id, field, reason
        super().__init__(f"row '{sample_id}': field '{field}': {reason}")


@dataclass
class AudioClip:
    """A decoded clip.

    Attributes:
        wave: float32 mono samples, shape [T].
        sampling_rate: rate of ``wave`` (the target rate after resampling).
        original_seconds: duration before any truncation.
        truncated: whether the clip was cut to the length limit.
    """

    wave: np.ndarray
    sampling_rate: int
    original_seconds: float
    truncated: bool = False

    @property
    def seconds(self) -> float:
        return len(self.wave) / self.sampling_rate


def _open(source: Any, sample_id: str, field: str) -> tuple[Any, str]:
    """A file-like or path soundfile can read, and a description for messages."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise AudioError(sample_id, field, "audio bytes are empty")
        return io.BytesIO(bytes(source)), "<bytes>"
    path = Path(source)
    if not path.exists():
        raise AudioError(sample_id, field, f"file not found: {path}")
    if not path.is_file():
        raise AudioError(sample_id, field, f"not a file: {path}")
    if path.stat().st_size == 0:
        raise AudioError(sample_id, field, f"file is empty (0 bytes): {path}")
    return str(path), str(path)


def _raw(handle: Any) -> BinaryIO:
    """The file's bytes, for reading its container's structure."""
    if isinstance(handle, io.BytesIO):
        handle.seek(0)
        return handle
    return open(handle, "rb")  # the caller closes it


def _wav_declared_frames(raw: BinaryIO, size: int) -> int | None:
    """Frames a RIFF/WAVE header's ``data`` chunk declares when that chunk runs past the end of the file, else None
    (not a RIFF file, a complete chunk, or a streaming writer's unfinished size: 0 or 0xFFFFFFFF)."""
    raw.seek(0)
    head = raw.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:] != b"WAVE":
        return None
    pos, block_align = 12, 0
    while pos + 8 <= size:
        raw.seek(pos)
        chunk_id, chunk_size = struct.unpack("<4sI", raw.read(8))
        if chunk_id == b"fmt ":
            block_align = struct.unpack("<H", raw.read(16)[12:14])[0]
        elif chunk_id == b"data":
            if chunk_size in (0, 0xFFFFFFFF) or pos + 8 + chunk_size <= size or not block_align:
                return None
            return chunk_size // block_align
        pos += 8 + chunk_size + (chunk_size & 1)
    return None


# The largest Ogg page: a 27-byte header, 255 lacing values, 255 segments of 255 bytes.
_OGG_MAX_PAGE = 27 + 255 + 255 * 255


def _ogg_ends_cleanly(raw: BinaryIO, size: int) -> bool:
    """Whether the file ends exactly at the end of an Ogg page flagged end-of-stream (RFC 3533)."""
    start = max(0, size - _OGG_MAX_PAGE - 4)
    raw.seek(start)
    tail = raw.read()
    pos = tail.rfind(b"OggS")
    while pos >= 0:
        if pos + 27 <= len(tail) and pos + 27 + tail[pos + 26] <= len(tail):
            segments = tail[pos + 27 : pos + 27 + tail[pos + 26]]
            if pos + 27 + len(segments) + sum(segments) == len(tail):
                return bool(tail[pos + 5] & 0x04)
        pos = tail.rfind(b"OggS", 0, pos)
    return False  # the file ends inside a page


def _truncated(declared: int, held: int, sr: int, detail: str = "") -> str:
    return f"truncated: declares {declared / sr:.2f} s, holds {held / sr:.2f} s" + (f"; {detail}" if detail else "")


def _cut_container(handle: Any, info: Any, sr: int) -> str | None:
    """Why a WAV or Ogg file holds less than its container says, from its structure alone; None if it does not."""
    if info.format not in ("WAV", "WAVEX", "OGG"):
        return None
    raw = _raw(handle)
    try:
        size = raw.seek(0, io.SEEK_END)
        if info.format == "OGG":
            if _ogg_ends_cleanly(raw, size):
                return None
            return f"truncated: the Ogg stream has no end-of-stream page, holds {info.frames / sr:.2f} s"
        declared = _wav_declared_frames(raw, size)
        return None if declared is None or declared <= info.frames else _truncated(declared, info.frames, sr)
    finally:
        if raw is not handle:
            raw.close()
        else:
            raw.seek(0)


def _decodable_frames(handle: Any) -> int:
    """Frames decoded from the start before the end of the file or the first decode error (to 1024 frames)."""
    if isinstance(handle, io.BytesIO):
        handle.seek(0)
    held = 0
    try:
        with sf.SoundFile(handle) as f:
            while len(block := f.read(1024, dtype="float32", always_2d=True)):  # a failed read returns nothing
                held += len(block)
    except (sf.LibsndfileError, RuntimeError):
        pass
    return held


def _reaches(handle: Any, frames: int) -> bool:
    """Whether the decoder finds frame ``frames - 1`` (a cut FLAC fails to seek there; a cut MP3 reads nothing)."""
    if isinstance(handle, io.BytesIO):
        handle.seek(0)
    try:
        with sf.SoundFile(handle) as f:
            f.seek(frames - 1)
            return len(f.read(1, dtype="float32")) == 1
    except (sf.LibsndfileError, RuntimeError):
        return False


def _check_rate(sr: Any, sample_id: str, field: str) -> int:
    if not isinstance(sr, (int, np.integer)) or not MIN_SAMPLE_RATE <= int(sr) <= MAX_SAMPLE_RATE:
        raise AudioError(
            sample_id, field, f"implausible sampling rate {sr!r} (expected {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz)"
        )
    return int(sr)


def _as_float(samples: np.ndarray, sample_id: str, field: str) -> np.ndarray:
    """Float32 samples: integer PCM scaled to [-1, 1) by its full scale (int16 / 32768, int32 / 2**31, unsigned
    8-bit centred on 128), as soundfile decodes files; floats as they are; anything else rejected."""
    if np.issubdtype(samples.dtype, np.floating):
        return samples.astype(np.float32, copy=False)
    if np.issubdtype(samples.dtype, np.signedinteger):
        full_scale = float(2 ** (8 * samples.dtype.itemsize - 1))
        return (samples.astype(np.float64) / full_scale).astype(np.float32)
    if samples.dtype == np.uint8:  # 8-bit PCM (WAV's) is unsigned, silence at 128
        return ((samples.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    raise AudioError(
        sample_id, field, f"audio samples of dtype {samples.dtype} (expected float, or signed / 8-bit unsigned PCM)"
    )


def load_audio(
    source: str | Path | bytes | np.ndarray,
    *,
    sample_id: str,
    field: str = "audio",
    sampling_rate: int | None = None,
    target_sr: int = 16000,
    max_seconds: float | None = None,
    long_audio: str = "truncate",
) -> AudioClip:
    """Decode, downmix, validate, cut and resample one clip.

    Args:
        source: a path (wav, flac, ogg, mp3: what libsndfile reads), encoded bytes, or a sample array
            ([T] or [T, channels]; needs ``sampling_rate``): float samples in [-1, 1], or integer PCM (int8-int64,
            8-bit unsigned), scaled to [-1, 1) as soundfile scales decoded files. A WAV, FLAC, Ogg or MP3 file cut
            short is rejected (see the module doc); another container cut short is rejected or decoded to the
            samples actually present.
        sample_id: the row id, for messages.
        field: the field the audio came from, for messages.
        sampling_rate: rate of an array ``source``; ignored for files and bytes (the header says).
        target_sr: rate to resample to (the processor's, 16 kHz for every family here).
        max_seconds: length limit; None for no limit.
        long_audio: ``truncate`` (cut to ``max_seconds``) or ``reject`` (raise) for longer audio.

    Returns:
        The clip at ``target_sr``.

    Raises:
        AudioError: missing/empty/unreadable file, not audio, a file holding less audio than its container
            declares ("truncated: declares X s, holds Y s"; see the module doc), empty audio, NaN/Inf samples,
            implausible rate, or too long under ``reject``.
    """
    if long_audio not in LONG_AUDIO:
        raise ValueError(f"long_audio must be one of {LONG_AUDIO}, got {long_audio!r}")
    if isinstance(source, np.ndarray):
        data, sr, original = _read_array(source, sampling_rate, sample_id, field, max_seconds, long_audio)
    else:
        data, sr, original = _read_file(source, sample_id, field, max_seconds, long_audio)
    if data.shape[0] == 0 or data.shape[0] < MIN_SECONDS * sr:
        raise AudioError(sample_id, field, f"audio is empty ({data.shape[0]} samples)")
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise AudioError(sample_id, field, f"audio contains {bad} NaN or Inf samples")
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if sr != target_sr:
        wave = soxr.resample(wave, sr, target_sr, quality="HQ")
    wave = np.ascontiguousarray(wave, dtype=np.float32)
    truncated = max_seconds is not None and original > max_seconds
    return AudioClip(wave=wave, sampling_rate=target_sr, original_seconds=original, truncated=truncated)


def _kept_frames(
    frames: int, sr: int, sample_id: str, field: str, max_seconds: float | None, long_audio: str
) -> int | None:
    """How many of a clip's ``frames`` are kept under the length limit (None: all of them).

    Raises:
        AudioError: the clip is longer than ``max_seconds`` under ``long_audio="reject"``.
    """
    seconds = frames / sr
    if max_seconds is None or seconds <= max_seconds:
        return None
    if long_audio == "reject":
        raise AudioError(sample_id, field, f"audio is {seconds:.1f} s, longer than the limit of {max_seconds:g} s")
    return int(max_seconds * sr)


def _read_array(
    source: np.ndarray,
    sampling_rate: int | None,
    sample_id: str,
    field: str,
    max_seconds: float | None,
    long_audio: str,
) -> tuple[np.ndarray, int, float]:
    """An array clip as float32 [T, C], its rate and its length in seconds before the cut."""
    if sampling_rate is None:
        raise AudioError(sample_id, field, "an audio array needs its sampling_rate")
    sr = _check_rate(sampling_rate, sample_id, field)
    if source.ndim not in (1, 2) or not np.issubdtype(source.dtype, np.number):
        raise AudioError(
            sample_id, field, f"expected a numeric array of shape [T] or [T, C], got {source.dtype} {source.shape}"
        )
    data = _as_float(source, sample_id, field)
    data = data[:, None] if data.ndim == 1 else data
    kept = _kept_frames(data.shape[0], sr, sample_id, field, max_seconds, long_audio)
    return (data if kept is None else data[:kept]), sr, data.shape[0] / sr


def _read_file(
    source: str | Path | bytes, sample_id: str, field: str, max_seconds: float | None, long_audio: str
) -> tuple[np.ndarray, int, float]:
    """A file's (or encoded bytes') clip as float32 [T, C], its rate and its declared length in seconds.

    Only the kept frames are decoded; a container holding less audio than it declares is rejected.
    """
    handle, desc = _open(source, sample_id, field)
    try:
        info = sf.info(handle)
        if hasattr(handle, "seek"):
            handle.seek(0)
        sr = _check_rate(info.samplerate, sample_id, field)
        if cut := _cut_container(handle, info, sr):
            raise AudioError(sample_id, field, cut)
        kept = _kept_frames(info.frames, sr, sample_id, field, max_seconds, long_audio)
        frames = -1 if kept is None else kept
        try:
            data, _ = sf.read(handle, frames=frames, dtype="float32", always_2d=True)
        except sf.LibsndfileError as e:
            held = _decodable_frames(handle) if info.frames > 0 else 0
            if not held:
                raise
            # FLAC's decoder loses sync where the bytes end (or where they are corrupt: it cannot tell)
            raise AudioError(
                sample_id, field, _truncated(info.frames, held, sr, f"not a readable audio file past that: {e}")
            ) from None
        expected = info.frames if frames < 0 else frames
        if data.shape[0] < expected:
            raise AudioError(sample_id, field, _truncated(info.frames, data.shape[0], sr))
        if 0 <= frames < info.frames and not _reaches(handle, info.frames):
            raise AudioError(sample_id, field, _truncated(info.frames, _decodable_frames(handle), sr))
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, EOFError) as e:
        raise AudioError(sample_id, field, f"not a readable audio file ({desc}): {e}") from None
    return data, sr, info.frames / sr

"""Audio decoding and validation: soundfile to decode, soxr to resample, one error type naming the sample.

Every failure raises :class:`AudioError`, whose message names the row id, the field and the reason, so that a
bad clip in a 100k-row dataset can be found. Long audio follows the model family's limit: cut to the limit
(``truncate``, the caller counts and reports how many) or reject the row (``reject``). Cutting happens here,
before the processor sees the audio, so the processor never truncates on its own and the number of audio
placeholders in the prompt always matches the features.

Run as a library: ``clip = load_audio("song.flac", sample_id="row-7", target_sr=16000, max_seconds=600)``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

# Sample rates outside this range are not audio a model can use (or a corrupt header).
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 384_000
# Audio shorter than one 10 ms mel frame gives no features.
MIN_SECONDS = 0.01
# What to do with audio over the length limit.
LONG_AUDIO = ("truncate", "reject")


class AudioError(ValueError):
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
            8-bit unsigned), scaled to [-1, 1) as soundfile scales decoded files. A file cut short is either
            rejected or decoded to the samples actually present, whatever its container.
        sample_id: the row id, for messages.
        field: the field the audio came from, for messages.
        sampling_rate: rate of an array ``source``; ignored for files and bytes (the header says).
        target_sr: rate to resample to (the processor's, 16 kHz for every family here).
        max_seconds: length limit; None for no limit.
        long_audio: ``truncate`` (cut to ``max_seconds``) or ``reject`` (raise) for longer audio.

    Returns:
        The clip at ``target_sr``.

    Raises:
        AudioError: missing/empty/unreadable file, not audio, empty audio, NaN/Inf samples, implausible rate,
            or too long under ``reject``.
    """
    if long_audio not in LONG_AUDIO:
        raise ValueError(f"long_audio must be one of {LONG_AUDIO}, got {long_audio!r}")
    if isinstance(source, np.ndarray):
        if sampling_rate is None:
            raise AudioError(sample_id, field, "an audio array needs its sampling_rate")
        sr = _check_rate(sampling_rate, sample_id, field)
        if source.ndim not in (1, 2) or not np.issubdtype(source.dtype, np.number):
            raise AudioError(
                sample_id, field, f"expected a numeric array of shape [T] or [T, C], got {source.dtype} {source.shape}"
            )
        data = _as_float(source, sample_id, field)
        data = data[:, None] if data.ndim == 1 else data
        original = data.shape[0] / sr
        if max_seconds is not None and original > max_seconds:
            if long_audio == "reject":
                raise AudioError(
                    sample_id, field, f"audio is {original:.1f} s, longer than the limit of {max_seconds:g} s"
                )
            data = data[: int(max_seconds * sr)]
    else:
        handle, desc = _open(source, sample_id, field)
        try:
            info = sf.info(handle)
            if hasattr(handle, "seek"):
                handle.seek(0)
            sr = _check_rate(info.samplerate, sample_id, field)
            original = info.frames / sr
            frames = -1
            if max_seconds is not None and original > max_seconds:
                if long_audio == "reject":
                    raise AudioError(
                        sample_id, field, f"audio is {original:.1f} s, longer than the limit of {max_seconds:g} s"
                    )
                frames = int(max_seconds * sr)  # decode only what is kept
            data, _ = sf.read(handle, frames=frames, dtype="float32", always_2d=True)
            expected = info.frames if frames < 0 else frames
            if 0 < data.shape[0] < expected:
                raise AudioError(
                    sample_id, field, f"truncated or corrupt: header says {expected} frames, decoded {data.shape[0]}"
                )
        except AudioError:
            raise
        except (sf.LibsndfileError, RuntimeError, EOFError) as e:
            raise AudioError(sample_id, field, f"not a readable audio file ({desc}): {e}") from None
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

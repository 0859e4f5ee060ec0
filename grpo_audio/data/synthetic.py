"""Synthetic music-theory corpus: numpy-rendered clips with exact ground truth, in the Music Flamingo recipe's
three kinds of data.

Clip types (``task``): ``chord`` (root x quality, sevenths included), ``key`` (major/minor, as a melody or a
I-IV-V-I progression), ``tempo`` (click track or drum pattern at a known BPM), ``meter`` (accent patterns of
2/4, 3/4, 4/4, 6/8) and ``instrument`` (distinct synthesized timbres and envelopes). Each clip varies mildly
(octave, loudness, detune, noise, timbre) so that a model must listen rather than memorize.

From the same ground truth it writes:

- ``skills.jsonl`` (MF-Skills style): a caption stating the metadata in prose, and questions, multiple-choice
  with shuffled distractors and open-answer;
- ``think.jsonl`` (MF-Think style): multiple-choice and open questions whose target is a chain of thought grounded in
  the theory ("I hear an A minor chord. Its notes are A, C and E: ...") then
  ``<think>...</think><answer>...</answer>``;
- ``rl.jsonl``: a multiple-choice, an open and a caption prompt a clip, with ground truth for the rewards (the
  correct MCQ choice, the open answer, metadata for music-theory and structured-caption rewards);
- ``eval.jsonl``: held-out clips (no clip shared with the other files), multiple-choice and open questions;
- ``eval_mmau.json``: the held-out multiple-choice questions again, as an MMAU test-mini file.

Every question comes in several wordings, and every multiple-choice row asks, as ``grpo-audio eval`` asks a
benchmark (``data.benchmarks.build_prompt``), for the correct choice's letter or its text, drawn per row, and is
answered that way: a model trained on it answers a benchmark's prompt in the form the prompt asks for.

Departure from the paper: MF-Skills and MF-Think are built from real music with captions written by models and
checked by people; here the music is synthetic, so every label is exact and the whole corpus builds in seconds.

Labels come from a ``LabelSpace``: by default the whole vocabulary; a coarser one (``--chord-qualities major
minor --tempo-step 16``) gives each label more clips in a corpus of the same size. Its ``registers`` (``--registers
72 84``) set the octaves pitched clips are played in.

Run: ``grpo-audio synth OUT --n 400 --seed 0``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from ..music_vocab import CHORD_QUALITIES, INSTRUMENTS, INTERVAL_NAMES, METERS, MODES, PITCH_CLASSES
from ..rewards.matching import ANSWER_FORMATS
from .benchmarks import THINK_INSTRUCTION, build_prompt

SR = 16000
TASKS = ("chord", "key", "tempo", "meter", "instrument")
# mir_eval chord-quality shorthands (reward issue compares chords with mir_eval).
MIREX_QUALITY = {
    "major": "maj",
    "minor": "min",
    "diminished": "dim",
    "augmented": "aug",
    "dominant seventh": "7",
    "major seventh": "maj7",
    "minor seventh": "min7",
}
BEATS_PER_BAR = {"2/4": 2, "3/4": 3, "4/4": 4, "6/8": 6}
# Accent strength per beat of a bar (1.0 = downbeat).
ACCENTS = {
    "2/4": (1.0, 0.35),
    "3/4": (1.0, 0.35, 0.35),
    "4/4": (1.0, 0.35, 0.6, 0.35),
    "6/8": (1.0, 0.3, 0.3, 0.65, 0.3, 0.3),
}


# ---- timbres ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Timbre:
    """How an instrument sounds: partial frequency ratios and amplitudes, envelope, vibrato, breath noise.

    Attributes:
        ratios: partial frequencies as multiples of the fundamental (inharmonic for the bell).
        amps: partial amplitudes.
        attack: seconds to full level.
        decay: exponential decay time constant in seconds (None = sustained).
        partial_decay: extra decay per partial index (higher partials die sooner: plucked and struck sounds).
        vibrato: (rate Hz, depth in semitones).
        breath: level of noise added around the attack (flute).
        octave: MIDI octave offset relative to the clip's register.
    """

    ratios: tuple[float, ...]
    amps: tuple[float, ...]
    attack: float
    decay: float | None
    partial_decay: float = 0.0
    vibrato: tuple[float, float] = (0.0, 0.0)
    breath: float = 0.0
    octave: int = 0


TIMBRES: dict[str, Timbre] = {
    "piano": Timbre((1, 2, 3, 4, 5, 6), (1, 0.5, 0.3, 0.2, 0.12, 0.08), 0.005, 1.2, partial_decay=0.6),
    "organ": Timbre((1, 2, 3, 4, 6, 8), (1, 0.8, 0.5, 0.4, 0.2, 0.15), 0.03, None),
    "flute": Timbre((1, 2, 3), (1, 0.15, 0.05), 0.09, None, vibrato=(5.0, 0.08), breath=0.08),
    "strings": Timbre(tuple(range(1, 11)), tuple(1 / k for k in range(1, 11)), 0.18, None, vibrato=(5.5, 0.12)),
    "bass": Timbre((1, 2, 3), (1, 0.45, 0.15), 0.01, 0.9, partial_decay=0.4, octave=-2),
    "bell": Timbre((1, 2.76, 5.40, 8.93), (1, 0.6, 0.35, 0.2), 0.002, 1.6, partial_decay=0.9, octave=1),
    # Plucked near the bridge: the 2nd and 3rd harmonics are stronger than the fundamental.
    "plucked guitar": Timbre(tuple(range(1, 9)), (0.6, 1.0, 0.7, 0.5, 0.35, 0.25, 0.15, 0.1), 0.003, 0.7, 1.0),
    "synth lead": Timbre((1, 3, 5, 7, 9), (1, 1 / 3, 1 / 5, 1 / 7, 1 / 9), 0.01, None),
}
assert set(TIMBRES) == set(INSTRUMENTS)


def midi_to_hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69.0) / 12.0)


def render_note(
    midi: float, seconds: float, timbre: Timbre, rng: np.random.Generator | None = None, sr: int = SR
) -> np.ndarray:
    """One note of ``timbre``; ``rng`` adds mild random detune and partial-level variation."""
    n = max(1, int(seconds * sr))
    t = np.arange(n) / sr
    detune = rng.uniform(-8, 8) / 100 if rng is not None else 0.0  # cents -> semitones
    f0 = midi_to_hz(midi + 12 * timbre.octave + detune)
    rate, depth = timbre.vibrato
    phase_mod = 0.0
    if depth:
        # Vibrato as phase modulation: instantaneous frequency f0 * 2^(depth/12 * sin(2 pi rate t)).
        phase_mod = (2 ** (depth / 12) - 1) * f0 / (2 * np.pi * rate) * -np.cos(2 * np.pi * rate * t)
    wave = np.zeros(n)
    for k, (ratio, amp) in enumerate(zip(timbre.ratios, timbre.amps, strict=True)):
        f = f0 * ratio
        if f >= sr / 2 * 0.95:
            break
        jitter = rng.uniform(0.85, 1.15) if rng is not None else 1.0
        partial = amp * jitter * np.sin(2 * np.pi * (f * t + ratio * phase_mod))
        if timbre.decay is not None:
            partial *= np.exp(-t * (1.0 + timbre.partial_decay * k) / timbre.decay)
        wave += partial
    env = np.minimum(1.0, t / max(timbre.attack, 1e-4))
    release = min(0.03, seconds / 4)
    env *= np.clip((seconds - t) / release, 0.0, 1.0)
    wave *= env
    if timbre.breath and rng is not None:
        noise = rng.standard_normal(n) * timbre.breath * np.exp(-t / 0.15)
        wave += np.convolve(noise, np.ones(8) / 8, mode="same")
    return wave


def _place(out: np.ndarray, wave: np.ndarray, start_s: float, sr: int = SR) -> None:
    i = int(start_s * sr)
    j = min(len(out), i + len(wave))
    if i < len(out):
        out[i:j] += wave[: j - i]


def _finish(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Normalise to a random loudness and add a little noise (30-50 dB below the signal)."""
    peak = float(np.abs(wave).max()) or 1.0
    wave = wave / peak * rng.uniform(0.35, 0.9)
    rms = float(np.sqrt(np.mean(wave**2))) or 1e-3
    wave = wave + rng.standard_normal(len(wave)) * rms * 10 ** (-rng.uniform(30, 50) / 20)
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


# ---- clip renderers ---------------------------------------------------------------------------------------
def render_chord(
    root: int,
    quality: str,
    instrument: str,
    seconds: float,
    rng: np.random.Generator,
    register: int = 60,
    strum: float = 0.0,
) -> np.ndarray:
    """A chord (pitch class ``root``, ``quality`` from CHORD_QUALITIES), notes from ``register`` up."""
    out = np.zeros(int(seconds * SR))
    for i, interval in enumerate(CHORD_QUALITIES[quality]):
        _place(out, render_note(register + root + interval, seconds - i * strum, TIMBRES[instrument], rng), i * strum)
    return out


def scale_pitches(tonic: int, mode: str, register: int = 60) -> list[int]:
    return [register + tonic + s for s in MODES[mode]] + [register + tonic + 12]


def render_key(
    tonic: int, mode: str, instrument: str, style: str, bpm: float, rng: np.random.Generator, register: int = 60
) -> tuple[np.ndarray, list[str]]:
    """A key as a scale melody (up and down, ending on the tonic) or a I-IV-V-I progression.

    Returns the wave and the chords played (mir_eval syntax; empty for melodies).
    """
    beat = 60.0 / bpm
    if style == "melody":
        pitches = scale_pitches(tonic, mode, register)
        seq = pitches + pitches[-2::-1]
        out = np.zeros(int((len(seq) + 1) * beat * SR))
        for i, p in enumerate(seq):
            _place(
                out, render_note(p, beat * (2.0 if i == len(seq) - 1 else 1.05), TIMBRES[instrument], rng), i * beat
            )
        return out, []
    # Progression I-IV-V-I (major) or i-iv-V-i (minor, with the raised leading tone), two beats a chord.
    degrees = (
        [(0, "major"), (5, "major"), (7, "major"), (0, "major")]
        if mode == "major"
        else [(0, "minor"), (5, "minor"), (7, "major"), (0, "minor")]
    )
    out = np.zeros(int(len(degrees) * 2 * beat * SR + 0.5 * SR))
    chords = []
    for i, (deg, quality) in enumerate(degrees):
        root = (tonic + deg) % 12
        voicing = register + root - (12 if root + register > register + 6 else 0)
        wave = np.zeros(int(2 * beat * SR))
        for interval in CHORD_QUALITIES[quality]:
            wave += render_note(voicing + interval, 2 * beat, TIMBRES[instrument], rng)
        wave += 0.6 * render_note(register - 12 + tonic + deg, 2 * beat, TIMBRES["organ"], rng)  # bass line
        _place(out, wave, i * 2 * beat)
        chords.append(f"{PITCH_CLASSES[root]}:{MIREX_QUALITY[quality]}")
    return out, chords


def _click(freq: float, level: float, rng: np.random.Generator) -> np.ndarray:
    n = int(0.06 * SR)
    t = np.arange(n) / SR
    return level * (np.sin(2 * np.pi * freq * t) + 0.3 * rng.standard_normal(n)) * np.exp(-t / 0.012)


def _drum(kind: str, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(0.25 * SR)) / SR
    if kind == "kick":
        return np.sin(2 * np.pi * (50 * t + 60 * (1 - np.exp(-t / 0.03)) * 0.03)) * np.exp(-t / 0.12)
    if kind == "snare":
        return (0.7 * rng.standard_normal(len(t)) + 0.3 * np.sin(2 * np.pi * 190 * t)) * np.exp(-t / 0.06)
    return 0.35 * rng.standard_normal(len(t)) * np.exp(-t / 0.015)  # hi-hat


def beat_times(bpm: float, seconds: float, offset: float = 0.1) -> np.ndarray:
    return np.arange(offset, seconds - 0.1, 60.0 / bpm)


def render_rhythm(bpm: float, meter: str, style: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Beats at ``bpm`` with ``meter``'s accents: a click track (accented downbeat) or a drum pattern.

    For 6/8 the beat is the eighth note, felt in two groups of three.
    """
    out = np.zeros(int(seconds * SR))
    accents = ACCENTS[meter]
    for i, t in enumerate(beat_times(bpm, seconds)):
        pos = i % len(accents)
        if style == "click":
            _place(out, _click(1500.0 if pos == 0 else 1000.0, accents[pos], rng), t)
        else:
            if pos == 0:
                _place(out, 1.0 * _drum("kick", rng), t)
            elif accents[pos] > 0.5:
                _place(out, 0.8 * _drum("snare", rng), t)
            else:
                _place(out, 0.5 * _drum("snare", rng) * accents[pos], t)
            _place(out, 0.4 * _drum("hat", rng), t)
    return out


def render_melody(
    instrument: str, tonic: int, mode: str, bpm: float, rng: np.random.Generator, register: int = 60, notes: int = 6
) -> np.ndarray:
    beat = 60.0 / bpm
    pitches = scale_pitches(tonic, mode, register)
    seq = [pitches[0]] + [int(rng.choice(pitches)) for _ in range(notes - 2)] + [pitches[0]]
    out = np.zeros(int((notes + 1) * beat * SR))
    for i, p in enumerate(seq):
        _place(out, render_note(p, beat * 1.1, TIMBRES[instrument], rng), i * beat)
    return out


# ---- clips with ground truth -------------------------------------------------------------------------------
@dataclass
class Clip:
    """One rendered clip and its exact ground truth."""

    id: str
    task: str
    wave: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LabelSpace:
    """Which labels the corpus draws from. The default is the whole vocabulary: 84 chords (12 roots x 7
    qualities), 24 keys, 25 tempi (64-160 BPM in steps of 4), 4 meters, 8 instruments. A coarser space (fewer
    chord qualities, a wider tempo grid) gives each label more clips for the same corpus size: the embedded
    demo uses one so that a model trained from random weights in minutes has enough examples of each label.
    """

    chord_qualities: tuple[str, ...] = tuple(CHORD_QUALITIES)
    tempo_step: int = 4
    # The C (MIDI note) each pitched clip is built up from, one drawn per clip: C3, C4, C5. The Whisper front end
    # every family here uses (400-point STFT at 16 kHz: 40 Hz bins) does not resolve semitones below about
    # 700 Hz, so chords and keys in the lower registers reach an encoder only through their overtones; an encoder
    # that has not learned to read them (the embedded recipe's random one) hears them far better from C5 up.
    registers: tuple[int, ...] = (48, 60, 72)

    def __post_init__(self):
        unknown = [q for q in self.chord_qualities if q not in CHORD_QUALITIES]
        if unknown or len(self.chord_qualities) < 2:
            raise ValueError(
                f"chord_qualities: need at least two of {', '.join(CHORD_QUALITIES)}; got {list(self.chord_qualities)}"
            )
        if not 1 <= self.tempo_step <= 24:
            raise ValueError(f"tempo_step: need 1-24 BPM (at least 5 tempi in 64-160), got {self.tempo_step}")
        if not self.registers or any(r % 12 or not 36 <= r <= 84 for r in self.registers):
            raise ValueError(f"registers: need MIDI notes of C from 36 to 84 (C2-C6), got {list(self.registers)}")

    @property
    def tempi(self) -> tuple[int, ...]:
        return tuple(range(64, 161, self.tempo_step))


def make_clip(task: str, clip_id: str, rng: np.random.Generator, space: LabelSpace = LabelSpace()) -> Clip:
    """Render one clip of ``task`` with random ground truth (drawn from ``space``) and mild variation."""
    instrument = str(rng.choice(INSTRUMENTS))
    register = int(rng.choice(list(space.registers)))  # octave variation (a C, so pitch class = register + root)
    if task == "chord":
        root, quality = int(rng.integers(12)), str(rng.choice(list(space.chord_qualities)))
        if instrument == "bell":  # inharmonic partials blur a chord's identity; keep chords readable
            instrument = "organ"
        wave = render_chord(
            root,
            quality,
            instrument,
            float(rng.uniform(2.5, 3.5)),
            rng,
            register,
            strum=float(rng.choice([0.0, 0.0, 0.04])),
        )
        meta = {
            "chord": f"{PITCH_CLASSES[root]}:{MIREX_QUALITY[quality]}",
            "chord_name": f"{PITCH_CLASSES[root]} {quality}",
            "root": PITCH_CLASSES[root],
            "quality": quality,
            "instrument": instrument,
        }
    elif task == "key":
        tonic, mode = int(rng.integers(12)), str(rng.choice(list(MODES)))
        style = str(rng.choice(["melody", "progression"]))
        bpm = float(rng.integers(90, 150))
        if instrument in ("bell", "bass"):
            instrument = "piano"
        wave, chords = render_key(tonic, mode, instrument, style, bpm, rng, register)
        meta = {
            "key": f"{PITCH_CLASSES[tonic]} {mode}",
            "tonic": PITCH_CLASSES[tonic],
            "mode": mode,
            "instrument": instrument,
            "style": style,
        }
        if chords:
            meta["chords"] = chords
    elif task in ("tempo", "meter"):
        bpm = int(rng.choice(space.tempi))
        meter = str(rng.choice(METERS)) if task == "meter" else str(rng.choice(["4/4", "3/4"]))
        style = str(rng.choice(["click", "drums"]))
        # The length is drawn independently of tempo and meter: a length that follows from them (so many bars)
        # would let a model read the tempo off the number of audio tokens instead of listening to the beats.
        seconds = float(rng.uniform(5.0, 8.0) if task == "meter" else rng.uniform(4.0, 6.0))
        wave = render_rhythm(bpm, meter, style, seconds, rng)
        meta = {"tempo": bpm, "meter": meter, "style": style}
    elif task == "instrument":
        tonic, mode = int(rng.integers(12)), str(rng.choice(list(MODES)))
        wave = render_melody(instrument, tonic, mode, float(rng.integers(90, 140)), rng, register)
        meta = {"instrument": instrument}
    else:
        raise ValueError(f"unknown synthetic task '{task}'; choose one of: {', '.join(TASKS)}")
    return Clip(id=clip_id, task=task, wave=_finish(wave, rng), metadata=meta)


# ---- text: questions, captions, chains of thought ----------------------------------------------------------
# Each question in several wordings, drawn per row, so that the model follows a question worded as it has not
# seen it (benchmarks word their questions their own way).
QUESTIONS = {
    "chord": ("Which chord is played?", "What chord do you hear?", "Identify the chord in this clip."),
    "key": ("What is the key of this music?", "In which key is this piece?", "Identify the key of the music."),
    "tempo": (
        "What is the tempo in BPM?",
        "How fast is this music, in beats per minute?",
        "Estimate the tempo of this clip in BPM.",
    ),
    "meter": ("What is the time signature?", "What meter is this music in?", "Identify the time signature."),
    "instrument": ("Which instrument is playing?", "What instrument do you hear?", "Identify the instrument."),
}
TIMBRE_WORDS = {
    "piano": "a struck attack and a decay with rich overtones, like a piano",
    "organ": "a steady, sustained tone with strong even and odd harmonics, like an organ",
    "flute": "a breathy attack, gentle vibrato and almost no overtones, like a flute",
    "strings": "a slow bowed attack, vibrato and a bright saw-like spectrum, like strings",
    "bass": "a low register and a short plucked decay, like a bass",
    "bell": "inharmonic partials ringing for a long time, like a bell",
    "plucked guitar": "a sharp pluck whose upper harmonics die away fast, like a plucked guitar",
    "synth lead": "a hollow, buzzy sustained tone made of odd harmonics, like a synth lead",
}


def open_answer(clip: Clip) -> str:
    m = clip.metadata
    return {
        "chord": m.get("chord_name"),
        "key": m.get("key"),
        "tempo": str(m.get("tempo")),
        "meter": m.get("meter"),
        "instrument": m.get("instrument"),
    }[clip.task]


def _distractors(clip: Clip, rng: np.random.Generator, space: LabelSpace) -> list[str]:
    """Three wrong choices. Chords and keys are two-part labels (root and quality, tonic and mode): their
    choices form a 2 x 2 grid (the true root with another quality, another root with the true quality, and
    both changed), so that every root and every quality shows up twice and the choices alone give nothing away.
    """
    m = clip.metadata
    if clip.task == "chord":
        root = PITCH_CLASSES.index(m["root"])
        other_root = PITCH_CLASSES[(root + int(rng.choice([2, 5, 7, 9]))) % 12]
        other_quality = str(rng.choice([q for q in space.chord_qualities if q != m["quality"]]))
        return [f"{m['root']} {other_quality}", f"{other_root} {m['quality']}", f"{other_root} {other_quality}"]
    if clip.task == "key":
        tonic = PITCH_CLASSES.index(m["tonic"])
        other_mode = "minor" if m["mode"] == "major" else "major"
        # The relative key (same notes, other mode) is the hardest distractor; other tonics a fourth or fifth
        # away or a tone above share most notes.
        relative = 9 if m["mode"] == "major" else 3
        other_tonic = PITCH_CLASSES[(tonic + int(rng.choice([relative, 5, 7, 2]))) % 12]
        return [f"{m['tonic']} {other_mode}", f"{other_tonic} {m['mode']}", f"{other_tonic} {other_mode}"]
    if clip.task == "tempo":
        bpm = m["tempo"]
        pool = [str(b) for b in space.tempi if abs(b - bpm) >= 16]
    elif clip.task == "meter":
        pool = [x for x in METERS if x != m["meter"]]
    else:
        pool = [x for x in INSTRUMENTS if x != m["instrument"]]
    pool = sorted(set(pool) - {open_answer(clip)})
    return [str(x) for x in rng.choice(pool, size=3, replace=False)]


def question(clip: Clip, rng: np.random.Generator) -> str:
    """One of the clip's question wordings (``QUESTIONS``)."""
    return str(rng.choice(QUESTIONS[clip.task]))


@dataclass(frozen=True)
class MCQ:
    """A multiple-choice question about a clip, and how it is asked and answered in each answer format
    (``ANSWER_FORMATS``: the choice's letter or its text), with the prompt ``grpo-audio eval`` builds for a
    benchmark file (``data.benchmarks.build_prompt``)."""

    question: str
    choices: list[str]  # 4, in the order they are lettered
    answer: str  # the correct choice's text

    def prompt(self, answer_format: str, think: bool = False) -> str:
        return build_prompt(self.question, self.choices, answer_format, think)

    def target(self, answer_format: str) -> str:
        """The answer the prompt asks for: the correct choice's letter, or its text."""
        return chr(65 + self.choices.index(self.answer)) if answer_format == "letter" else self.answer


def mcq(clip: Clip, rng: np.random.Generator, space: LabelSpace = LabelSpace()) -> MCQ:
    """A question in one of its wordings, the correct choice and three distractors in a random order."""
    choices = [open_answer(clip), *_distractors(clip, rng, space)]
    order = rng.permutation(len(choices))
    return MCQ(question(clip, rng), [choices[i] for i in order], open_answer(clip))


def caption(clip: Clip) -> str:
    """A caption stating the clip's metadata in prose."""
    m = clip.metadata
    if clip.task == "chord":
        return f"A sustained {m['chord_name']} chord played on {m['instrument']}."
    if clip.task == "key":
        how = "a scale melody rising and falling" if m["style"] == "melody" else "a I-IV-V-I chord progression"
        # str.capitalize would lower-case the roman numerals.
        return f"{how[0].upper()}{how[1:]} in the key of {m['key']}, played on {m['instrument']}."
    if clip.task in ("tempo", "meter"):
        what = "A click track" if m["style"] == "click" else "A drum pattern"
        return f"{what} at {m['tempo']} BPM in {m['meter']} time."
    return f"A short melody played on {m['instrument']}."


def _names(pcs: list[int]) -> str:
    names = [PITCH_CLASSES[p % 12] for p in pcs]
    return ", ".join(names[:-1]) + " and " + names[-1]


def thinking(clip: Clip) -> str:
    """A chain of thought grounded in the theory that leads to the clip's answer.

    Each chain starts from what is heard, at the level of the question (the chord, the home note and mode, the
    beat rate, the accent cycle, the timbre), then grounds it in theory (its notes and intervals, the cadence or
    scale, the beat spacing) and concludes. A chain that starts from finer detail (naming every note of a chord
    before the chord) asks a small model for what it hears least reliably first, and the answer then follows
    the chain's first mistake.
    """
    m = clip.metadata
    if clip.task == "chord":
        root = PITCH_CLASSES.index(m["root"])
        ivs = CHORD_QUALITIES[m["quality"]]
        parts = [f"{PITCH_CLASSES[(root + i) % 12]} is a {INTERVAL_NAMES[i % 12]}" for i in ivs[1:]]
        return (
            f"I hear {'an' if m['root'][0] in 'AEF' else 'a'} {m['chord_name']} chord. Its notes are "
            f"{_names([root + i for i in ivs])}: above {m['root']}, " + ", ".join(parts) + f", a {m['quality']} "
            f"chord. So the chord is {m['chord_name']}."
        )
    if clip.task == "key":
        tonic = PITCH_CLASSES.index(m["tonic"])
        third = 4 if m["mode"] == "major" else 3
        if m["style"] == "progression":
            return (
                f"The music comes home to {m['tonic']}, and the home chord is {m['mode']}. The chords are "
                f"{', '.join(m['chords'])}: a I-IV-V-I cadence on {m['tonic']}, whose home chord has a "
                f"{INTERVAL_NAMES[third]} above {m['tonic']}. So the key is {m['key']}."
            )
        return (
            f"The melody comes home to {m['tonic']} and sounds {m['mode']}. It uses the notes "
            f"{_names([tonic + s for s in MODES[m['mode']]])} and starts and ends on {m['tonic']}; the third above "
            f"{m['tonic']} is {PITCH_CLASSES[(tonic + third) % 12]}, a {INTERVAL_NAMES[third]}. So the key is "
            f"{m['key']}."
        )
    if clip.task == "tempo":
        gap = 60.0 / m["tempo"]
        return (
            f"The beat is steady at about {m['tempo']} beats a minute: the beats are {gap:.2f} s apart, and "
            f"60 / {gap:.2f} = {m['tempo']}. So the tempo is {m['tempo']} BPM."
        )
    if clip.task == "meter":
        if m["meter"] == "6/8":
            return (
                "The pulses fall into two groups of three, strong on the first and medium on the fourth, so "
                "the meter is 6/8."
            )
        n = BEATS_PER_BAR[m["meter"]]
        return f"A strong accent comes back every {n} beats, so the meter is {m['meter']}."
    return f"The tone has {TIMBRE_WORDS[m['instrument']]}. The instrument is {m['instrument']}."


# ---- writing the corpus --------------------------------------------------------------------------------------
def _row(clip: Clip, kind: str, prompt: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": f"{clip.id}-{kind}",
        "audio": f"clips/{clip.id}.wav",
        "prompt": prompt,
        "task": clip.task,
        "metadata": clip.metadata,
        **fields,
    }


def rows_for_clip(
    clip: Clip,
    rng: np.random.Generator,
    space: LabelSpace = LabelSpace(),
    answer_formats: tuple[str, ...] = ANSWER_FORMATS,
) -> dict[str, list[dict[str, Any]]]:
    """The rows each output file gets from one clip. Each multiple-choice row asks for the letter or the text of
    the correct choice (drawn per row from ``answer_formats``) and is trained or scored on that; each row words its
    question its own way."""
    q = mcq(clip, rng, space)
    answer = open_answer(clip)
    cap = caption(clip)
    think = thinking(clip)
    cap_prompt = "Describe this music: mention what you can tell about its key, chords, tempo, meter and instrument."

    def ask(kind: str, think_tags: bool, **fields: Any) -> dict[str, Any]:
        fmt = str(rng.choice(answer_formats))
        return _row(clip, kind, q.prompt(fmt, think_tags), choices=q.choices, answer=q.target(fmt), **fields)

    def ask_open(kind: str, suffix: str, **fields: Any) -> dict[str, Any]:
        return _row(clip, kind, question(clip, rng) + suffix, answer=answer, **fields)

    skills = [
        _row(clip, "caption", cap_prompt, answer=cap, caption=cap) | {"task": "caption"},
        ask("mcq", False),
        ask_open("open", " Answer briefly."),
    ]
    think_rows = [ask("think", True, thinking=think), ask_open("think-open", THINK_INSTRUCTION, thinking=think)]
    rl = [
        ask("rl-mcq", True),
        _row(clip, "rl-caption", cap_prompt + THINK_INSTRUCTION, caption=cap) | {"task": "caption"},
    ]
    evals = [ask("mcq", True), ask_open("open", THINK_INSTRUCTION)]
    rl.append(ask_open("rl-open", THINK_INSTRUCTION))  # drawn last: the rows above read the same draws as before
    return {"skills": skills, "think": think_rows, "rl": rl, "eval": evals, "eval_mmau": [benchmark_item(clip, q)]}


def benchmark_item(clip: Clip, q: MCQ) -> dict[str, Any]:
    """The clip's question as an MMAU test-mini item (``id``, ``audio_id``, ``question``, ``choices``, ``answer``,
    ``task``), for ``grpo-audio eval`` to build its own prompt from."""
    return {"id": clip.id, "audio_id": f"clips/{clip.id}.wav", "question": q.question, "choices": q.choices,
            "answer": q.answer, "task": clip.task}  # fmt: skip


# The files the corpus writes, by name (``synthetic:NAME`` in a recipe): JSONL manifests, and the MMAU-style file.
CORPUS_FILES = {
    "skills": "skills.jsonl",
    "think": "think.jsonl",
    "rl": "rl.jsonl",
    "eval": "eval.jsonl",
    "eval_mmau": "eval_mmau.json",
}


def write_corpus(
    out: str | Path,
    n: int = 200,
    seed: int = 0,
    n_eval: int | None = None,
    space: LabelSpace = LabelSpace(),
    n_rl: int = 0,
    answer_formats: tuple[str, ...] = ANSWER_FORMATS,
) -> dict[str, Path]:
    """Render ``n`` training clips and ``n_eval`` held-out clips (default n // 4) with labels from ``space`` and
    write the manifests.

    ``rl.jsonl`` (the GRPO prompts) asks about the training clips, or with ``n_rl > 0`` about ``n_rl`` clips of
    its own, which the supervised manifests (``skills``, ``think``) never show. Multiple-choice rows ask for the
    answer in one of ``answer_formats`` (``letter``, ``text``), drawn per row. Tasks are assigned round-robin, so
    every task gets its share. Same seed, same bytes.

    ``eval_mmau.json`` holds the held-out clips' questions again as an MMAU test-mini file (the question alone, its
    choices and answer), for ``grpo-audio eval`` to build the prompt a benchmark gets.

    Returns:
        Paths of ``skills``, ``think``, ``rl`` and ``eval`` manifests and of ``eval_mmau``.
    """
    out = Path(out)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    n_eval = max(len(TASKS), n // 4) if n_eval is None else n_eval
    files: dict[str, list[dict[str, Any]]] = {name: [] for name in CORPUS_FILES}
    # Which manifests each split's clips feed.
    feeds = {"train": {"skills", "think"} | ({"rl"} if n_rl <= 0 else set()), "eval": {"eval", "eval_mmau"},
             "rl": {"rl"}}  # fmt: skip
    for k, (split, count) in enumerate((("train", n), ("eval", n_eval), ("rl", max(0, n_rl)))):
        for i in range(count):
            rng = np.random.default_rng([seed, k, i])
            clip = make_clip(TASKS[i % len(TASKS)], f"{split}-{i:05d}", rng, space)
            sf.write(out / "clips" / f"{clip.id}.wav", clip.wave, SR, subtype="PCM_16", format="WAV")
            for name, rows in rows_for_clip(clip, rng, space, answer_formats).items():
                if name in feeds[split]:
                    files[name].extend(rows)
    paths = {name: out / CORPUS_FILES[name] for name in files}
    for name, rows in files.items():
        if paths[name].suffix == ".json":
            paths[name].write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
        else:
            paths[name].write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows), encoding="utf-8")
    return paths

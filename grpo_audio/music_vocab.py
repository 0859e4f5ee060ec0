"""Music vocabulary shared by the tiny tokenizer's training corpus, the synthetic corpus and the rewards.

Plain data: pitch classes, chord qualities, modes, meters, instruments and genres, spelled the way the synthetic
captions and answers spell them.
"""

from __future__ import annotations

PITCH_CLASSES: tuple[str, ...] = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
FLAT_SPELLINGS: tuple[str, ...] = ("C", "Db", "D", "Eb", "E", "F", "Gb", "G", "Ab", "A", "Bb", "B")
# Chord qualities: name used in prose -> semitone intervals above the root.
CHORD_QUALITIES: dict[str, tuple[int, ...]] = {
    "major": (0, 4, 7),
    "minor": (0, 3, 7),
    "diminished": (0, 3, 6),
    "augmented": (0, 4, 8),
    "dominant seventh": (0, 4, 7, 10),
    "major seventh": (0, 4, 7, 11),
    "minor seventh": (0, 3, 7, 10),
}
MODES: dict[str, tuple[int, ...]] = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),  # natural minor
}
METERS: tuple[str, ...] = ("2/4", "3/4", "4/4", "6/8")
INSTRUMENTS: tuple[str, ...] = ("piano", "organ", "flute", "strings", "bass", "bell", "plucked guitar", "synth lead")
GENRES: tuple[str, ...] = ("ambient", "pop", "rock", "classical", "jazz", "electronic", "folk", "waltz")
INTERVAL_NAMES: tuple[str, ...] = (
    "unison",
    "minor second",
    "major second",
    "minor third",
    "major third",
    "perfect fourth",
    "tritone",
    "perfect fifth",
    "minor sixth",
    "major sixth",
    "minor seventh",
    "major seventh",
)

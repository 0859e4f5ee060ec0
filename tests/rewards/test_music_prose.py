"""Keys and chords named in free text in any letter case and markup, read by ``parse_keys`` / ``parse_chords`` and
so credited by ``structured_caption`` and ``music_theory``; the article "a" is not the note A (the rule is in
``rewards/music_theory.py``'s module doc). Expected labels are written by hand; scores by hand from the MIREX
weights and checked against mir_eval itself."""

from __future__ import annotations

import mir_eval
import pytest

from grpo_audio.rewards import music_theory, structured_caption
from grpo_audio.rewards.music_theory import chord_label, key_label, parse_chords, parse_keys


@pytest.mark.parametrize(
    "text,keys",
    [
        ("The Key Is A Minor", ["A minor"]),
        ("A calm piece in A Minor.", ["A minor"]),
        ("A MINOR", ["A minor"]),
        ("a minor", ["A minor"]),  # the whole text: "minor" ends the clause
        ("the key is a minor, at 90 BPM", ["A minor"]),
        ("Key: a minor", ["A minor"]),
        ("in the key of a major with strings", ["A major"]),
        ("it is in a minor.", ["A minor"]),
        ("IN F♯ MINOR", ["F# minor"]),
        ("In E-Flat Major", ["Eb major"]),
        ("in b minor, then d major", ["B minor", "D major"]),
        ("**C Major**", ["C major"]),
        ("$\\text{B}^\\flat$ major", ["Bb major"]),
        ("Em, then f#m and ab MAJOR", ["E minor", "F# minor", "Ab major"]),
        # the article, words, abbreviations
        ("a minor change in tempo", []),
        ("a minor third above the root", []),
        ("it plays a major role", []),
        ("it is in a minor key", []),  # some minor key
        ("I am sure, em, 12 cm", []),
        ("I Am Sure It Is Calm", []),
        ("a min later", []),
        ("minority and majority", []),
    ],
)
def test_parse_keys_any_case(text, keys):
    assert parse_keys(text) == keys


@pytest.mark.parametrize(
    "text,chords",
    [
        ("An A Minor Seventh Chord", ["A:min7"]),
        ("C MAJOR, then c major seventh", ["C:maj", "C:maj7"]),
        ("f# Dim and Bb MAJ7", ["F#:dim", "Bb:maj7"]),
        ("CM7 against Cm7", ["C:maj7", "C:min7"]),
        ("an A chord, then a G triad", ["A:maj", "G:maj"]),
        ("the chord is a minor", ["A:min"]),
        ("**E7** and `D-minor`", ["E:7", "D:min"]),
        ("at 10 AM on FM radio", []),
        ("a minor seventh up, a diminished fifth down", []),
        ("A chord progression opens it. Then a chord.", []),
    ],
)
def test_parse_chords_any_case(text, chords):
    assert parse_chords(text) == chords


def test_labels_read_through_markup():
    assert key_label("**A Minor**") == "A minor" and key_label("$\\text{F}^\\sharp$ MINOR") == "F# minor"
    assert chord_label("`C# min7`") == "C#:min7" and chord_label("\\textbf{A:min7}") == "A:min7"
    assert chord_label("G#:min7(4,*5)/1") == "G#:min7(4,*5)/1"  # a mir_eval omission is kept


@pytest.mark.parametrize(
    "caption,expected",
    [
        ("The Key Is A Minor", 1.0),
        ("A slow ballad in A Minor at 70 BPM", 1.0),
        ("A MINOR", 1.0),
        ("a minor", 1.0),
        ("**key: a minor**", 1.0),
        ("A Slow Ballad In C Major", 0.0),  # MIREX 0.3 (relative): no credit, the caption must state the key
        ("a minor change in the mood", 0.0),
    ],
)
def test_structured_caption_credits_a_key_in_any_case(caption, expected):
    assert structured_caption(None, [f"<answer>{caption}</answer>"], metadata=[{"key": "A minor"}]) == [expected]


def test_structured_caption_chords_in_any_case():
    meta = {"key": "A minor", "chords": ["A:min7", "D:maj", "E:7"]}
    caption = "<answer>An A Minor Seventh Chord, Then D MAJOR; the tonic is a minor.</answer>"
    # key: 1; chords: A:min7 and D:maj of three (E:7 not named) = 2/3; mean (1 + 2/3) / 2
    assert structured_caption(None, [caption], metadata=[meta]) == [pytest.approx((1 + 2 / 3) / 2)]


@pytest.mark.parametrize(
    "reference,answer,weight",
    [
        ("A minor", "The Key Is A Minor", 1.0),
        ("C major", "It is in A MINOR.", 0.3),  # relative minor
        ("D minor", "in A Minor", 0.5),  # a perfect fifth above
        ("A minor", "**A Major**", 0.2),  # parallel
        ("A minor", "a minor change, then C Major", 0.3),  # the first key named is C major, relative major of A minor
    ],
)
def test_music_theory_key_scores_with_mir_eval(reference, answer, weight):
    """The MIREX weights by hand, and mir_eval's own score of the key read."""
    first = parse_keys(answer)[0]
    assert float(mir_eval.key.weighted_score(reference, first)) == pytest.approx(weight)
    assert music_theory(None, [f"<answer>{answer}</answer>"], metadata=[{"key": reference}]) == [pytest.approx(weight)]


def test_music_theory_chords_in_any_case():
    """Chords compared by notes (mir_eval tetrads): "a minor" mid-sentence is the article, so A:min is not named."""
    meta = {"chords": ["A:min", "D:maj", "E:7"]}
    answer = "<answer>a minor shift, then D Major and E7</answer>"
    assert parse_chords(answer) == ["D:maj", "E:7"]
    assert list(mir_eval.chord.tetrads(["D:maj", "E:7"], ["D:maj", "E:7"])) == [1.0, 1.0]
    assert music_theory(None, [answer], metadata=[meta]) == [pytest.approx(2 / 3)]
    assert music_theory(None, ["<answer>It Is An A Minor Seventh Chord</answer>"], metadata=[{"chord": "A:min7"}]) == [
        1.0
    ]

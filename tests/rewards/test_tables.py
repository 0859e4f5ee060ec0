"""Table-driven tests of every reward, adversarial cases included (>= 15 cases each)."""

from __future__ import annotations

import pytest

from grpo_audio.rewards import (
    FormatReward,
    RewardSet,
    answer_accuracy,
    format_reward,
    load_reward,
    mcq_accuracy,
    music_theory,
    structured_caption,
)

FORMAT_CASES = [
    ("<think>C, E, G</think><answer>C major</answer>", 1.0),
    ("<think>x</think>\n\n<answer>y</answer>\n", 1.0),
    ("  <think>\nmulti\nline\n</think>\n<answer>\nB\n</answer>  ", 1.0),
    ("<answer>C major</answer>", 0.0),  # no think block
    ("<think>C major</think>", 0.0),  # answer in the think block only
    ("<answer>B</answer><think>x</think>", 0.0),  # wrong order
    ("<think>x</think><answer>A</answer><answer>B</answer>", 0.0),  # two answers
    ("<think>x</think><think>y</think><answer>B</answer>", 0.0),  # two think blocks
    ("", 0.0),  # empty completion
    ("<think></think><answer>B</answer>", 0.0),  # empty think
    ("<think>x</think><answer>  </answer>", 0.0),  # empty answer
    ("<think>x</think><answer>B</answer> trailing text", 0.0),
    ("preamble <think>x</think><answer>B</answer>", 0.0),
    ("<think>x<answer>B</answer></think>", 0.0),  # answer nested in think
    ("<THINK>x</THINK><ANSWER>B</ANSWER>", 0.0),  # tags are case-sensitive
    ("<think>x</think><answer>B", 0.0),  # unclosed answer
    ("<think>F♯ minor</think><answer>F♯ minor</answer>", 1.0),  # unicode inside
]


@pytest.mark.parametrize("text,expected", FORMAT_CASES)
def test_format(text, expected):
    assert format_reward(None, [text]) == [expected]
    assert format_reward(None, [[{"role": "assistant", "content": text}]]) == [expected]


def test_format_custom_tags():
    r = FormatReward("reasoning", "final")
    assert r(None, ["<reasoning>x</reasoning><final>y</final>", "<think>x</think><answer>y</answer>"]) == [1.0, 0.0]


CHOICES = ["C major", "A minor", "G major", "E minor"]
MCQ_CASES = [
    ("<answer>B</answer>", "B", 1.0),
    ("<answer>(B)</answer>", "B", 1.0),
    ("<answer>B.</answer>", "B", 1.0),
    ("<answer>Answer: B</answer>", "B", 1.0),
    ("<answer>The answer is (B) A minor</answer>", "B", 1.0),
    ("<answer>B. A minor</answer>", "B", 1.0),
    ("<answer>a minor</answer>", "B", 1.0),  # by text, case and article normalised
    ("<answer>The A Minor!</answer>", "B", 1.0),
    ("<think>it is not B</think><answer>C</answer>", "B", 0.0),
    ("<think>clearly B</think>", "B", 0.0),  # answer in the think block only
    ("<answer>B or C</answer>", "B", 0.0),  # two letters
    ("<answer>A minor or C major</answer>", "B", 0.0),  # two choices by text
    ("<answer>B</answer> <answer>C</answer>", "B", 0.0),  # the last answer block counts
    ("<answer>C</answer> <answer>B</answer>", "B", 1.0),
    ("", "B", 0.0),  # empty completion
    ("<answer>F minor</answer>", "B", 0.0),  # not a choice
    ("<answer>A</answer>", "B", 0.0),  # wrong letter
    ("<answer>E</answer>", "B", 0.0),  # a letter beyond the choices
    ("B", "B", 1.0),  # no tags: fallback to the whole text
    ("<answer>B</answer>", "A minor", 1.0),  # gold given as the choice text
    ("<answer>A sustained A minor chord</answer>", "B", 1.0),  # the article "A" is not choice A
]


@pytest.mark.parametrize("text,gold,expected", MCQ_CASES)
def test_mcq(text, gold, expected):
    assert mcq_accuracy(None, [text], choices=[CHOICES], answer=[gold]) == [expected]


def test_mcq_nested_choice_texts_and_not_applicable():
    choices = ["F# major", "F# major seventh", "F# minor", "Gb minor"]
    assert mcq_accuracy(None, ["<answer>F# major seventh</answer>"], choices=[choices], answer=["B"]) == [1.0]
    assert mcq_accuracy(None, ["<answer>F# major</answer>"], choices=[choices], answer=["B"]) == [0.0]
    assert mcq_accuracy(None, ["<answer>B</answer>"], choices=[None], answer=["x"]) == [None]
    strict = load_reward("mcq_accuracy", fallback=False)
    assert strict(None, ["B"], choices=[CHOICES], answer=["B"]) == [0.0]


OPEN_CASES = [
    ("<answer>A minor</answer>", "A minor", 1.0),
    ("<answer>a minor</answer>", "A minor", 1.0),
    ("<answer>The A minor.</answer>", "A minor", 1.0),
    ("<answer>  A   minor </answer>", "A minor", 1.0),
    ("<answer>A♭ major</answer>", "Ab major", 1.0),
    ("<answer>A minor</answer>", "C major", 0.0),
    ("<answer>A minor seventh</answer>", "A minor", 0.0),  # exact match, not containment
    ("<think>A minor</think>", "A minor", 0.0),  # answer in the think block only
    ("<think>x</think><answer>A minor</answer><answer>C major</answer>", "A minor", 0.0),  # last answer wins
    ("", "A minor", 0.0),
    ("<answer>120</answer>", "120", 1.0),
    ("<answer>120.0</answer>", "120", 1.0),  # numbers compare as numbers
    ("<answer>121</answer>", "120", 0.0),  # exact by default
    ("<answer>3/4</answer>", "3/4", 1.0),
    ("<answer>3/4.</answer>", "3/4", 1.0),
    ("A minor", "A minor", 1.0),  # fallback to the whole text
    ("<answer>Flute</answer>", "flute", 1.0),
]


@pytest.mark.parametrize("text,gold,expected", OPEN_CASES)
def test_open_answer(text, gold, expected):
    assert answer_accuracy(None, [text], answer=[gold]) == [expected]


def test_open_answer_settings():
    assert answer_accuracy(None, ["x"], answer=[None]) == [None]
    case_sensitive = load_reward("answer_accuracy", casefold=False)
    assert case_sensitive(None, ["<answer>a minor</answer>"], answer=["A minor"]) == [0.0]
    tolerant = load_reward("answer_accuracy", numeric_tolerance=0.04)
    assert tolerant(None, ["<answer>124</answer>", "<answer>126</answer>"], answer=["120", "120"]) == [1.0, 0.0]


def test_open_answer_leaves_multiple_choice_rows_to_mcq_accuracy():
    """A multiple-choice row gets None from answer_accuracy (a correct letter is not the choice's text) and its
    score from mcq_accuracy alone; an open row in the same batch is scored by exact match."""
    completions = ["<answer>B</answer>", "<answer>A minor</answer>", "<answer>a minor</answer>"]
    columns = {
        "choices": [["C major", "A minor"], ["C major", "A minor"], None],
        "answer": ["B", "A minor", "A minor"],
    }
    assert answer_accuracy(None, completions, **columns) == [None, None, 1.0]
    totals = RewardSet([mcq_accuracy, answer_accuracy])(None, completions, **columns)
    assert totals.total == [1.0, 1.0, 1.0]


THEORY_CASES = [
    ("A minor", {"key": "A minor"}, 1.0),
    ("C major", {"key": "A minor"}, 0.3),  # relative
    ("A minor", {"key": "C major"}, 0.3),  # relative
    ("G major", {"key": "C major"}, 0.5),  # a fifth above
    ("C minor", {"key": "C major"}, 0.2),  # parallel
    ("Db major", {"key": "C# major"}, 1.0),  # enharmonic
    ("F♯ minor", {"key": "F# minor"}, 1.0),  # unicode accidental
    ("G♭ major", {"key": "F# major"}, 1.0),
    ("f#m", {"key": "F# minor"}, 1.0),
    ("E major", {"key": "C major"}, 0.0),
    ("B# major", {"key": "C major"}, 1.0),  # a spelling mir_eval rejects, read as the pitch it names
    ("Fb minor", {"key": "C major"}, 0.0),
    ("Db", {"chord": "C#:maj"}, 0.0),  # a bare note name is not a chord claim
    ("Db major chord", {"chord": "C#:maj"}, 1.0),
    ("C major seventh", {"chord": "C:maj7"}, 1.0),
    ("Cmaj7", {"chord": "C:maj7"}, 1.0),
    ("C major", {"chord": "C:maj7"}, 0.0),
    ("Bbm7", {"chord": "A#:min7"}, 1.0),
    ("120 BPM", {"tempo": 120}, 1.0),
    ("124 BPM", {"tempo": 120}, 1.0),  # within 4%
    ("126 BPM", {"tempo": 120}, 0.0),
    ("60 BPM", {"tempo": 120}, 0.0),  # half tempo, no credit by default
    ("3/4 time", {"meter": "3/4"}, 1.0),
    ("4/4", {"meter": "3/4"}, 0.0),
    ("A minor at 120 BPM in 4/4", {"key": "A minor", "tempo": 120, "meter": "3/4"}, 2 / 3),
    ("no claims at all", {"key": "A minor", "tempo": 100}, 0.0),
    ("<think>A minor</think><answer>C major</answer>", {"key": "A minor"}, 0.3),  # only the answer counts
    ("A, D, E", {"chords": ["A:min", "D:min", "E:maj"]}, 0.0),
    ("Am, Dm and E major", {"chords": ["A:min", "D:min", "E:maj"]}, 1.0),
]


@pytest.mark.parametrize("text,meta,expected", THEORY_CASES)
def test_music_theory(text, meta, expected):
    assert music_theory(None, [text], metadata=[meta]) == [pytest.approx(expected)]


def test_music_theory_settings_and_not_applicable():
    assert music_theory(None, ["x", "y"], metadata=[{}, {"instrument": "piano"}]) == [None, None]
    lenient = load_reward("music_theory", half_double=0.5)
    assert lenient(None, ["60 BPM", "240 bpm"], metadata=[{"tempo": 120}] * 2) == [0.5, 0.5]


META = {"genre": "jazz", "tempo": 96, "key": "Eb major", "meter": "3/4", "instruments": ["piano", "double bass"]}
CAPTION_CASES = [
    ("A jazz waltz in 3/4 at 96 BPM in E♭ major with piano and double bass.", META, 1.0),
    ("A jazz waltz in 3/4 at 96 BPM in D# major with piano and double bass.", META, 1.0),  # enharmonic key
    ("A jazz waltz in 3/4 at 98 BPM in Eb major with piano and double bass.", META, 1.0),  # tempo within 4%
    ("A jazz piece in 4/4 at 96 BPM in Eb major with piano and double bass.", META, 0.8),
    ("A rock song in 4/4 at 140 BPM in C major on guitar.", META, 0.0),
    ("A jazz piece with piano.", META, (1 + 0.5) / 5),  # one of two instruments
    ("", META, 0.0),  # empty
    ("<think>jazz, 3/4, 96 BPM, Eb major, piano, double bass</think><answer>Some music.</answer>", META, 0.0),
    ("A jazzy piece", {"genre": "jazz"}, 0.0),  # whole words only
    ("A piece in C minor, or is it Eb major?", {"key": "Eb major"}, 1.0),  # any stated key counts
    ("A C major seventh chord on organ.", {"chord": "C:maj7", "instrument": "organ"}, 1.0),
    ("A C major chord on organ.", {"chord": "C:maj7", "instrument": "organ"}, 0.5),
    ("Chords: Am, Dm, E.", {"chords": ["A:min", "D:min", "E:maj"]}, 2 / 3),
    ("Calm and slow", {"mood": "calm", "style": "ignored"}, 1.0),
    ("A drum pattern at 120 BPM in 6/8 time.", {"tempo": 120, "meter": "6/8", "style": "drums"}, 1.0),
    ("A drum pattern at 120 BPM in 6/8 time.", {"tempo": 60, "meter": "3/4"}, 0.0),
    # a generated caption in a key mir_eval cannot parse as spelled (once stopped a GRPO run)
    ("A melody in the key of B# major, played on piano.", {"key": "C major", "instrument": "piano"}, 1.0),
]


@pytest.mark.parametrize("text,meta,expected", CAPTION_CASES)
def test_structured_caption(text, meta, expected):
    assert structured_caption(None, [text], metadata=[meta]) == [pytest.approx(expected)]


def test_structured_caption_not_applicable_and_categories():
    assert structured_caption(None, ["x", "y"], metadata=[None, {"style": "drums"}]) == [None, None]
    only_key = load_reward("structured_caption", categories=["key"])
    assert only_key(None, ["in Eb major, rock"], metadata=[META]) == [1.0]


LABEL_CASES = [
    # metadata and whole answers read by meaning, whatever their case and usual spelling
    ("<answer>a minor</answer>", {"key": "A minor"}, 1.0),
    ("<answer>A minor</answer>", {"key": "a minor"}, 1.0),
    ("<answer>am</answer>", {"key": "A:minor"}, 1.0),
    ("<answer>F# MINOR</answer>", {"key": "gb minor"}, 1.0),
    ("<answer>c major</answer>", {"key": "Am"}, 0.3),
    ("<answer>am7</answer>", {"chord": "a:min7"}, 1.0),
    ("<answer>C major seventh</answer>", {"chord": "cmaj7"}, 1.0),
    ("<answer>db</answer>", {"chord": "C#"}, 0.0),  # a bare note name is still no chord claim
    ("<answer>120</answer>", {"tempo": "120 BPM"}, 1.0),
    ("<answer>in 3/4</answer>", {"meter": "3 / 4"}, 1.0),
    ("<answer>common time</answer>", {"meter": "4/4"}, 1.0),
]


@pytest.mark.parametrize("text,meta,expected", LABEL_CASES)
def test_music_labels_by_meaning(text, meta, expected):
    assert music_theory(None, [text], metadata=[meta]) == [pytest.approx(expected)]


def test_unreadable_music_labels_are_reported_at_load_naming_row_and_field():
    from grpo_audio.data.loaders import from_records
    from grpo_audio.data.schema import DataError

    tone = [0.0, 0.1] * 800
    good = {"id": "ok", "audio": tone, "sampling_rate": 16000, "prompt": "Key?", "metadata": {"key": "a minor"}}
    rows = [
        good,
        {**good, "id": "k", "metadata": {"key": "H major"}},
        {**good, "id": "c", "metadata": {"chords": ["Am", "X7"]}},
        {**good, "id": "t", "metadata": {"tempo": "fast", "meter": "waltz"}},
    ]
    with pytest.raises(DataError) as e:
        from_records(rows)
    message = str(e.value)
    assert "3 of 4 rows are bad" in message
    assert "row 'k': field 'metadata.key': cannot read 'H major' as a key" in message
    assert "row 'c': field 'metadata.chords[1]': cannot read 'X7' as a chord" in message
    assert "row 't': field 'metadata.tempo'" in message and "row 't': field 'metadata.meter'" in message
    assert [r.id for r in from_records(rows, bad_rows="skip")] == ["ok"]

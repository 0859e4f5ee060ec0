"""The one answer matcher on every item of the real MMAU test-mini file, and the small inputs of public bug reports.

The file is ``tests/fixtures/benchmarks/mmau-test-mini.json``, MMAU's own, unchanged: note-name choices ("G", "A#",
"D"), choices that are letters, a choice that is the article "a", repeated choice texts, choices starting with "A ".
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grpo_audio.data.schema import Row, check_fields
from grpo_audio.rewards import mcq_accuracy
from grpo_audio.rewards.accuracy import MCQAccuracy
from grpo_audio.rewards.matching import Choices, named_choices

MMAU = Path(__file__).resolve().parents[1] / "fixtures" / "benchmarks" / "mmau-test-mini.json"


def _items() -> list[dict]:
    """Every item but one: in the source, item 7a1dcecc's eight choices run two entries together ("AirBased on
    the given audio, what is the most likely setting?") and splice a question into another; no reading of it is
    right, so it is excluded (found by that text, and asserted to be the only one)."""
    items = json.loads(MMAU.read_text())
    malformed = [i["id"] for i in items if any("Based on the given audio" in c for c in i["choices"])]
    assert len(items) == 1000 and len(malformed) == 1
    return [i for i in items if i["id"] not in malformed]


def _forms(letter: str, text: str, other: str) -> dict[str, list[str]]:
    """The usual ways of giving an answer, by what they carry: an explicit letter, a bare letter, the text."""
    return {
        "explicit": [f"({letter})", f"{letter})", f"<answer>({letter})</answer>", f"The answer is ({letter})."],
        "letter": [
            letter,
            letter.lower(),
            f"{letter}.",
            f"Answer: {letter}",
            f"The answer is {letter}",
            f"<think>It could be {other}, but listening again it is not.</think>\n<answer>{letter}</answer>",
        ],
        "text": [
            text,
            f"Answer: {text}",
            f"The answer is {text}.",
            f"<think>It could be {other}; no.</think><answer>{text}</answer>",
        ],
    }


@pytest.mark.parametrize("prefer", ["text", "letter"])
def test_every_mmau_item_every_choice_every_form(prefer):
    """Each form names its choice and no other distinct one, and mcq_accuracy scores it 1 exactly when that
    choice is the answer. Where the same bare token is both a letter and another choice's text ("D" among
    ``["G", "A#", "D", "E"]``) it cannot mean both: it is read as ``prefer`` says, and the test expects that."""
    items = _items()
    scorer = MCQAccuracy(prefer=prefer)
    checked = ambiguous = 0
    for item in items:
        choices = item["choices"]
        options = Choices(choices, prefer)
        answer = options.answer_index(item["answer"])
        assert answer is not None and choices[answer] == item["answer"], item["id"]
        for j, text in enumerate(choices):
            letter, me = chr(65 + j), options.canonical[j]
            as_text = options._by_text(letter)  # the bare letter is also some choice's text
            as_letter = options._by_letter(text.strip().rstrip(".")) if len(text.strip().rstrip(".")) == 1 else set()
            expect = {
                "explicit": me,
                "letter": options.canonical[min(as_text)] if as_text and prefer == "text" else me,
                "text": options.canonical[min(as_letter)] if as_letter and prefer == "letter" else me,
            }
            ambiguous += expect["letter"] != me or expect["text"] != me
            other = choices[(j + 1) % len(choices)]
            for kind, forms in _forms(letter, text, other).items():
                for form in forms:
                    named = named_choices(form, choices, prefer)
                    assert named == {expect[kind]}, (item["id"], choices, form, named, expect[kind])
                    score = scorer(None, [form], choices=[choices], answer=[item["answer"]])[0]
                    assert score == float(expect[kind] == answer), (item["id"], form)
                    checked += 1
    assert checked > 50_000
    # the premise: ambiguous tokens exist in the real file (note names, letter choices, the article "a")
    assert 5 <= ambiguous <= 40


def _mmau(prefix: str) -> dict:
    return next(i for i in json.loads(MMAU.read_text()) if i["id"].startswith(prefix))


def _score(completion: str, item: dict, prefer: str = "text") -> float:
    return MCQAccuracy(prefer=prefer)(None, [completion], choices=[item["choices"]], answer=[item["answer"]])[0]


def test_note_name_choices_are_notes_not_letters():
    item = _mmau("b11438e7")  # ["G", "A#", "D", "E"], answer "D"
    assert item["choices"] == ["G", "A#", "D", "E"] and item["answer"] == "D"
    assert _score("<answer>C</answer>", item) == 1.0  # the right letter
    assert _score("<answer>D</answer>", item) == 1.0  # the right note
    assert _score("<answer>(C)</answer>", item) == 1.0
    assert _score("<answer>E</answer>", item) == 0.0  # the wrong note (letter E does not exist)
    assert _score("<answer>(D)</answer>", item) == 0.0  # letter D is the note E

    item = _mmau("34307e92")  # ["C", "D", "G", "A"], answer "D": reachable by text and by letter
    assert _score("D", item) == 1.0 and _score("(B)", item) == 1.0 and _score("The answer is D.", item) == 1.0
    assert _score("It is a D chord", item) == 1.0  # the article "a" is not the note A
    assert _score("A", item) == 0.0 and _score("(D)", item) == 0.0

    item = _mmau("6976d332")  # ["C", "Gm", "Cm7b5", "Eb/G"], answer "Cm7b5"
    assert _score("<answer>C</answer>", item, prefer="letter") == 1.0  # a prompt that asked for a letter
    assert _score("<answer>C</answer>", item) == 0.0  # read as the text "C" (the chord C) otherwise
    assert _score("<answer>(C)</answer>", item) == 1.0 and _score("<answer>Cm7b5</answer>", item) == 1.0


def test_repeated_choice_texts_count_as_one_answer():
    item = _mmau("e277d88f")  # "1.63 seconds" twice
    assert item["choices"].count("1.63 seconds") == 2
    for completion in ("<answer>1.63 seconds</answer>", "A", "D", "The answer is 1.63 seconds."):
        assert _score(completion, item) == 1.0, completion
        assert len(mcq_accuracy.named(completion, item["choices"])) == 1
    assert _score("B", item) == 0.0


def test_a_choice_that_is_an_article():
    item = _mmau("2d861e76")  # ["twenty-one", "Berman's", "said", "a"], answer "a"
    assert item["choices"][3] == "a"
    assert _score("<answer>a</answer>", item) == 1.0 and _score("Answer: a", item) == 1.0
    assert _score("(D)", item) == 1.0 and _score("said", item) == 0.0
    assert _score("It is a word", item) == 0.0  # the article in prose names nothing


KEYS = ["C major", "A minor", "G major", "E minor"]


@pytest.mark.parametrize(
    "completion",
    [
        "<answer>The answer is A minor.</answer>",
        "<answer>Answer: A minor</answer>",
        "<answer>b</answer>",
        "<answer>(b)</answer>",
        "<answer>b.</answer>",
        "<answer>B) A minor</answer>",
        "<answer>**A minor**</answer>",
        "<answer>The correct answer is: B</answer>",
    ],
)
def test_bug_report_inputs_score_one(completion):
    assert mcq_accuracy(None, [completion], choices=[KEYS], answer=["A minor"]) == [1.0]
    assert mcq_accuracy(None, [completion], choices=[KEYS], answer=["B"]) == [1.0]
    assert mcq_accuracy(None, [completion], choices=[KEYS], answer=[1]) == [1.0]


def test_answers_by_index_letter_or_text_and_loader_agrees_with_scorer():
    choices = ["piano", "violin", "flute"]
    for answer in ("Piano ", "piano", "A", "a", 0):
        row = Row(id="r", audio="x.wav", prompt="Which instrument?", choices=choices, answer=answer)
        assert check_fields(row) == [], answer  # the loader accepts it ...
        assert mcq_accuracy(None, ["<answer>piano</answer>"], choices=[choices], answer=[answer]) == [
            1.0
        ]  # ... and so
    for answer in ("cello", "D", 3, -1, True):
        row = Row(id="r", audio="x.wav", prompt="Which instrument?", choices=choices, answer=answer)
        assert [b.field for b in check_fields(row)] == ["answer"], answer
        with pytest.raises(ValueError, match="designates none of the choices"):
            mcq_accuracy(None, ["piano"], choices=[choices], answer=[answer])


def test_prefer_is_checked():
    with pytest.raises(ValueError, match="prefer must be one of"):
        Choices(["x", "y"], prefer="number")


def test_markdown_and_symbol_choices():
    assert named_choices("**Answer:** B", ["piano", "violin"]) == {1}
    assert named_choices("__violin__", ["piano", "violin"]) == {1}
    assert named_choices("light_switch_clicking", ["light_switch_clicking", "doorbell"]) == {0}
    assert Choices(["🙂", "🙁"]).answer_index("🙂") == 0 and named_choices("<answer>🙁</answer>", ["🙂", "🙁"]) == {1}
    assert Choices(["-", "+"]).answer_index("+") == 1


@pytest.mark.parametrize(
    "completion,choices,expected",
    [
        ("<answer>Am</answer>", ["C major", "A minor", "G major", "E minor"], {1}),
        ("<answer>a minor key</answer>", ["C major", "A minor", "G major", "E minor"], {1}),
        ("<answer>gb major</answer>", ["F# major", "C major"], {0}),  # enharmonic: the same key
        ("<answer>am7</answer>", ["A:min7", "C:maj", "A:min"], {0}),  # mir_eval chord labels as choices
        ("<answer>C#m</answer>", ["Db:min", "C#:maj"], {0}),
        ("<answer>Cm</answer>", ["C major", "A minor"], set()),  # a key that is no choice names nothing
        ("<answer>Db</answer>", ["C#:maj", "D:maj"], set()),  # a bare note name is no chord claim
        ("I hear it in a minor key, sad", ["C major", "A minor"], set()),  # in prose, "a" is the article
        ("I hear it in A minor, sad", ["C major", "A minor"], {1}),
    ],
)
def test_music_labels_by_meaning(completion, choices, expected):
    assert named_choices(completion, choices) == expected

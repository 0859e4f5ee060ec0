"""Answers in the markup models write (LaTeX, Markdown, quotes, brackets, any case, unicode accidentals) are read
as the plain answer: by ``strip_markup``, by the MCQ reward and by ``eval.score``, on every item of the real
MMAU test-mini file (``tests/fixtures/benchmarks/mmau-test-mini.json``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grpo_audio.data.schema import Row
from grpo_audio.eval import score
from grpo_audio.rewards.accuracy import MCQAccuracy
from grpo_audio.rewards.matching import Choices, named_choices
from grpo_audio.rewards.text import extract_answer, last_boxed, normalize, strip_markup

MMAU = Path(__file__).resolve().parents[1] / "fixtures" / "benchmarks" / "mmau-test-mini.json"

# Each markup form, as a format string around the answer.
MARKUP = {
    "math": "${}$",
    "math text": "$\\text{{{}}}$",
    "inline math": "\\({}\\)",
    "boxed": "\\boxed{{{}}}",
    "boxed text": "\\boxed{{\\text{{{}}}}}",
    "textbf": "\\textbf{{{}}}",
    "mathrm": "\\mathrm{{{}}}",
    "bold": "**{}**",
    "italics": "*{}*",
    "underscores": "__{}__",
    "code": "`{}`",
    "single quotes": "'{}'",
    "double quotes": '"{}"',
    "curly quotes": "“{}”",
    "brackets": "[{}]",
}
CONTEXTS = ("<answer>{}</answer>", "ANSWER: {}", "{}", "<think>Maybe not.</think>\nThe answer is {}")


def _items() -> list[dict]:
    """Every item but 7a1dcecc, whose choices run two entries together (see test_matching.py)."""
    items = json.loads(MMAU.read_text())
    return [i for i in items if not any("Based on the given audio" in c for c in i["choices"])]


def _single_letter(text: str) -> bool:
    core = text.strip().rstrip(".")
    return len(core) == 1 and core.isalpha()


def _completions(item_no: int, letter: str, text: str) -> dict[str, list[str]]:
    """The choice (its letter and its text) in every markup form; letter case, text case and the context around the
    answer rotate over items and forms, so every variant meets every form across the file. A text that is a single
    letter is a letter once bracketed ("[D]" reads as "(D)"), so it is not given in brackets as a text."""
    out: dict[str, list[str]] = {"letter": [], "text": [], "lettered": []}
    for m, form in enumerate(MARKUP.values()):
        turn = item_no + m
        context = CONTEXTS[turn % len(CONTEXTS)]
        said_letter = letter if turn % 2 else letter.lower()
        said_text = (text.replace("#", "♯"), text.upper(), text.lower())[turn % 3]
        out["letter"].append(context.format(form.format(said_letter)))
        if not (form == "[{}]" and _single_letter(text)):
            out["text"].append(context.format(form.format(said_text)))
        out["lettered"].append(context.format(form.format(f"({letter}) {text}")))
    return out


def _cases() -> dict[str, list[tuple[str, list[str], str, float]]]:
    """(completion, choices, answer, expected score) by the prompt's ``prefer``: letters under ``letter``, texts
    under ``text``, "(C) D" (a letter with its own text) under both (alternate markup forms in each); the right
    choice scores 1, a wrong one 0."""
    cases: dict[str, list] = {"letter": [], "text": []}
    for n, item in enumerate(_items()):
        choices = item["choices"]
        options = Choices(choices)
        right = options.answer_index(item["answer"])
        wrong = next(k for k in range(len(choices)) if options.canonical[k] != right)
        for index, expected in ((right, 1.0), (wrong, 0.0)):
            forms = _completions(n, chr(65 + index), choices[index])
            cases["letter"] += [
                (c, choices, item["answer"], expected) for c in forms["letter"] + forms["lettered"][::2]
            ]
            cases["text"] += [(c, choices, item["answer"], expected) for c in forms["text"] + forms["lettered"][1::2]]
    return cases


@pytest.fixture(scope="module")
def cases():
    return _cases()


@pytest.mark.parametrize("prefer", ["letter", "text"])
def test_every_mmau_item_in_every_markup_scores_in_the_reward_and_the_evaluation(cases, prefer):
    """The right choice, as its letter or as its text, in each markup form scores 1.0; a wrong one scores 0.0:
    in ``mcq_accuracy`` and in ``eval.score``."""
    completions, choices, answers, expected = map(list, zip(*cases[prefer], strict=True))
    assert len(completions) > 40_000 and expected.count(1.0) == expected.count(0.0)
    rewards = MCQAccuracy(prefer=prefer)(None, completions, choices=choices, answer=answers)
    wrong = [(c, a, r) for c, a, r, e in zip(completions, answers, rewards, expected, strict=True) if r != e]
    assert wrong == []
    rows = [
        Row(id=str(i), audio="x.wav", prompt="q", choices=ch, answer=a)
        for i, (ch, a) in enumerate(zip(choices, answers, strict=True))
    ]
    report = score(rows, completions, prefer=prefer)
    assert [r.correct for r in report.results] == expected
    assert report.mcq_accuracy == 0.5 and report.choice_rate == 1.0


def test_a_letter_followed_by_its_own_text_names_one_choice():
    """ "(C) D" among the note names ``["G", "A#", "D", "E"]`` is choice C (whose text is "D"), not C and the letter
    D; a letter followed by another choice's text still names both (two answers score 0)."""
    item = next(i for i in _items() if i["id"].startswith("b11438e7"))
    choices = item["choices"]
    assert choices == ["G", "A#", "D", "E"] and item["answer"] == "D"
    for prefer in ("letter", "text"):
        for said in ("(C) D", "C) D", "C. D", "**(C) D**", "$\\text{(C) D}$", "(c) d"):
            assert named_choices(said, choices, prefer) == {2}, (prefer, said)
        assert named_choices("(D) E", choices, prefer) == {3}
        assert named_choices("(B) A♯", choices, prefer) == {1}
        assert named_choices("(C) E", choices, prefer) == {2, 3}


def test_markup_readings_in_letter_and_text_mode_on_note_names():
    """Where a bare token is both a letter and a choice's text, markup does not change which reading it gets."""
    item = next(i for i in _items() if i["id"].startswith("b11438e7"))  # ["G", "A#", "D", "E"], answer "D"
    for said in ("\\boxed{D}", "**D**", "$d$", "“D”", "`D`"):
        assert named_choices(said, item["choices"], "text") == {2}, said  # the note D
        assert named_choices(said, item["choices"], "letter") == {3}, said  # letter D: the note E
    for said in ("[D]", "\\boxed{(D)}", "**(D)**"):  # an explicit letter is a letter in both modes
        assert named_choices(said, item["choices"], "text") == {3}, said


@pytest.mark.parametrize(
    "text,plain",
    [
        ("$B$", "B"),
        ("$$B$$", "B"),
        ("$\\text{B}$", "B"),
        ("\\(B\\)", "B"),
        ("\\[B\\]", "B"),
        ("\\boxed{B}", "B"),
        ("\\boxed{\\text{B}}", "B"),
        ("\\boxed{\\textbf{\\mathrm{B}}}", "B"),
        ("\\textbf{B}", "B"),
        ("\\mathrm{B}", "B"),
        ("**B**", "B"),
        ("*B*", "B"),
        ("__B__", "B"),
        ("`B`", "B"),
        ("```B```", "B"),
        ("<strong>B</strong>", "B"),
        ("'B'", "B"),
        ('"B"', "B"),
        ("“B”", "B"),
        ("‘B’", "B"),
        ("«B»", "B"),
        ("[B]", "(B)"),
        ("{B}", "(B)"),
        ("【B】", "(B)"),
        ("ＡＮＳＷＥＲ：Ｂ", "ANSWER:B"),  # full-width forms, NFKC
        ("## Answer: **B**", "Answer: B"),
        ("> B", "B"),
        ("F♯ minor", "F# minor"),
        ("B♭ major", "Bb major"),
        ("C♮ major", "C major"),
        ("$F^\\sharp$ minor", "F# minor"),
        ("$B^{\\flat}$ major", "Bb major"),
        ("C\\# major", "C# major"),
        ("Berman’s", "Berman's"),
        ("'Berman's'", "Berman's"),
        ("rock 'n' roll", "rock n roll"),
        ("light_switch_clicking", "light_switch_clicking"),
        ("it costs $5", "it costs $5"),
        ("*", "*"),  # nothing but markup: kept as it is
        ("G#:min7(4,*5)/1", "G#:min7(4,*5)/1"),  # a mir_eval omission is no emphasis
        ("**G#:min7(*1)/b7**", "G#:min7(*1)/b7"),
    ],
)
def test_strip_markup(text, plain):
    assert strip_markup(text) == plain


def test_boxed_answers_and_open_answers():
    assert last_boxed("\\boxed{A} then \\boxed{\\text{C major}} at last") == "\\text{C major}"
    assert last_boxed("\\boxed{unclosed") is None and last_boxed("none") is None
    # without an answer block, a boxed answer is the answer; inside think blocks it is not
    assert extract_answer("It is \\boxed{B} because A is wrong.") == "B"
    assert extract_answer("<think>\\boxed{A}</think> so B") == "so B"
    assert extract_answer("<answer>\\boxed{C}</answer> \\boxed{A}") == "\\boxed{C}"
    assert named_choices("I think A is out, hence \\boxed{B}.", ["piano", "violin"]) == {1}
    # open answers: normalize reads through markup too
    assert normalize("\\boxed{120}") == "120" and normalize("**The A Minor**") == "a minor"
    assert normalize("$\\text{F}^\\sharp$ Major") == "f# major"


def test_an_answer_listing_several_letters_names_each_of_them():
    """A hedge ("Answer: B, C", "answer: B or C", in any markup) names every letter it lists, and so scores 0; a
    choice's own text after the letter ("B, A minor") is not a second letter."""
    choices = Choices(["C major", "A minor", "G major", "E minor"])
    for hedge in ("ANSWER: B, C", "Answer: B or C", "ANSWER: $B$ or $C$", "The answer is B/C", "answer: B and C"):
        assert choices.named(hedge) == {1, 2}, hedge
    for one in ("Answer: B", "The answer is B, A minor", "Answer: B, as the third is minor"):
        assert choices.named(one) == {1}, one

"""The synthetic corpus: its ground truth is checked by signal analysis, never by re-reading the generator."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import mir_eval
import numpy as np
import pytest
import soundfile as sf

from grpo_audio.cli import main
from grpo_audio.config import ConfigError
from grpo_audio.data.benchmarks import THINK_INSTRUCTION, build_prompt, read_benchmark
from grpo_audio.data.loaders import load_manifest
from grpo_audio.data.synthetic import (
    BEATS_PER_BAR,
    QUESTIONS,
    SR,
    TIMBRES,
    midi_to_hz,
    render_chord,
    render_key,
    render_note,
    render_rhythm,
    write_corpus,
)
from grpo_audio.music_vocab import PITCH_CLASSES
from grpo_audio.rewards.matching import ANSWER_FORMATS, Choices

C4 = 261.6256


def chroma(wave: np.ndarray, sr: int = SR) -> np.ndarray:
    """Energy per pitch class (0 = C) from the magnitude spectrum between 25 Hz and 5 kHz."""
    spec = np.abs(np.fft.rfft(wave * np.hanning(len(wave)))) ** 2
    freqs = np.fft.rfftfreq(len(wave), 1 / sr)
    keep = (freqs > 25) & (freqs < 5000)
    pcs = np.round(12 * np.log2(freqs[keep] / C4)).astype(int) % 12
    return np.bincount(pcs, weights=spec[keep], minlength=12)


def correct(row) -> str:
    """The text of the choice a row's answer (a letter or a choice's text) designates."""
    return row.choices[Choices(row.choices).answer_index(row.answer)]


def onsets(wave: np.ndarray, sr: int = SR) -> np.ndarray:
    """Onset times (s): peaks of the positive energy difference in 5 ms frames."""
    hop = sr // 200
    energy = np.array([np.sum(wave[i : i + hop] ** 2) for i in range(0, len(wave) - hop, hop)])
    flux = np.maximum(0.0, np.diff(np.log(energy + 1e-9)))
    peaks = [i for i in range(1, len(flux) - 1) if flux[i] > 2.0 and flux[i] >= flux[i - 1] and flux[i] > flux[i + 1]]
    kept = []
    for p in peaks:  # one onset per 100 ms
        if not kept or p - kept[-1] > 20:
            kept.append(p)
    return (np.array(kept) + 1) * hop / sr


def test_c_major_triad_peaks_at_c_e_g():
    wave = render_chord(0, "major", "piano", 2.0, rng=None, register=60)
    spec = np.abs(np.fft.rfft(wave))
    freqs = np.fft.rfftfreq(len(wave), 1 / SR)
    top3 = sorted(freqs[np.argsort(spec)[-40:]])  # the three strongest peaks (with their neighbour bins)
    for target in (C4, C4 * 2 ** (4 / 12), C4 * 2 ** (7 / 12)):
        assert min(abs(f - target) for f in top3) < 1.0
    assert set(np.argsort(chroma(wave))[-3:]) == {0, 4, 7}


@pytest.mark.parametrize("instrument", sorted(set(TIMBRES) - {"bell"}))
@pytest.mark.parametrize("chord", ["A:min", "F#:maj7", "D:7", "Bb:dim", "E:aug", "G:min7"])
def test_chords_sound_their_notes(chord, instrument):
    root, bitmap, _ = mir_eval.chord.encode(chord)  # independent reference for the chord's pitch classes
    notes = {(root + i) % 12 for i in np.flatnonzero(bitmap)}
    quality = {
        "min": "minor",
        "maj7": "major seventh",
        "7": "dominant seventh",
        "dim": "diminished",
        "aug": "augmented",
        "min7": "minor seventh",
    }[chord.split(":")[1]]
    wave = render_chord(root, quality, instrument, 2.0, np.random.default_rng(0), register=48)
    assert set(np.argsort(chroma(wave))[-len(notes) :]) == notes


def test_120_bpm_onsets_are_half_a_second_apart():
    for style in ("click", "drums"):
        t = onsets(render_rhythm(120, "4/4", style, 6.0, np.random.default_rng(1)))
        assert len(t) >= 10 and abs(np.median(np.diff(t)) - 0.5) < 0.01, style


def test_meter_accents_recur_every_bar():
    for meter, period in (("3/4", 3), ("4/4", 4), ("2/4", 2)):
        wave = render_rhythm(100, meter, "click", 8.0, np.random.default_rng(2))
        t = onsets(wave)
        hop = SR // 200
        level = np.array([np.abs(wave[int(x * SR) - hop : int(x * SR) + 3 * hop]).max() for x in t])
        strong = np.flatnonzero(level > 0.75 * level.max())
        assert (np.diff(strong) == period).all() and len(strong) >= 3, meter


def test_key_melody_uses_the_scale_and_ends_on_the_tonic():
    wave, _ = render_key(9, "minor", "flute", "melody", 120, np.random.default_rng(3), register=48)
    top7 = set(np.argsort(chroma(wave))[-7:])
    assert top7 == {9, 11, 0, 2, 4, 5, 7}  # A natural minor
    last = wave[-int(0.8 * SR) :]
    assert np.argmax(chroma(last)) == 9


def test_instruments_have_distinct_spectra():
    spectra = {}
    for name, timbre in TIMBRES.items():
        w = render_note(69, 1.0, timbre)
        s = np.abs(np.fft.rfft(w))[:8000]
        spectra[name] = s / np.linalg.norm(s)
    names = sorted(spectra)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert spectra[a] @ spectra[b] < 0.97, (a, b)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("syn") / "c", n=30, seed=7)


def test_corpus_labels_match_the_audio(corpus):
    rows = [json.loads(x) for x in corpus["skills"].read_text().splitlines()]
    base = corpus["skills"].parent
    checked = {"chord": 0, "tempo": 0}
    for row in rows:
        if not row["id"].endswith("-mcq"):
            continue
        wave, sr = sf.read(base / row["audio"], dtype="float32")
        if row["task"] == "chord" and row["metadata"]["instrument"] != "bass":
            root, bitmap, _ = mir_eval.chord.encode(row["metadata"]["chord"])
            notes = {(root + i) % 12 for i in np.flatnonzero(bitmap)}
            assert set(np.argsort(chroma(wave, sr))[-len(notes) :]) == notes, row["id"]
            checked["chord"] += 1
        if row["task"] == "tempo":
            gap = np.median(np.diff(onsets(wave, sr)))
            assert abs(gap - 60 / row["metadata"]["tempo"]) < 0.015, row["id"]
            checked["tempo"] += 1
    assert checked["chord"] >= 3 and checked["tempo"] >= 3


def test_corpus_files_rows_and_loaders(corpus):
    for name in ("skills", "think", "rl", "eval"):
        rows = load_manifest(corpus[name], family="music_flamingo")
        assert rows, name
    think = load_manifest(corpus["think"], decode=False)
    assert all(r.thinking and r.answer for r in think)
    mcq_think = [r for r in think if r.choices]
    assert len(mcq_think) * 2 == len(think)  # a multiple-choice and an open question per clip
    assert all(r.answer in r.choices or r.answer in "ABCD" for r in mcq_think)
    rl = load_manifest(corpus["rl"], decode=False)  # per clip: a multiple-choice, an open and a caption prompt
    kinds = Counter(("mcq" if r.choices else "caption" if r.task == "caption" else "open") for r in rl)
    assert kinds["mcq"] == kinds["open"] == kinds["caption"] == len(rl) // 3
    assert all(r.answer for r in rl if r.task != "caption")
    mcq = [r for r in load_manifest(corpus["skills"], decode=False) if r.choices]
    assert {r.task for r in mcq} == {"chord", "key", "tempo", "meter", "instrument"}
    assert {r.choices.index(correct(r)) for r in mcq} == {0, 1, 2, 3}  # the answer's place is shuffled
    for r in mcq:
        assert len(set(r.choices)) == 4


def test_captions_keep_roman_numerals(corpus):
    captions = [r.caption for r in load_manifest(corpus["skills"], decode=False) if r.caption]
    progressions = [c for c in captions if "progression" in c]
    assert progressions and all(c.startswith("A I-IV-V-I chord progression in the key of ") for c in progressions)


def test_two_part_choices_give_nothing_away(corpus):
    """Chord and key choices are a 2 x 2 grid: each root (tonic) and each quality (mode) shows up twice, so
    the correct choice cannot be told from the choices alone (as "the root most choices share" could)."""
    rows = [r for r in load_manifest(corpus["skills"], decode=False) if r.choices and r.task in ("chord", "key")]
    assert {r.task for r in rows} == {"chord", "key"}
    for r in rows:
        firsts = Counter(c.split(" ", 1)[0] for c in r.choices)
        seconds = Counter(c.split(" ", 1)[1] for c in r.choices)
        assert sorted(firsts.values()) == [2, 2] and sorted(seconds.values()) == [2, 2], r.choices


def _digest(folder):
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_different_seed_different_clips(tmp_path):
    a = _digest(write_corpus(tmp_path / "a", n=6, seed=1)["rl"].parent)
    b = _digest(write_corpus(tmp_path / "b", n=6, seed=1)["rl"].parent)
    c = _digest(write_corpus(tmp_path / "c", n=6, seed=2)["rl"].parent)
    assert a == b
    clips = [k for k in a if k.startswith("clips/")]
    assert clips and all(a[k] != c[k] for k in clips)


def test_eval_split_shares_no_clip(corpus):
    base = corpus["eval"].parent
    eval_audio = {json.loads(x)["audio"] for x in corpus["eval"].read_text().splitlines()}
    train_audio = {
        json.loads(x)["audio"] for n in ("skills", "think", "rl") for x in corpus[n].read_text().splitlines()
    }
    assert eval_audio and train_audio and not eval_audio & train_audio
    digest = lambda paths: {hashlib.sha256((base / p).read_bytes()).hexdigest() for p in paths}  # noqa: E731
    assert not digest(eval_audio) & digest(train_audio)


def test_rl_prompts_on_clips_of_their_own(tmp_path):
    """With n_rl, rl.jsonl asks about clips no supervised row shows; the other manifests do not change."""
    shared = write_corpus(tmp_path / "a", n=10, seed=4)
    own = write_corpus(tmp_path / "b", n=10, seed=4, n_rl=5)
    audio = lambda path: [json.loads(x)["audio"] for x in path.read_text().splitlines()]  # noqa: E731
    supervised = set(audio(own["skills"]) + audio(own["think"]))
    assert set(audio(shared["rl"])) <= supervised  # the default: GRPO asks about the training clips
    rl = audio(own["rl"])
    assert len(set(rl)) == 5 and len(rl) == 15 and not set(rl) & supervised and not set(rl) & set(audio(own["eval"]))
    for name in ("skills", "think", "eval"):
        assert own[name].read_bytes() == shared[name].read_bytes(), name
    rows = load_manifest(own["rl"], decode=False)
    assert {r.task for r in rows} == {"chord", "key", "tempo", "meter", "instrument", "caption"}


def test_synth_cli(tmp_path, capsys):
    assert main(["synth", f"output_dir={tmp_path / 's'}", "n=5", "n_eval=1", "seed=3"]) == 0
    out = capsys.readouterr().out
    assert "skills    15 rows" in out and "eval_mmau 1 rows" in out and (tmp_path / "s" / "eval.jsonl").exists()
    assert main(["synth", f"output_dir={tmp_path / 'r'}", "n=5", "n_eval=1", "n_rl=3"]) == 0
    assert "rl        9 rows" in capsys.readouterr().out
    assert main(["synth", f"output_dir={tmp_path / 't'}", "n=5", "answer_formats=[text]"]) == 0
    text_only = [r for r in load_manifest(tmp_path / "t" / "skills.jsonl", decode=False) if r.choices]
    assert text_only and all(r.answer in r.choices for r in text_only)
    with pytest.raises(ConfigError, match=r"answer_formats: \['letters'\]: choose one or more of"):
        main(["synth", f"output_dir={tmp_path / 'u'}", "n=5", "answer_formats=[letters]"])
    args = [
        "synth",
        f"output_dir={tmp_path / 'm'}",
        "n=10",
        "n_eval=2",
        "chord_qualities=[major,minor]",
        "tempo_step=24",
    ]
    assert main([*args, "registers=[84]"]) == 0
    rows = load_manifest(tmp_path / "m" / "skills.jsonl", decode=False)
    assert {r.metadata["quality"] for r in rows if r.task == "chord"} <= {"major", "minor"}
    assert {r.metadata["tempo"] for r in rows if r.task in ("tempo", "meter")} <= {64, 88, 112, 136, 160}
    chords = {r.audio: r.metadata for r in rows if r.task == "chord"}
    assert chords
    for path, meta in chords.items():  # built up from C6
        wave, _ = sf.read(tmp_path / "m" / path)
        assert lowest_partial_hz(wave) > 0.97 * midi_to_hz(84 + 12 * TIMBRES[meta["instrument"]].octave)


def lowest_partial_hz(wave: np.ndarray, sr: int = SR) -> float:
    """The lowest frequency whose magnitude reaches a tenth of the spectrum's peak."""
    mag = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.argmax(mag >= 0.1 * mag.max()) * sr / len(wave))


@pytest.mark.parametrize("register", [36, 60, 84])
def test_registers_set_the_octave_of_pitched_clips(register):
    """A chord clip's lowest partial is its root, from the label space's register up (the timbre's octave
    shift applied); the default space plays in C3-C5."""
    from grpo_audio.data.synthetic import LabelSpace, make_clip

    assert LabelSpace().registers == (48, 60, 72)
    space = LabelSpace(registers=(register,))
    for i in range(12):
        clip = make_clip("chord", f"c{i}", np.random.default_rng(i), space)
        root = PITCH_CLASSES.index(clip.metadata["root"])
        low = register + root + 12 * TIMBRES[clip.metadata["instrument"]].octave
        assert lowest_partial_hz(clip.wave) == pytest.approx(midi_to_hz(low), rel=0.03), clip.metadata


def test_label_space_limits_chords_and_tempi(tmp_path):
    from grpo_audio.data.synthetic import LabelSpace

    space = LabelSpace(chord_qualities=("major", "minor"), tempo_step=16)
    assert space.tempi == (64, 80, 96, 112, 128, 144, 160)
    rows = load_manifest(write_corpus(tmp_path, n=40, seed=3, space=space)["skills"], decode=False)
    chords = [r for r in rows if r.task == "chord" and r.choices]
    tempi = [r for r in rows if r.task == "tempo" and r.choices]
    assert chords and tempi
    for r in chords:  # answer and every distractor drawn from the two qualities
        assert {c.split(" ", 1)[1] for c in r.choices} == {"major", "minor"}, r.choices
    for r in tempi + [r for r in rows if r.task == "meter" and r.choices]:
        assert r.metadata["tempo"] in space.tempi
    for r in tempi:
        assert {int(c) for c in r.choices} <= set(space.tempi) and len(set(r.choices)) == 4
    full = {
        r.metadata["quality"]
        for r in load_manifest(write_corpus(tmp_path / "f", n=80, seed=3)["skills"], decode=False)
        if r.task == "chord"
    }
    assert len(full) > 2  # the default space draws from all seven qualities


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"chord_qualities": ("major",)}, "chord_qualities"),
        ({"chord_qualities": ("major", "sus4")}, "chord_qualities"),
        ({"tempo_step": 0}, "tempo_step"),
        ({"tempo_step": 30}, "tempo_step"),
        ({"registers": ()}, "registers"),
        ({"registers": (70,)}, "registers"),
        ({"registers": (96,)}, "registers"),
    ],
)
def test_label_space_rejects_bad_values(kwargs, field):
    from grpo_audio.data.synthetic import LabelSpace

    with pytest.raises(ValueError, match=field):
        LabelSpace(**kwargs)


def test_chains_start_from_what_is_heard_and_end_on_the_answer(corpus):
    """Each chain names the answer's percept first (the chord, the home note and mode, the beat rate, the
    accent cycle, the timbre), grounds it in theory, and ends on the answer; its notes are the chord's notes."""
    think = load_manifest(corpus["think"], decode=False)
    assert {r.task for r in think} == {"chord", "key", "tempo", "meter", "instrument"}
    for r in think:
        m = r.metadata
        first = r.thinking.split(".")[0] if r.task != "tempo" else r.thinking.split(":")[0]
        expect = {
            "chord": m.get("chord_name"),
            "key": m.get("tonic"),
            "tempo": str(m.get("tempo")),
            "meter": str(BEATS_PER_BAR.get(m.get("meter"), "two groups of three")),
            "instrument": m.get("instrument"),
        }[r.task]
        assert expect in first, (r.id, r.thinking)
        answer = correct(r) if r.choices else r.answer
        assert r.thinking.rstrip(".").endswith(answer) or r.thinking.rstrip(".").endswith(f"{answer} BPM"), r.thinking
        if r.task == "chord":
            root, bitmap, _ = mir_eval.chord.encode(m["chord"])
            named = r.thinking.split("Its notes are ")[1].split(":")[0].replace(" and ", ", ").split(", ")
            assert {PITCH_CLASSES.index(n) for n in named} == {(root + i) % 12 for i in np.flatnonzero(bitmap)}


def _asked(row, think: bool) -> tuple[str, str]:
    """(wording, answer format) of a multiple-choice row whose prompt is ``build_prompt``'s for one of its task's
    wordings; fails otherwise."""
    for wording in QUESTIONS[row.task]:
        for fmt in ANSWER_FORMATS:
            if row.prompt == build_prompt(wording, row.choices, fmt, think):
                return wording, fmt
    raise AssertionError(f"{row.id}: not a benchmark prompt: {row.prompt!r}")


@pytest.mark.parametrize("name, think", [("skills", False), ("think", True), ("rl", True), ("eval", True)])
def test_questions_are_asked_as_benchmarks_ask_them(corpus, name, think):
    """Every multiple-choice row is the prompt `grpo-audio eval` builds for a benchmark item (one of the task's
    wordings, lettered choices, the letter or text instruction, the think instruction where chains are asked
    for), answered in the form it asks for; open rows word their question in every way too."""
    rows = load_manifest(corpus[name], decode=False)
    asked = []
    for r in (r for r in rows if r.choices):
        wording, fmt = _asked(r, think)
        assert (r.answer in "ABCD") == (fmt == "letter"), (r.id, fmt, r.answer)
        truth = {"chord": "chord_name", "key": "key", "tempo": "tempo", "meter": "meter", "instrument": "instrument"}
        assert correct(r) == str(r.metadata[truth[r.task]]), r.id
        asked.append((r.task, wording, fmt))
    assert {fmt for _, _, fmt in asked} == set(ANSWER_FORMATS)
    if name != "eval":  # 30 clips (the eval split has 7): several wordings a task
        assert len({(task, wording) for task, wording, _ in asked}) >= 2 * len(QUESTIONS)
    for r in (r for r in rows if not r.choices and r.task != "caption"):
        assert any(r.prompt.startswith(w) for w in QUESTIONS[r.task]), r.prompt
        assert r.prompt.endswith(THINK_INSTRUCTION) == think, r.prompt


@pytest.mark.parametrize("fmt", ANSWER_FORMATS)
def test_held_out_questions_as_an_mmau_file(corpus, fmt):
    """eval_mmau.json reads as MMAU test-mini; each item is the eval split's question about the same clip, with
    the same choices and the same correct choice, asked as `grpo-audio eval` asks in either answer format."""
    bench = read_benchmark(corpus["eval_mmau"], answer_format=fmt, think=True)
    assert bench.layout == "mmau" and not bench.bad
    own = {r.audio: r for r in load_manifest(corpus["eval"], decode=False) if r.choices}
    assert len(bench.rows) == len(own) > 0
    for r in bench.rows:
        mine = own[str(corpus["eval"].parent / bench.items[bench.item_of[r.id]]["audio_id"])]
        wording, _ = _asked(mine, think=True)
        assert r.prompt == build_prompt(wording, mine.choices, fmt, think=True)
        assert r.choices == mine.choices and correct(r) == correct(mine)

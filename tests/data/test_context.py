"""The context check: a prompt with its audio tokens and the completion's room must fit the engine's context.

The audio tokens come from each family's rule over the clip's duration (``ModelFamily.audio_token_count``), checked
here against what the real processors expand the audio into; a row that does not fit is a bad row at load and in
``check_data``, never a crash when a step draws it.
"""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
from transformers import AutoConfig, AutoProcessor

from grpo_audio.data.check import check_data
from grpo_audio.data.collate import collate_prompts
from grpo_audio.data.loaders import from_records, load_manifest
from grpo_audio.data.schema import ContextLimit, DataError, Row, validate_rows
from grpo_audio.models import get_family
from grpo_audio.models.base import context_length
from tests.conftest import FAMILY_NAMES, sine

SR = 16000
K = 256  # max_new_tokens
PROMPT = "Which chord is played?"


def real_prompt(family, processor, seconds: float) -> tuple[int, int]:
    """(prompt tokens, audio tokens) of one row as the processor expands it, on a clip of ``seconds``; through the
    collator when the clip is within the family's limit (the loaders cut longer ones before the collator)."""
    row, wave = Row(id="r", audio=None, prompt=PROMPT), np.zeros(round(seconds * SR), np.float32)
    if seconds <= family.max_audio_seconds:
        ids = collate_prompts(family, processor, [row], [wave]).prompt_ids(0)
    else:
        ids = family.process(processor, [row.render(family, processor)], [wave])["input_ids"][0]
    return len(ids), int((ids == processor.tokenizer.convert_tokens_to_ids(family.audio_token)).sum())


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_audio_token_rule_is_the_processors(name, tiny_checkpoint):
    """Per family, the rule gives the processor's audio tokens and prompt length: within a window, at a window's
    edge, over several windows, and past the processor's own limit (where it cuts the audio)."""
    family = get_family(name)
    processor = AutoProcessor.from_pretrained(tiny_checkpoint(name))
    context = ContextLimit(processor, max_model_len=10**6, max_new_tokens=K)
    row = Row(id="r", audio=None, prompt=PROMPT)
    for seconds in (1.0, 12.3456, 29.9, 30.0, 31.0, 95.0, family.max_audio_seconds + 1):
        prompt, audio = real_prompt(family, processor, seconds)
        assert family.audio_token_count(seconds) == audio, (name, seconds)
        assert context.prompt_tokens(family, row, seconds) == (prompt, audio), (name, seconds)
    assert family.audio_token_count(30.0) == 750  # the families' documented tokens per window


def test_context_length_is_max_model_len_else_the_models(tiny_checkpoint):
    path = tiny_checkpoint("audio_flamingo3")
    config = AutoConfig.from_pretrained(path)
    assert config.text_config.max_position_embeddings == 8192
    assert context_length(config, 1000) == 1000
    assert context_length(config, 0) == context_length(config, None) == 8192
    assert ContextLimit.from_checkpoint(path, K).max_model_len == 8192
    assert ContextLimit.from_checkpoint(path, K, max_model_len=3000).max_model_len == 3000


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """A 10-minute clip (15000 audio tokens for Audio Flamingo 3: more than the tiny model's 8192 positions) and a
    2-second one."""
    d = tmp_path_factory.mktemp("context")
    sf.write(d / "long.wav", np.zeros(600 * SR, np.int16), SR, subtype="PCM_16")
    sf.write(d / "short.wav", sine(2.0), SR)
    rows = [
        {"id": "long", "audio": "long.wav", "prompt": PROMPT},
        {"id": "short", "audio": "short.wav", "prompt": PROMPT},
    ]
    path = d / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def af3(tiny_checkpoint):
    """The tiny Audio Flamingo 3's directory, family, processor and the real prompt lengths of both rows."""
    path = tiny_checkpoint("audio_flamingo3")
    family, processor = get_family("audio_flamingo3"), AutoProcessor.from_pretrained(path)
    return SimpleNamespace(
        path=path,
        family=family,
        processor=processor,
        long=real_prompt(family, processor, 600.0),
        short=real_prompt(family, processor, 2.0),
    )


def long_reason(af3, context: int) -> str:
    prompt, audio = af3.long
    assert audio == 15000
    return (
        f"prompt is {prompt} tokens with its audio (15000 audio tokens for 600.0 s) + max_new_tokens {K} = "
        f"{prompt + K} > context {context}"
    )


def test_check_data_reports_the_row_that_does_not_fit(manifest, af3, capsys):
    assert check_data(manifest, model=af3.path, max_new_tokens=K) == 1
    out = capsys.readouterr().out
    assert f"BAD  long: prompt: {long_reason(af3, 8192)}" in out
    prompt = af3.short[0]
    assert f"ok   short: 2.0 s, 50 audio tokens, {prompt} + {K} = {prompt + K} of 8192 tokens" in out
    assert "2 rows: 1 ok, 1 bad" in out and "context 8192 tokens with max_new_tokens 256" in out
    assert check_data(manifest, model=af3.path, max_new_tokens=K, bad_rows="skip") == 0
    with pytest.raises(ValueError, match="checkpoint .* is a audio_flamingo3 model"):
        check_data(manifest, family="music_flamingo", model=af3.path)


def test_the_check_data_command_takes_the_model_and_its_context(manifest, af3, capsys):
    from grpo_audio.cli import main

    argv = ["check-data", str(manifest), "--model", str(af3.path), "--max-new-tokens", str(K)]
    assert main([*argv, "--max-model-len", "4096"]) == 1
    assert f"BAD  long: prompt: {long_reason(af3, 4096)}" in capsys.readouterr().out
    assert main([*argv, "--bad-rows", "skip"]) == 0


def test_load_refuses_or_skips_the_row_that_does_not_fit(manifest, af3, caplog):
    context = ContextLimit(af3.processor, 8192, K)
    with pytest.raises(DataError) as e:
        load_manifest(manifest, family=af3.family, context=context)
    assert [(b.id, b.field) for b in e.value.bad] == [("long", "prompt")]
    assert f"1 of 2 rows are bad:\n  row 'long': field 'prompt': {long_reason(af3, 8192)}" in str(e.value)
    with caplog.at_level(logging.WARNING):
        rows = load_manifest(manifest, family=af3.family, bad_rows="skip", context=context)
    assert [r.id for r in rows] == ["short"]
    assert "skipped 1 of 2 rows" in caplog.text and long_reason(af3, 8192) in caplog.text
    assert [r.id for r in load_manifest(manifest, family=af3.family)] == ["long", "short"]  # no context, no check


def test_a_prompt_that_fits_exactly_is_accepted(manifest, af3):
    """The boundary from the processor's real count: prompt + max_new_tokens == context fits, one less does not.
    Only the tokenizer and chat template are used: the processor never runs on the audio."""
    cheap = SimpleNamespace(tokenizer=af3.processor.tokenizer, apply_chat_template=af3.processor.apply_chat_template)
    prompt = af3.short[0]
    fits = ContextLimit(cheap, prompt + K, K)
    assert [r.id for r in load_manifest(manifest, family=af3.family, bad_rows="skip", context=fits)] == ["short"]
    tight = ContextLimit(cheap, prompt + K - 1, K)
    with pytest.raises(DataError) as e:
        load_manifest(manifest, family=af3.family, context=tight)
    assert [b.id for b in e.value.bad] == ["long", "short"]
    assert f"= {prompt + K} > context {prompt + K - 1}" in e.value.bad[1].reason


def test_context_check_needs_a_family_and_decoded_audio(af3):
    context = ContextLimit(af3.processor, 8192, K)
    rows = [Row(id="a", audio=sine(1.0), sampling_rate=SR, prompt=PROMPT)]
    with pytest.raises(ValueError, match="needs a model family and decoded audio"):
        validate_rows(rows, af3.family, decode=False, context=context)
    with pytest.raises(ValueError, match="needs a model family and decoded audio"):
        validate_rows(rows, None, context=context)
    assert validate_rows(rows, af3.family, context=context).prompt_tokens == {"a": af3.short[0] - 25}


def test_every_loader_takes_the_context(af3):
    """A list of records is checked as a manifest is (the loaders share ``validate_and_apply``)."""
    records = [{"id": "a", "audio": sine(1.0), "sampling_rate": SR, "prompt": PROMPT}]
    prompt = af3.short[0] - 25  # 1 s instead of 2 s: 25 fewer audio tokens
    fits = ContextLimit(af3.processor, prompt + K, K)
    assert [r.id for r in from_records(records, af3.family, context=fits)] == ["a"]
    with pytest.raises(DataError, match=f"row 'a': field 'prompt': prompt is {prompt} tokens"):
        from_records(records, af3.family, context=ContextLimit(af3.processor, prompt + K - 1, K))


def test_the_trainer_refuses_or_skips_a_row_that_cannot_fit_before_any_step(tmp_path, tiny_checkpoint):
    """The trainer loads its rows against its engine's context (rollout.max_model_len less max_new_tokens): a
    10-minute clip is refused naming the row and its count, or skipped under data.bad_rows=skip."""
    from grpo_audio.trainer import GRPOTrainer
    from tests.test_trainer import config

    sf.write(tmp_path / "long.wav", sine(600.0), SR)
    sf.write(tmp_path / "short.wav", sine(2.0), SR)
    manifest = tmp_path / "train.jsonl"
    rows = [
        {"id": "ten-minutes", "audio": "long.wav", "prompt": PROMPT},
        {"id": "ok", "audio": "short.wav", "prompt": PROMPT},
    ]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = {"data.train": manifest, "rollout.max_model_len": 4096, "rollout.max_new_tokens": 8}
    with pytest.raises(DataError, match=r"row 'ten-minutes'.*15000 audio tokens for 600.0 s.* > context 4096"):
        GRPOTrainer(config(tmp_path, tiny_checkpoint("audio_flamingo3"), **settings))
    trainer = GRPOTrainer(
        config(tmp_path, tiny_checkpoint("audio_flamingo3"), **settings, **{"data.bad_rows": "skip"})
    )
    try:
        assert [r.id for r in trainer.train_rows] == ["ok"] and trainer.step == 0
    finally:
        trainer.close()

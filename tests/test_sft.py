"""SFT stages on TRL's SFTTrainer with the audio collator: loss on the target only, the loss goes down."""

from __future__ import annotations

import contextlib
from unittest import mock

import pytest
import torch

from grpo_audio.cli import main
from grpo_audio.data.loaders import load_manifest
from grpo_audio.data.synthetic import write_corpus
from grpo_audio.models import get_family
from grpo_audio.sft import AudioSFTCollator, TextCollator, target_text


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("sft") / "data", n=10, seed=1)


def test_targets_and_collator(corpus, tiny_checkpoint):
    from transformers import AutoProcessor

    family = get_family("music_flamingo")
    processor = AutoProcessor.from_pretrained(tiny_checkpoint(family.name))
    think = load_manifest(corpus["think"], family=family)
    text = target_text(think[0], "think")
    assert text.startswith("<think>") and text.endswith(f"<answer>{think[0].answer}</answer>")
    batch = AudioSFTCollator(family, processor, think, "think")([{"index": 0}, {"index": 1}])
    labels = batch["labels"]
    tok = processor.tokenizer
    first = labels[0][labels[0] != -100].tolist()
    assert first == tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    skills = load_manifest(corpus["skills"], family=family)
    no_thinking = [r for r in skills if not r.thinking][0]
    with pytest.raises(ValueError, match=f"row '{no_thinking.id}': field 'thinking'"):
        AudioSFTCollator(family, processor, [no_thinking], "think")
    # auto: the chain where a row has one, the answer otherwise (a cold start with replayed skills rows)
    assert target_text(think[0], "auto") == text and target_text(no_thinking, "auto") == no_thinking.answer
    mixed = AudioSFTCollator(family, processor, [think[0], no_thinking], "auto")([{"index": 0}, {"index": 1}])
    for row_labels, expected in zip(mixed["labels"], (text, no_thinking.answer), strict=True):
        got = row_labels[row_labels != -100].tolist()
        assert got == tok(expected, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def _sft(path, manifest, out, *options: str) -> None:
    assert main(["sft", f"model={path}", f"data={manifest}", f"output_dir={out}", "lr=3e-3", *options]) == 0


def _losses(printed: str) -> tuple[float, float]:
    """The first and last logged loss the sft command prints ("loss A -> B")."""
    import re

    first, last = re.search(r"^loss ([\d.]+) -> ([\d.]+)$", printed, re.M).groups()
    return float(first), float(last)


def test_sft_command_lowers_the_loss_and_saves_a_loadable_model(corpus, tiny_checkpoint, tmp_path, capsys):
    path = tiny_checkpoint("music_flamingo")
    _sft(path, corpus["skills"], tmp_path / "out", "max_steps=12", "batch_size=6", "logging_steps=1")
    out = capsys.readouterr().out
    before, after = _losses(out)
    assert after < before - 0.1, out[-2000:]
    family = get_family("music_flamingo")
    tuned = family.model_class().from_pretrained(tmp_path / "out/model")
    base = family.model_class().from_pretrained(path)
    assert not torch.equal(tuned.lm_head.weight, base.lm_head.weight)


def test_sft_with_a_frozen_audio_encoder(corpus, tiny_checkpoint, tmp_path):
    path = tiny_checkpoint("music_flamingo")
    _sft(path, corpus["skills"], tmp_path / "out", "max_steps=2", "batch_size=4", "freeze_audio_encoder=true")
    family = get_family("music_flamingo")
    tuned = dict(family.model_class().from_pretrained(tmp_path / "out/model").named_parameters())
    base = dict(family.model_class().from_pretrained(path).named_parameters())
    encoder = [n for n in base if n.startswith(family.audio_encoder_prefixes)]
    assert encoder and all(torch.equal(tuned[n], base[n]) for n in encoder)
    assert not torch.equal(tuned["lm_head.weight"], base["lm_head.weight"])


def test_text_collator_learns_the_whole_text_without_audio(corpus, tiny_checkpoint):
    from transformers import AutoProcessor

    family = get_family("music_flamingo")
    processor = AutoProcessor.from_pretrained(tiny_checkpoint(family.name))
    tok = processor.tokenizer
    rows = load_manifest(corpus["think"], decode=False)[:2] + load_manifest(corpus["skills"], decode=False)[:1]
    batch = TextCollator(family, processor, rows)([{"index": i} for i in range(3)])
    audio_ids = {tok.convert_tokens_to_ids(t) for t in ("<sound>", "<|sound_bos|>", "<|sound_eos|>")}
    assert not audio_ids & set(batch["input_ids"].flatten().tolist())
    mask = batch["attention_mask"].bool()
    assert torch.equal(batch["labels"][mask], batch["input_ids"][mask]) and (batch["labels"][~mask] == -100).all()
    first = tok.decode(batch["input_ids"][0][mask[0]])
    assert rows[0].prompt.split("\n")[0] in first and first.endswith(target_text(rows[0], "think") + tok.eos_token)
    assert tok.decode(batch["input_ids"][2][mask[2]]).endswith(f"assistant\n{rows[2].answer}{tok.eos_token}")
    # a left-padded row's positions start at 0 on its first real token
    assert (batch["position_ids"][mask] >= 0).all() and batch["position_ids"][0][mask[0]][0] == 0


def test_sft_command_text_target_lowers_the_loss(corpus, tiny_checkpoint, tmp_path, capsys):
    path = tiny_checkpoint("music_flamingo")
    _sft(
        path,
        corpus["think"],
        tmp_path / "out",
        "target=text",
        "max_steps=10",
        "batch_size=4",
        "logging_steps=1",
    )
    before, after = _losses(capsys.readouterr().out)
    assert after < before - 0.5


def test_lm_head_scores_only_the_labelled_positions_with_the_same_loss_and_gradients(
    corpus, tiny_checkpoint, tmp_path
):
    """``labels_only_lm_head``: TRL's fused head projects the labelled rows only, and the per-token log-probabilities,
    loss and every gradient are those of TRL's all-positions path; ``run_sft`` runs under it."""
    from transformers import AutoProcessor
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction
    from trl.trainer.utils import add_fused_lm_head

    from grpo_audio.models import ModelSpec, load_policy
    from grpo_audio.sft import SFTConfig, labels_only_lm_head, run_sft

    family = get_family("music_flamingo")
    path = tiny_checkpoint(family.name)
    processor = AutoProcessor.from_pretrained(path)
    rows = load_manifest(corpus["think"], family=family)
    batch = AudioSFTCollator(family, processor, rows, "think")([{"index": i} for i in range(4)])
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    positions = batch["labels"][:, 1:].numel()
    assert labelled < positions / 2  # the premise: most positions are audio, prompt or padding

    projected: list[int] = []
    apply = ChunkedLogProbFunction.apply

    def spy(hidden, *args):
        projected.append(hidden.shape[0])
        return apply(hidden, *args)

    def forward_backward(labels_only: bool):
        torch.manual_seed(0)
        model = load_policy(ModelSpec(path, family.name))
        add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
        with labels_only_lm_head() if labels_only else contextlib.nullcontext():
            out = model(**batch, fused_lm_head=True)
        loss = -out.log_probs.sum() / out.label_mask.sum()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return out.log_probs.detach(), loss.detach(), grads

    with mock.patch.object(ChunkedLogProbFunction, "apply", spy):
        log_probs, loss, grads = forward_backward(labels_only=True)
        all_log_probs, all_loss, all_grads = forward_backward(labels_only=False)
    assert projected == [labelled, positions]
    torch.testing.assert_close(log_probs, all_log_probs, rtol=0, atol=1e-6)
    torch.testing.assert_close(loss, all_loss, rtol=1e-6, atol=0)
    assert grads.keys() == all_grads.keys() and "lm_head.weight" in grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, all_grads[name], rtol=1e-5, atol=1e-7, msg=name)

    projected.clear()
    settings = SFTConfig(max_steps=1, batch_size=4, target="think", logging_steps=1, seed=0)
    with mock.patch.object(ChunkedLogProbFunction, "apply", spy):
        run_sft(load_policy(ModelSpec(path, family.name)), family, processor, rows[:4], tmp_path / "out", settings)
    assert len(projected) == 1 and projected[0] == labelled

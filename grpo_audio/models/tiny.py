"""Tiny random checkpoints of each family, built locally with no download.

A tiny checkpoint is a real model of the family (the transformers config classes with small dimensions, random
weights), a byte-level BPE tokenizer trained here with ``tokenizers`` on a built-in corpus of music vocabulary,
chat and ``<think>``/``<answer>`` text, the family's processor and chat template. The directory loads with
``AutoProcessor`` and the model class in transformers, and with vLLM (weights are written in the checkpoint key
layout vLLM expects, see ``ModelFamily.checkpoint_key_map``).

Four sizes: ``test`` keeps unit tests fast; ``demo`` is the embedded default recipe's model (2.0 M parameters,
trained in minutes on two CPU cores); ``bench`` is the larger one the benchmarks measured; ``scale`` is the one
whose memory is mostly its training state, as a real checkpoint's is (the FSDP2 memory comparison). Same family,
size and seed give byte-identical files.

Run: ``grpo-audio tiny-model music_flamingo /tmp/mf-tiny --size demo --seed 0``.
"""

from __future__ import annotations

import itertools
import json
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from ..errors import ConfigError
from ..music_vocab import CHORD_QUALITIES, FLAT_SPELLINGS, GENRES, INSTRUMENTS, INTERVAL_NAMES, METERS, PITCH_CLASSES
from . import get_family
from .base import SIZES, TinySize

BPE_VOCAB_SIZE = 2000
TINY_MARKER = "grpo_audio_tiny.json"  # what a tiny build writes beside the checkpoint: family, size, seed
CHAT_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Reasoning tags are ordinary (non-special) added tokens: they survive decoding with skip_special_tokens.
TAG_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")
ALL_AUDIO_TOKENS = ("<sound>", "<|sound_bos|>", "<|sound_eos|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>")


def builtin_corpus(seed: int = 0) -> list[str]:
    """Sentences in the register the synthetic tasks use: music theory, questions, chat, reasoning tags."""
    rng = random.Random(seed)
    lines: list[str] = []
    for root, flat in zip(PITCH_CLASSES, FLAT_SPELLINGS, strict=True):
        for quality in CHORD_QUALITIES:
            lines.append(f"The chord is a {root} {quality} chord, also spelled {flat} {quality}.")
        for mode in ("major", "minor"):
            lines.append(f"The piece is in the key of {root} {mode}; the tonic is {root}.")
            lines.append(f"Key: {flat} {mode}. Scale: {root} {mode} scale played as a melody.")
    for bpm in range(60, 181, 2):
        lines.append(f"The tempo is {bpm} BPM, about {bpm} beats per minute.")
    for meter, inst, genre in itertools.product(METERS, INSTRUMENTS, GENRES):
        lines.append(f"A {genre} piece in {meter} time played on {inst}.")
    for name in INTERVAL_NAMES:
        lines.append(f"The interval between the two notes is a {name}.")
    questions = [
        "What is the key of this piece?",
        "Which chord is played?",
        "What is the tempo in BPM?",
        "What is the time signature?",
        "Which instrument is playing?",
        "Describe the music in detail.",
        "Answer with the letter of the correct choice.",
        "Think step by step, then give the answer.",
    ]
    for q in questions:
        for letter in "ABCD":
            lines.append(f"{q} (A) first (B) second (C) third (D) fourth. Answer: {letter}")
    for _ in range(400):
        root = rng.choice(PITCH_CLASSES)
        quality = rng.choice(list(CHORD_QUALITIES))
        bpm = rng.randrange(60, 181)
        lines.append(
            f"<think>I hear the notes of a {root} {quality} chord at {bpm} BPM on {rng.choice(INSTRUMENTS)}."
            f"</think><answer>{root} {quality}</answer>"
        )
    lines += [
        "You are a helpful assistant.",
        "Listen to the audio and answer the question.",
        "The notes are A, C and E: a minor triad rooted on A.",
        "The onsets are evenly spaced half a second apart.",
        "Strong accents fall on every third beat, so the meter is three four.",
    ]
    return lines


def train_tokenizer(seed: int = 0) -> Tokenizer:
    """A byte-level BPE tokenizer trained on :func:`builtin_corpus`, with chat, audio and tag tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        special_tokens=list(CHAT_SPECIAL_TOKENS + ALL_AUDIO_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(builtin_corpus(seed), trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    return tok


def _hf_tokenizer(tok: Tokenizer):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        padding_side="left",
        model_max_length=32768,
        extra_special_tokens={},
    )


def _feature_extractor():
    from transformers import WhisperFeatureExtractor

    # The Whisper-large-v3 front end every family here uses: 128 mel bins, 10 ms hop, 30 s windows.
    return WhisperFeatureExtractor(
        feature_size=128,
        sampling_rate=16000,
        hop_length=160,
        chunk_length=30,
        n_fft=400,
        padding_value=0.0,
        return_attention_mask=True,
    )


def build_tiny_model(family: str, out: str | Path, size: str = "test", seed: int = 0) -> Path:
    """Build and save a tiny random checkpoint of ``family`` into ``out``, replacing an earlier tiny build there.

    Args:
        family: a key of ``grpo_audio.models.FAMILIES``.
        out: output directory: absent, empty, or an earlier tiny build (it holds ``TINY_MARKER``).
        size: a name in ``SIZES``.
        seed: seeds the weights (and the tokenizer's corpus).

    Returns:
        The output directory.

    Raises:
        ConfigError: ``out`` is a file, or a folder with anything in it that is not a tiny build (a trained
            checkpoint, a runs folder): nothing of it is removed.
    """
    fam = get_family(family)
    if size not in SIZES:
        raise ValueError(f"unknown tiny size '{size}'; choose one of: {', '.join(SIZES)}")
    out = Path(out)
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / TINY_MARKER).is_file())):
        raise ConfigError(
            f"{out} exists and is not a tiny checkpoint built here (no {TINY_MARKER}); a tiny build replaces the "
            "folder it is given: remove it or name another"
        )
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    tok = train_tokenizer(seed)
    hf_tok = _hf_tokenizer(tok)
    token_ids = {t: tok.token_to_id(t) for t in CHAT_SPECIAL_TOKENS + ALL_AUDIO_TOKENS}
    vocab = len(hf_tok)
    dims = SIZES[size]
    dims = TinySize(**{**dims.__dict__, "vocab_size": (vocab + 63) // 64 * 64})
    config = fam.tiny_config(dims, token_ids)

    processor = fam.processor_class()(
        _feature_extractor(), hf_tok, chat_template=fam.chat_template(), **fam.processor_kwargs()
    )

    torch.manual_seed(seed)
    model = fam.model_class()(config).to(torch.float32).eval()
    model.generation_config.eos_token_id = token_ids["<|im_end|>"]
    model.generation_config.pad_token_id = token_ids["<|endoftext|>"]
    model.generation_config.bos_token_id = token_ids["<|endoftext|>"]
    model.save_pretrained(out)
    save_checkpoint_weights(fam, model.state_dict(), out)
    processor.save_pretrained(out)
    (out / TINY_MARKER).write_text(json.dumps({"family": family, "size": size, "seed": seed}) + "\n")
    return out


def save_checkpoint_weights(fam, state_dict: dict[str, torch.Tensor], out: Path) -> None:
    """Write ``state_dict`` as one ``model.safetensors`` in the layout both transformers and vLLM load.

    transformers' ``save_pretrained`` writes the language model as ``language_model.model.model.*`` for these
    composite models; vLLM expects ``language_model.model.*`` (transformers loads both).
    """
    for old in out.glob("model*.safetensors*"):
        old.unlink()
    tensors = {fam.to_checkpoint_key(k): v.detach().contiguous().clone() for k, v in sorted(state_dict.items())}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})

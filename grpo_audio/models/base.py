"""The model-family interface: what grpo-audio needs to know about an audio-LLM family.

A family adapter says how to put audio into a chat prompt, how to call the family's processor, where its parts
live in the transformers model (language model, output head, audio encoder, projector: for freezing, LoRA and the
logprob passes, so that no other module needs the family's module names), how transformers' in-memory weight
names map to the checkpoint layout vLLM loads, and what a tiny random checkpoint of the family looks like. Adding
a family is one file with a subclass of :class:`ModelFamily` plus one line in ``grpo_audio.models.FAMILIES``.
"""

from __future__ import annotations

import importlib
import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

# ChatML, as the Qwen2-based families use it. ``{{ AUDIO }}`` is replaced per family by the text that stands
# for one audio clip in the prompt (the processor expands it to the right number of audio tokens).
_CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'audio' %}{{ AUDIO }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class TinySize:
    """Dimensions of a tiny random checkpoint (text model head_dim must be 64: vLLM's CPU attention needs it)."""

    vocab_size: int
    text_hidden: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    text_intermediate: int
    audio_hidden: int
    audio_layers: int
    audio_heads: int
    audio_intermediate: int
    max_position_embeddings: int = 8192


# The tiny checkpoints ``models.tiny.build_tiny_model`` builds, by name.
SIZES: dict[str, TinySize] = {
    "test": TinySize(
        vocab_size=0,
        text_hidden=128,
        text_layers=2,
        text_heads=2,
        text_kv_heads=1,
        text_intermediate=256,
        audio_hidden=64,
        audio_layers=1,
        audio_heads=2,
        audio_intermediate=128,
    ),
    # The model of the SFT-step, IS-ratio and feature-probe benchmarks and of the README's quick start. The
    # embedded recipe (`make demo`) trains the smaller `test` size: at a third of this size's compute per token it
    # gets about twice the optimiser steps in the same minutes, and learned more.
    "demo": TinySize(
        vocab_size=0,
        text_hidden=192,
        text_layers=3,
        text_heads=3,
        text_kv_heads=1,
        text_intermediate=512,
        audio_hidden=128,
        audio_layers=1,
        audio_heads=2,
        audio_intermediate=256,
    ),
    # The model benchmarks/ measured rollouts and logprob passes on (benchmarks/results.md).
    "bench": TinySize(
        vocab_size=0,
        text_hidden=256,
        text_layers=4,
        text_heads=4,
        text_kv_heads=2,
        text_intermediate=768,
        audio_hidden=256,
        audio_layers=2,
        audio_heads=4,
        audio_intermediate=512,
    ),
    # The model the FSDP2 memory comparison measures (benchmarks/logprob_pass.py --distributed): 16 decoder layers
    # and 8 encoder blocks, 56 M parameters, so that, as in a real checkpoint, the parameters, gradients and AdamW
    # state are most of a training step's memory and one FSDP2 unit is a small part of the model.
    "scale": TinySize(
        vocab_size=0,
        text_hidden=512,
        text_layers=16,
        text_heads=8,
        text_kv_heads=2,
        text_intermediate=1536,
        audio_hidden=256,
        audio_layers=8,
        audio_heads=4,
        audio_intermediate=1024,
    ),
}


class ModelFamily:
    """Base class of the per-family adapters. Subclasses set the class attributes and ``tiny_config``."""

    name: ClassVar[str]
    #: transformers class names (looked up in ``transformers`` lazily so that importing the registry is cheap).
    model_class_name: ClassVar[str]
    processor_class_name: ClassVar[str]
    #: architecture vLLM serves the checkpoint with (the engine tests check it is the one vLLM picks).
    vllm_architecture: ClassVar[str]
    #: special tokens the family's tokenizer must have for audio.
    audio_special_tokens: ClassVar[tuple[str, ...]]
    #: the token the processor expands into one placeholder per audio embedding.
    audio_token: ClassVar[str]
    #: what stands for one audio clip in a rendered prompt before expansion.
    audio_prompt_text: ClassVar[str]
    #: names of the audio-feature tensors the processor returns (features, mask).
    audio_feature_keys: ClassVar[tuple[str, str]]
    #: module prefixes of the audio encoder and the projector in the transformers model.
    audio_encoder_prefixes: ClassVar[tuple[str, ...]]
    projector_prefixes: ClassVar[tuple[str, ...]]
    #: module names of the text decoder stack and of the output head in the transformers model.
    language_model_name: ClassVar[str]
    lm_head_name: ClassVar[str]
    #: the longest audio the family takes, in seconds (the processor's own limit).
    max_audio_seconds: ClassVar[float]
    #: tokens the processor writes around each clip's audio tokens (Music Flamingo's ``<|sound_bos|>``/``_eos``).
    audio_framing_tokens: ClassVar[int] = 0
    sampling_rate: ClassVar[int] = 16000
    #: (regex, replacement) pairs turning transformers' in-memory parameter names into the on-disk layout that
    #: both transformers and vLLM load.
    checkpoint_key_map: ClassVar[tuple[tuple[str, str], ...]] = ()

    # ---- classes --------------------------------------------------------------------------------------------
    @classmethod
    def model_class(cls) -> type:
        return getattr(importlib.import_module("transformers"), cls.model_class_name)

    @classmethod
    def processor_class(cls) -> type:
        return getattr(importlib.import_module("transformers"), cls.processor_class_name)

    # ---- where the parts live ------------------------------------------------------------------------------
    @classmethod
    def audio_encoder(cls, model: Any) -> Any:
        """The audio encoder module of a model of this family: the first of ``audio_encoder_prefixes`` that names
        a module, also under a wrapper's prefix (peft's ``base_model.model.``).

        Raises:
            ValueError: no module has such a name.
        """
        return _first_module(model, cls.audio_encoder_prefixes, "audio encoder")

    @classmethod
    def projector(cls, model: Any) -> Any:
        """The audio-to-text projector module, found as :meth:`audio_encoder` is."""
        return _first_module(model, cls.projector_prefixes, "projector")

    @classmethod
    def language_model(cls, model: Any) -> Any:
        """The text decoder stack (its forward returns hidden states) of a model of this family, also of a
        PEFT-wrapped one (its LoRA layers in place)."""
        return unwrap_peft(model).get_submodule(cls.language_model_name)

    @classmethod
    def lm_head(cls, model: Any) -> Any:
        """The output head (hidden states to vocabulary logits), also of a PEFT-wrapped model."""
        return unwrap_peft(model).get_submodule(cls.lm_head_name)

    @classmethod
    def lora_target_pattern(cls, target_modules: list[str]) -> str:
        r"""The PEFT ``target_modules`` regex for adapters on the language model's modules ending in one of
        ``target_modules`` only (the audio encoder has ``q_proj`` / ``v_proj`` too).

        >>> from grpo_audio.models import get_family
        >>> get_family("qwen2_audio").lora_target_pattern(["q_proj", "v_proj"])
        '.*model\\.language_model.*\\.(q_proj|v_proj)'
        """
        return rf".*{re.escape(cls.language_model_name)}.*\.({'|'.join(target_modules)})"

    # ---- prompts --------------------------------------------------------------------------------------------
    @classmethod
    def chat_template(cls) -> str:
        return _CHATML_TEMPLATE.replace("{{ AUDIO }}", cls.audio_prompt_text)

    @classmethod
    def build_messages(cls, prompt: str | list[dict[str, Any]], system: str | None = None) -> list[dict[str, Any]]:
        """Chat messages for one audio clip and a user prompt.

        Args:
            prompt: the user's text (the audio goes first in the user turn) or a full message list, returned
                as it is (it must then hold exactly one ``{"type": "audio"}`` item).
            system: optional system message.
        """
        if not isinstance(prompt, str):
            return prompt
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": prompt}]})
        return messages

    @classmethod
    def render_prompt(cls, processor: Any, messages: list[dict[str, Any]]) -> str:
        """The prompt string (audio not yet expanded) that both transformers' processor and vLLM take."""
        return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    @classmethod
    def count_audio_slots(cls, text: str) -> int:
        """How many audio clips a rendered (unexpanded) prompt refers to."""
        return text.count(cls.audio_token)

    @classmethod
    def audio_token_count(cls, seconds: float) -> int:
        """How many ``audio_token`` placeholders the family's processor expands a clip of ``seconds`` (at
        ``sampling_rate``) into: the processor's own arithmetic, so a prompt's length is known without running it."""
        raise NotImplementedError

    @classmethod
    def prompt_token_count(cls, text_tokens: int, seconds: float) -> int:
        """Tokens of a prompt once the processor has expanded its one audio placeholder.

        Args:
            text_tokens: the rendered prompt's tokens, its audio placeholder counted as one.
            seconds: the clip's duration as the processor gets it (after any cut to the length limit).
        """
        return text_tokens - 1 + cls.audio_framing_tokens + cls.audio_token_count(seconds)

    @classmethod
    def process(cls, processor: Any, texts: list[str], audios: list[np.ndarray], **kwargs: Any) -> Any:
        """Run the processor on rendered prompts and their audio (one clip per prompt), left-padded."""
        return processor(text=texts, audio=audios, sampling_rate=cls.sampling_rate, return_tensors="pt", **kwargs)

    # ---- weights --------------------------------------------------------------------------------------------
    @classmethod
    def to_checkpoint_key(cls, name: str) -> str:
        """Map an in-memory parameter name to the checkpoint layout (the one vLLM expects)."""
        for pattern, repl in cls.checkpoint_key_map:
            new, n = re.subn(pattern, repl, name)
            if n:
                return new
        return name

    @classmethod
    def tiny_config(cls, size: TinySize, token_ids: dict[str, int]) -> Any:
        """A transformers config for a tiny random model of this family."""
        raise NotImplementedError

    @classmethod
    def processor_kwargs(cls) -> dict[str, Any]:
        """Extra constructor arguments of the family's processor."""
        return {}


def unwrap_peft(model: Any) -> Any:
    """The transformers model inside a PEFT wrapper (the model itself when it has none); LoRA layers stay in place."""
    return model.get_base_model() if hasattr(model, "get_base_model") and hasattr(model, "peft_config") else model


def _first_module(model: Any, prefixes: tuple[str, ...], what: str) -> Any:
    """The module named by the first of ``prefixes`` that names one, also under a wrapper's prefix."""
    modules = dict(model.named_modules())
    for prefix in prefixes:
        name = prefix.rstrip(".")
        found = [m for n, m in modules.items() if n == name or n.endswith(f".{name}")]
        if found:
            return found[0]
    raise ValueError(f"no {what} module named {prefixes} in {type(model).__name__}")


def whisper_audio_tokens(seconds: float, max_seconds: float, sampling_rate: int = 16000, hop_length: int = 160) -> int:
    """Audio tokens of a Whisper-style encoder for a clip of ``seconds``: one mel frame per ``hop_length`` samples
    (the feature extractor's attention mask, over at most ``max_seconds``), halved by the stride-2 convolution and
    again by the stride-2 pooling (``_get_audio_token_length`` of the Audio Flamingo 3 / Music Flamingo processors,
    the same sum in Qwen2-Audio's). A full 30 s window gives 750.
    """
    samples = min(round(seconds * sampling_rate), round(max_seconds * sampling_rate))
    frames = math.ceil(samples / hop_length)
    return ((frames - 1) // 2 + 1 - 2) // 2 + 1


def context_length(model_config: Any, max_model_len: int | None = None) -> int:
    """The engine's context length: ``max_model_len`` when set (above 0), else the text model's
    ``max_position_embeddings``, which is where vLLM derives its default from for these families.

    Args:
        model_config: a transformers config of the checkpoint (composite or text-only).
        max_model_len: ``rollout.max_model_len``; None or 0 for the model's own length.
    """
    if max_model_len:
        return max_model_len
    return int(model_config.get_text_config().max_position_embeddings)


# Composite AF3-style models keep their parts under ``model.*`` in memory and under the part names on disk.
AF3_STYLE_KEY_MAP: tuple[tuple[str, str], ...] = (
    (r"^model\.language_model\.", "language_model.model."),
    (r"^lm_head\.", "language_model.lm_head."),
    (r"^model\.audio_tower\.", "audio_tower."),
    (r"^model\.multi_modal_projector\.", "multi_modal_projector."),
)


def qwen2_text_config(size: TinySize, token_ids: dict[str, int]) -> dict[str, Any]:
    """The Qwen2 text-model part of a tiny config (untied embeddings: see DESIGN.md on tying)."""
    return {
        "model_type": "qwen2",
        "vocab_size": size.vocab_size,
        "hidden_size": size.text_hidden,
        "intermediate_size": size.text_intermediate,
        "num_hidden_layers": size.text_layers,
        "num_attention_heads": size.text_heads,
        "num_key_value_heads": size.text_kv_heads,
        "max_position_embeddings": size.max_position_embeddings,
        "tie_word_embeddings": False,
        "bos_token_id": token_ids["<|endoftext|>"],
        "eos_token_id": token_ids["<|im_end|>"],
        "pad_token_id": token_ids["<|endoftext|>"],
    }

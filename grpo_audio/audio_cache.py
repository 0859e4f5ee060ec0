"""One cache for what is computed from audio and never changes: log-mel features and frozen-encoder outputs.

Every stage of a run visits the same clips again and again: supervised stages once per epoch, evaluation after
every stage, GRPO once per logprob pass (old policy, reference, update), and benchmark files ask several
questions about each clip. The Whisper front end pads each clip to a 30 s window before its STFT, so a 3 s clip
costs as much as a 30 s one; a frozen audio encoder gives the same output for the same window every time.

:class:`AudioCache` keeps both in one least-recently-used store with one byte budget. One key scheme:

- log-mel features: a digest of the window's samples, dtype and shape, salted with the feature extractor's
  settings (a different front end never hits);
- encoder outputs: a digest of the row's features and mask, salted with a fingerprint of the encoder's weights
  (an encoder that changed never reads another's outputs).

Use: ``cache.features(processor)`` returns a copy of the processor whose feature extractor reads the cache;
``with cache.encoder(model, family):`` makes the model's frozen encoder read it. What comes out is what the
uncached code computes, bit for bit (tests compare batches, losses, gradients and completions).
"""

from __future__ import annotations

import copy
import hashlib
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from transformers import BatchFeature
from transformers.modeling_outputs import BaseModelOutput

from .models import ModelFamily
from .parallel import full_state

# The default budget: 4 GiB holds about 2,700 windows of 30 s (128 mel bins, float32: 1.5 MB each).
DEFAULT_MAX_BYTES = 4 << 30


def _nbytes(value: torch.Tensor | dict[str, torch.Tensor]) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    return sum(_nbytes(v) for v in value.values())


def digest(named: list[tuple[str, torch.Tensor]]) -> bytes:
    """A 16-byte digest of tensors: each one's label, dtype, shape and bytes (SHA-256, truncated; CPUs with SHA
    instructions hash it in hardware, and every training step hashes each row's features)."""
    h = hashlib.sha256()
    for label, t in named:
        t = t.detach().contiguous().cpu()
        h.update(f"{label}{t.dtype}{tuple(t.shape)}".encode())
        h.update(memoryview(t.view(torch.uint8).numpy()) if t.numel() else b"")
    return h.digest()[:16]


def weights_fingerprint(module: torch.nn.Module) -> bytes:
    """A digest of a module's parameters and buffers (names, shapes, dtypes and values); of the whole tensors
    when FSDP2 shards them (every process must then call it, in step)."""
    return digest(list(full_state(module)))


def _window_key(chunk: Any, kwargs: dict[str, Any]) -> bytes:
    arr = np.ascontiguousarray(np.asarray(chunk))
    h = hashlib.sha256(memoryview(arr).cast("B"))
    h.update(f"{arr.dtype}{arr.shape}{sorted((k, repr(v)) for k, v in kwargs.items())}".encode())
    return h.digest()[:16]


class AudioCache:
    """``key -> tensor`` (or dict of tensors), the least recently used dropped first once over ``max_bytes``.

    Args:
        max_bytes: what the features and encoder outputs together may take; the newest entry always stays.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[bytes, Any] = OrderedDict()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: bytes) -> bool:
        return key in self._entries

    def get(self, key: bytes) -> Any:
        """The stored value, marked as recently used (KeyError if absent)."""
        self._entries.move_to_end(key)
        return self._entries[key]

    def put(self, key: bytes, value: Any) -> None:
        if key in self._entries:
            self.nbytes -= _nbytes(self._entries.pop(key))
        self._entries[key] = value
        self.nbytes += _nbytes(value)

    def evict(self) -> None:
        """Drop the least recently used entries until within budget (the newest one always stays)."""
        while self.nbytes > self.max_bytes and len(self._entries) > 1:
            _, old = self._entries.popitem(last=False)
            self.nbytes -= _nbytes(old)

    def features(self, processor: Any) -> Any:
        """A shallow copy of ``processor`` whose feature extractor reads and fills this cache.

        The original is left as it was (it is what gets saved next to a checkpoint); the copy shares its
        tokenizer. A processor that already reads a cache is returned as it is.
        """
        if isinstance(processor.feature_extractor, CachedFeatureExtractor):
            return processor
        cached = copy.copy(processor)
        cached.feature_extractor = CachedFeatureExtractor(processor.feature_extractor, self)
        return cached

    @contextmanager
    def encoder(self, model: Any, family: type[ModelFamily]) -> Iterator[EncoderOutputCache]:
        """Within the block, ``model``'s frozen audio encoder reads and fills this cache.

        Outside the block the model is untouched: no wrapper module, parameter names as before, so checkpoints
        are saved as usual.

        Raises:
            ValueError: the encoder has trainable parameters (its outputs would change with every step).
        """
        encoder = family.audio_encoder(model)
        trainable = [n for n, p in encoder.named_parameters() if p.requires_grad]
        if trainable:
            raise ValueError(
                f"the audio encoder has trainable parameters ({trainable[0]}, ...): freeze it to cache it"
            )
        reader = EncoderOutputCache(encoder, self)
        encoder.forward = reader.forward
        try:
            yield reader
        finally:
            del encoder.forward


class CachedFeatureExtractor:
    """Wraps a feature extractor; ``__call__(list of windows, **kwargs)`` reuses features seen before.

    Args:
        extractor: the processor's feature extractor (Whisper-style: returns ``input_features`` and
            ``attention_mask`` per window).
        cache: where the features are kept.

    Other attributes (``sampling_rate``, ``chunk_length``, ...) are the wrapped extractor's. ``hits`` and
    ``misses`` count windows.
    """

    def __init__(self, extractor: Any, cache: AudioCache):
        self.extractor = extractor
        self.cache = cache
        self._salt = hashlib.blake2b(extractor.to_json_string().encode(), digest_size=16).digest()
        self.hits = 0
        self.misses = 0

    def __getattr__(self, name: str) -> Any:
        if name == "extractor":  # not set yet (copy, unpickling)
            raise AttributeError(name)
        return getattr(self.extractor, name)

    def __call__(self, raw_speech: Any, **kwargs: Any) -> Any:
        chunks = raw_speech if isinstance(raw_speech, (list, tuple)) else [raw_speech]
        if kwargs.get("return_tensors") != "pt" or not chunks:
            return self.extractor(raw_speech, **kwargs)
        keys = [self._salt + _window_key(c, kwargs) for c in chunks]
        missing = list(dict.fromkeys(k for k in keys if k not in self.cache))
        if missing:
            where = {k: i for i, k in enumerate(keys)}
            fresh = self.extractor([chunks[where[k]] for k in missing], **kwargs)
            for j, k in enumerate(missing):
                self.cache.put(k, {n: v[j].clone() for n, v in fresh.items() if isinstance(v, torch.Tensor)})
            self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        entries = [self.cache.get(k) for k in keys]
        self.cache.evict()
        return BatchFeature({name: torch.stack([e[name] for e in entries]) for name in entries[0]})


class EncoderOutputCache:
    """The caching forward of one frozen encoder (``AudioCache.encoder`` installs it).

    Args:
        encoder: the audio encoder module; its forward takes a batch of features whose first dimension is the
            row (a 30 s window, or a clip), plus per-row tensors such as the mask.
        cache: where the outputs (``last_hidden_state`` rows) are kept.

    ``hits`` and ``misses`` count rows.
    """

    def __init__(self, encoder: torch.nn.Module, cache: AudioCache):
        self.encoder = encoder
        self.original = encoder.forward
        self.cache = cache
        self._salt = weights_fingerprint(encoder)
        self.hits = 0
        self.misses = 0
        cfg = getattr(encoder, "config", None)
        rates = [getattr(cfg, a, 0.0) or 0.0 for a in ("dropout", "attention_dropout", "activation_dropout")]
        self.random_in_training = any(r > 0 for r in rates) or any(
            isinstance(m, torch.nn.Dropout) and m.p > 0 for m in encoder.modules()
        )

    def forward(self, input_features: torch.Tensor, *args: Any, **kwargs: Any) -> BaseModelOutput:
        if args or (self.encoder.training and self.random_in_training):  # dropout: every call differs
            return self.original(input_features, *args, **kwargs)
        n = input_features.shape[0]
        row_tensors = [input_features] + [
            v for v in kwargs.values() if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == n
        ]
        keys = [self._salt + digest([("", t[i]) for t in row_tensors]) for i in range(n)]
        missing = [i for i, k in enumerate(keys) if k not in self.cache]
        missing = [i for i in missing if keys.index(keys[i]) == i]  # a repeated row is computed once
        if missing:
            index = torch.tensor(missing, device=input_features.device)
            sub = {
                k: (v.index_select(0, index) if any(v is t for t in row_tensors[1:]) else v) for k, v in kwargs.items()
            }
            with torch.no_grad():
                out = self.original(input_features.index_select(0, index), **sub)
            for j, i in enumerate(missing):
                self.cache.put(keys[i], out.last_hidden_state[j].detach().clone())
            self.misses += len(missing)
        self.hits += n - len(missing)
        hidden = torch.stack([self.cache.get(k) for k in keys])
        self.cache.evict()
        return BaseModelOutput(last_hidden_state=hidden)

"""Reuse a frozen audio encoder's outputs across epochs.

With the audio encoder frozen, its output for a given audio window never changes, yet a supervised stage runs
it again on every visit of every clip; on the CPU that forward (each clip padded to a 30 s window) is a large
share of a training step. Inside ``cached_encoder(model, family)``, the encoder's forward looks each input row
up by a hash of its features (and mask) and runs only on rows it has not seen. Outside the block the model is
untouched: no wrapper module, parameter names as before, so checkpoints are saved as usual.

The cached output is the encoder's own output for that row, so the cache changes nothing but the time (a test
compares losses and gradients with and without it). It refuses an encoder with trainable parameters.

Several stages of one run (a recipe's ``sft`` then ``cold_start``) can share one store (``store=``): the keys
then also carry a fingerprint of the encoder's weights, so a stage whose encoder differs never reads another's
outputs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers.modeling_outputs import BaseModelOutput

from ..lru import LRUBytes
from .base import ModelFamily


def _digest(named: list[tuple[str, torch.Tensor]]) -> bytes:
    """A digest of tensors: each one's label, dtype, shape and bytes."""
    h = hashlib.blake2b(digest_size=16)
    for label, t in named:
        t = t.detach().contiguous().cpu()
        h.update(f"{label}{t.dtype}{tuple(t.shape)}".encode())
        h.update(memoryview(t.view(torch.uint8).numpy()) if t.numel() else b"")
    return h.digest()


def _row_key(tensors: list[torch.Tensor], row: int) -> bytes:
    return _digest([("", t[row]) for t in tensors])


class EncoderOutputCache:
    """The caching forward of one frozen encoder (see the module docstring).

    Args:
        encoder: the audio encoder module; its forward takes a batch of features whose first dimension is the
            row (a 30 s window, or a clip), plus per-row tensors such as the mask.
        max_bytes: outputs kept at most, least recently used dropped first.
    """

    def __init__(self, encoder: torch.nn.Module, max_bytes: int = 4 << 30, store: LRUBytes | None = None):
        self.encoder = encoder
        self.original = encoder.forward
        self._store = LRUBytes(max_bytes) if store is None else store
        self._salt = b"" if store is None else weights_fingerprint(encoder)
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
        keys = [self._salt + _row_key(row_tensors, i) for i in range(n)]
        missing = [i for i, k in enumerate(keys) if k not in self._store]
        missing = [i for i in missing if keys.index(keys[i]) == i]  # a repeated row is computed once
        if missing:
            index = torch.tensor(missing, device=input_features.device)
            sub = {
                k: (v.index_select(0, index) if any(v is t for t in row_tensors[1:]) else v) for k, v in kwargs.items()
            }
            with torch.no_grad():
                out = self.original(input_features.index_select(0, index), **sub)
            for j, i in enumerate(missing):
                self._store.put(keys[i], out.last_hidden_state[j].detach().clone())
            self.misses += len(missing)
        self.hits += n - len(missing)
        hidden = torch.stack([self._store.get(k) for k in keys])
        self._store.evict()
        return BaseModelOutput(last_hidden_state=hidden)


def weights_fingerprint(module: torch.nn.Module) -> bytes:
    """A digest of a module's parameters and buffers (names, shapes, dtypes and values)."""
    return _digest(list(module.state_dict().items()))


def audio_encoder(model: Any, family: type[ModelFamily]) -> torch.nn.Module:
    """The audio encoder module of a model of ``family`` (the first of its encoder prefixes that names one)."""
    modules = dict(model.named_modules())
    for prefix in family.audio_encoder_prefixes:
        name = prefix.rstrip(".")
        if name in modules:
            return modules[name]
    raise ValueError(f"no audio encoder module named {family.audio_encoder_prefixes} in {type(model).__name__}")


@contextmanager
def cached_encoder(
    model: Any, family: type[ModelFamily], max_bytes: int = 4 << 30, store: LRUBytes | None = None
) -> Iterator[EncoderOutputCache]:
    """Within the block, ``model``'s frozen audio encoder reuses its outputs (see the module docstring); ``store``
    keeps them beyond the block, for the next stage."""
    encoder = audio_encoder(model, family)
    trainable = [n for n, p in encoder.named_parameters() if p.requires_grad]
    if trainable:
        raise ValueError(f"the audio encoder has trainable parameters ({trainable[0]}, ...): freeze it to cache it")
    cache = EncoderOutputCache(encoder, max_bytes, store)
    encoder.forward = cache.forward
    try:
        yield cache
    finally:
        del encoder.forward

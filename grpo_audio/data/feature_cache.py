"""A cache of log-mel features per audio window, for training loops that see the same clips every epoch.

The Whisper front end every family here uses pads each clip to a 30 s window before its STFT, so a 3 s clip
costs as much as a 30 s one (about 40 ms on one CPU core) every time a batch is built. Supervised stages visit
each clip once per epoch, and the audio never changes: :class:`CachedFeatureExtractor` wraps a processor's
feature extractor, keys each window by a hash of its samples, and returns the stored features on a hit. The
output is the extractor's own, bit for bit (a test compares them).

Use: ``cache_features(processor)`` returns a copy of the processor that caches. Stages of one run can share a
store (``store=``); keys then also carry the extractor's settings, so a different front end never hits.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import numpy as np
import torch
from transformers import BatchFeature

from ..lru import LRUBytes


def _key(chunk: Any, kwargs: dict[str, Any]) -> bytes:
    arr = np.ascontiguousarray(np.asarray(chunk))
    h = hashlib.blake2b(memoryview(arr).cast("B"), digest_size=16)
    h.update(f"{arr.dtype}{arr.shape}{sorted((k, repr(v)) for k, v in kwargs.items())}".encode())
    return h.digest()


class CachedFeatureExtractor:
    """Wraps a feature extractor; ``__call__(list of windows, **kwargs)`` reuses features seen before.

    Args:
        extractor: the processor's feature extractor (Whisper-style: returns ``input_features`` and
            ``attention_mask`` per window).
        max_bytes: features kept at most (least recently used dropped first). A 30 s window of 128 mel bins
            takes 1.5 MB.

    Other attributes (``sampling_rate``, ``chunk_length``, ...) are the wrapped extractor's.
    """

    def __init__(self, extractor: Any, max_bytes: int = 4 << 30, store: LRUBytes | None = None):
        self.extractor = extractor
        self._store = LRUBytes(max_bytes) if store is None else store
        self._salt = (
            b"" if store is None else hashlib.blake2b(extractor.to_json_string().encode(), digest_size=16).digest()
        )
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
        keys = [self._salt + _key(c, kwargs) for c in chunks]
        missing = list(dict.fromkeys(k for k in keys if k not in self._store))
        if missing:
            where = {k: i for i, k in enumerate(keys)}
            fresh = self.extractor([chunks[where[k]] for k in missing], **kwargs)
            for j, k in enumerate(missing):
                self._store.put(k, {n: v[j].clone() for n, v in fresh.items() if isinstance(v, torch.Tensor)})
            self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        entries = [self._store.get(k) for k in keys]
        self._store.evict()
        return BatchFeature({name: torch.stack([e[name] for e in entries]) for name in entries[0]})


def cache_features(processor: Any, max_bytes: int = 4 << 30, store: LRUBytes | None = None) -> Any:
    """A shallow copy of ``processor`` whose feature extractor is a :class:`CachedFeatureExtractor`.

    The original is left as it was (it is what gets saved next to a checkpoint); the copy shares its tokenizer.
    """
    if isinstance(processor.feature_extractor, CachedFeatureExtractor):
        return processor
    cached = copy.copy(processor)
    cached.feature_extractor = CachedFeatureExtractor(processor.feature_extractor, max_bytes, store)
    return cached

"""A least-recently-used store of tensor records with a byte budget (the SFT audio caches use it)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    return sum(_nbytes(v) for v in value.values())


class LRUBytes:
    """``key -> tensor`` (or dict of tensors), dropping the least recently used once over ``max_bytes``."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._store: OrderedDict[bytes, Any] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, key: bytes) -> bool:
        return key in self._store

    def get(self, key: bytes) -> Any:
        """The stored value, marked as recently used (KeyError if absent)."""
        self._store.move_to_end(key)
        return self._store[key]

    def put(self, key: bytes, value: Any) -> None:
        self._store[key] = value
        self._bytes += _nbytes(value)

    def evict(self) -> None:
        """Drop the least recently used entries until within budget (the newest one always stays)."""
        while self._bytes > self.max_bytes and len(self._store) > 1:
            _, old = self._store.popitem(last=False)
            self._bytes -= _nbytes(old)

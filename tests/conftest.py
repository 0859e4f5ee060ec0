"""Shared fixtures: tiny checkpoints built locally (never downloaded), test audio."""

from __future__ import annotations

import os

import numpy as np
import pytest

from grpo_audio.models import FAMILIES

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Every family test is parametrised over the registry: a newly registered family runs in all of them.
FAMILY_NAMES = tuple(FAMILIES)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """``tiny_checkpoint(family)`` -> directory of a test-size checkpoint, built once per session."""
    from grpo_audio.models.tiny import build_tiny_model

    built: dict[str, object] = {}

    def get(family: str):
        if family not in built:
            built[family] = build_tiny_model(family, tmp_path_factory.mktemp(family) / "ckpt", size="test", seed=0)
        return built[family]

    return get


def sine(seconds: float = 2.0, freq: float = 440.0, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)

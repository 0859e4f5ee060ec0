"""One evaluation session: an engine over one model, its greedy and sampled draws, the eval reward, and the samples
file. The trainer's periodic evaluation (over the trainer's own engine), every recipe stage's evaluation,
``eval.final`` and ``grpo-audio eval`` all evaluate through it.

A session opened on a model folder (:meth:`EvalSession.open`) owns its engine and closes it; one built over a
caller's engine (the trainer's) leaves it open.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ..audio_cache import AudioCache
from ..config import RolloutConfig
from ..data.schema import Row
from ..rewards import RewardSet
from ..rollout import HF_BATCH_SIZE, SamplingConfig, build_engine
from ..rollout.base import RolloutEngine
from ..rollout.hf_engine import HFEngine
from .results import EvalResult, SampledResult
from .sampled import sampled_eval
from .scoring import score


class EvalSession:
    """Evaluations of the model one engine samples from.

    Args:
        engine: a rollout engine (``rollout.RolloutEngine``).
        audio_cache: with a transformers engine whose model is frozen, each clip's log-mel features and
            audio-encoder outputs are kept from one call to the next (see :meth:`open`).
        owned: :meth:`close` closes the engine (a session opened on a model folder); else the caller does.
    """

    def __init__(self, engine: RolloutEngine, audio_cache: AudioCache | None = None, owned: bool = False):
        self.engine = engine
        self.audio_cache = audio_cache
        self.owned = owned

    @classmethod
    def open(
        cls,
        model_dir: str | Path,
        engine: str = "vllm",
        max_model_len: int = 4096,
        audio_cache: AudioCache | None = None,
        dtype: str = "float32",
        batch_size: int = HF_BATCH_SIZE,
    ) -> EvalSession:
        """A session over a new engine on the checkpoint in ``model_dir``, closed with the session.

        ``audio_cache`` (the transformers engine only) keeps each clip's log-mel features and audio-encoder outputs
        from one call to the next: an eval set asks several questions about each clip, and a recipe evaluates the
        same clips after every stage, with an encoder that stays frozen. Keys carry the feature extractor's settings
        and the encoder's weights, so an encoder that changed is run again; the completions are the uncached ones.

        Args:
            engine: ``vllm`` or ``hf``.
            max_model_len: prompt + completion tokens at most.
            dtype: the weights' dtype in the engine (``float32``, ``bfloat16``).
            batch_size: the ``hf`` engine's prompts per ``generate`` call.

        Raises:
            FileNotFoundError: ``model_dir`` has no ``config.json``.
        """
        rollout = RolloutConfig(engine=engine, max_model_len=max_model_len)
        built = build_engine(model_dir, rollout, dtype=dtype, audio_cache=audio_cache, batch_size=batch_size)
        return cls(built, audio_cache, owned=True)

    def close(self) -> None:
        """Close the engine if the session opened it."""
        if self.owned and hasattr(self.engine, "close"):
            self.engine.close()

    def __enter__(self) -> EvalSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def greedy(self, rows: list[Row], max_new_tokens: int, prefer: str = "text") -> EvalResult:
        """One greedy completion per row, scored (``scoring.score``; ``prefer``: what the prompts asked for,
        ``letter`` or ``text``)."""
        sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0, seed=0)
        with self._cached_encoder():
            batch = self.engine.generate(rows, n=1, sampling=sampling)
        return score(rows, batch.completion_text, prefer=prefer)

    def sampled(
        self,
        rows: list[Row],
        rewards: RewardSet,
        k: int,
        sampling: SamplingConfig,
        seed: int = 0,
        prefer: str = "text",
    ) -> SampledResult:
        """``k`` completions per row drawn as ``sampling`` draws, seeded per prompt, scored (``sampled_eval``)."""
        with self._cached_encoder():
            return sampled_eval(self.engine, rows, rewards, k, sampling, seed=seed, prefer=prefer)

    def evaluate(
        self,
        rows: list[Row],
        max_new_tokens: int,
        rewards: RewardSet | None = None,
        prefer: str = "text",
        samples: int = 0,
        sampling: SamplingConfig | None = None,
        seed: int = 0,
    ) -> EvalResult:
        """:meth:`greedy`; with ``rewards``, its completions scored with them too (:func:`eval_reward`: a recipe
        scores every stage as GRPO is scored); with ``samples`` (k) above 0, the sampled evaluation too
        (:meth:`sampled`, drawn as ``sampling`` draws, ``max_new_tokens`` long).

        Raises:
            ValueError: ``samples`` above 0 without ``rewards`` or ``sampling``.
        """
        result = self.greedy(rows, max_new_tokens, prefer)
        if samples:
            if rewards is None or sampling is None:
                raise ValueError("a sampled evaluation needs the rewards and the sampling settings")
            draws = replace(sampling, max_new_tokens=max_new_tokens)
            result.sampled = self.sampled(rows, rewards, samples, draws, seed=seed, prefer=prefer)
        if rewards is not None:
            result.reward = eval_reward(rewards, rows, [r.completion for r in result.results])
        return result

    def rewarded(
        self,
        rows: list[Row],
        rewards: RewardSet,
        n: int,
        sampling: SamplingConfig,
        samples: Path,
        keep: int,
        step: int,
    ) -> dict[str, float]:
        """The trainer's periodic evaluation: ``n`` completions per row drawn as ``sampling`` draws, scored with
        ``rewards``; the first ``keep`` completions appended to the ``samples`` file (JSON lines with ``step``).

        Returns:
            ``eval/<metric>`` for each of the rewards' ``.../mean`` metrics (``RewardOutput.metrics``).
        """
        batch = self.engine.generate(rows, n=n, sampling=sampling)
        scored = rewards.score_rows(rows, batch.completion_text, batch.row_index)
        kept = range(min(len(batch.completion_text), keep))
        write_samples(
            samples,
            (
                {
                    "step": step,
                    "id": rows[batch.row_index[i]].id,
                    "task": rows[batch.row_index[i]].task,
                    "completion": batch.completion_text[i],
                    "answer": rows[batch.row_index[i]].answer,
                    "reward": scored.total[i],
                }
                for i in kept
            ),
            append=True,
        )
        return {f"eval/{k}": v for k, v in scored.metrics().items() if k.endswith("/mean")}

    def _cached_encoder(self) -> AbstractContextManager:
        """Within the block, a transformers engine's frozen encoder reads the session's audio cache."""
        if self.audio_cache is None or not isinstance(self.engine, HFEngine):
            return nullcontext()
        if any(p.requires_grad for p in self.engine.model.parameters()):  # a caller's model in training
            return nullcontext()
        return self.audio_cache.encoder(self.engine.model, self.engine.family)


def eval_reward(rewards: RewardSet, rows: list[Row], completions: list[str]) -> dict[str, float]:
    """``rewards`` on one completion per row: the mean of the weighted total (``total``) and of each function over
    the rows it applies to (NaN for a function no row applies to)."""
    return rewards.score_rows(rows, completions, list(range(len(rows)))).means()


def write_samples(path: Path, records: Iterable[dict[str, Any]] | EvalResult, append: bool = False) -> None:
    """JSON lines to ``path`` (its folder made): ``records``, or an :class:`EvalResult`'s per-row results."""
    if isinstance(records, EvalResult):
        records = (asdict(r) for r in records.results)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a" if append else "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def evaluate_model(
    model_dir: str | Path,
    rows: list[Row],
    engine: str = "vllm",
    max_new_tokens: int = 128,
    max_model_len: int = 4096,
    audio_cache: AudioCache | None = None,
    prefer: str = "text",
    dtype: str = "float32",
    batch_size: int = HF_BATCH_SIZE,
) -> EvalResult:
    """One greedy completion per row from the checkpoint in ``model_dir``, scored: :meth:`EvalSession.greedy` in a
    session of its own (:meth:`EvalSession.open` for the arguments)."""
    with EvalSession.open(model_dir, engine, max_model_len, audio_cache, dtype, batch_size) as session:
        return session.greedy(rows, max_new_tokens, prefer)

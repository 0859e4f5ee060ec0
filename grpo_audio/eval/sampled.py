"""What GRPO optimises, measured: the expected reward under the rollout sampling distribution on held-out prompts,
and pass@1 / pass@k, each with a 95% bootstrap confidence interval over the prompts.

Greedy accuracy sees one completion a prompt, the mode; GRPO moves the whole sampling distribution, and a change
in how often a prompt's samples are right shows here before (or without) a change of its mode. Each prompt gets k
completions at the rollout temperature, seeded from the prompt's id (``rollout.base.prompt_seed``), so two models
evaluated with the same seed draw the same random numbers on the same prompts: a paired comparison
(:func:`paired_difference`) whose interval is far narrower than the two intervals side by side.

- reward: per prompt, the mean of its k completions' weighted total reward (``RewardSet.score_rows``); the
  statistic is the mean over prompts;
- pass@k (Chen et al. 2021, "Evaluating Large Language Models Trained on Code", the unbiased estimator
  1 - C(n - c, k) / C(n, k) from n samples with c correct), over the prompts with an answer to check (MCQ and open
  questions, scored as ``eval.scoring.score`` scores them);
- the intervals: percentile bootstrap over prompts (Efron and Tibshirani 1993), 2000 resamples, seeded.
"""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np

from ..data.schema import Row
from ..rewards import RewardSet
from ..rollout.base import RolloutEngine, SamplingConfig, prompt_seed
from .results import Interval, PromptDraws, SampledResult
from .scoring import score

RESAMPLES = 2000
LEVEL = 0.95


def bootstrap_interval(
    values: np.ndarray, resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL
) -> Interval:
    """The mean of ``values`` [n] (one per prompt) with its percentile-bootstrap interval.

    >>> bootstrap_interval(np.array([0.5, 0.5, 0.5]))
    Interval(value=0.5, low=0.5, high=0.5, n=3)

    Raises:
        ValueError: no values.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("a bootstrap interval needs at least one value")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(float(values.mean()), float(low), float(high), int(values.size))


def pass_at_k(n: int, c: int, k: int) -> float:
    """The probability that at least one of k completions drawn without replacement from n (c of them correct)
    is correct: 1 - C(n - c, k) / C(n, k) (Chen et al. 2021).

    >>> pass_at_k(4, 1, 1), pass_at_k(4, 1, 2), pass_at_k(4, 0, 4), pass_at_k(4, 3, 2)
    (0.25, 0.5, 0.0, 1.0)

    Raises:
        ValueError: not 0 <= c <= n and 1 <= k <= n.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def sampled_eval(
    engine: RolloutEngine,
    rows: list[Row],
    rewards: RewardSet,
    k: int,
    sampling: SamplingConfig,
    seed: int = 0,
    prefer: str = "text",
) -> SampledResult:
    """Sample ``k`` completions for each row with ``engine`` (a rollout engine) and score them.

    Args:
        rows: the held-out prompts (ids unique: they seed the draws and key the per-prompt values).
        rewards: the GRPO stage's rewards.
        k: completions per prompt (at least 1).
        sampling: temperature, top-p/k and length, as the rollouts sample; its seeds are replaced by per-prompt ones.
        seed: the draws' seed: the same seed draws the same random numbers for the same prompt, whatever the model.
        prefer: how a bare token that is a letter and a choice's text is read (``eval.scoring.score``).

    Raises:
        ValueError: ``k`` below 1, or two rows with one id.
    """
    if k < 1:
        raise ValueError(f"sampled evaluation needs k >= 1 completions a prompt, got {k}")
    ids = [r.id for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError("sampled evaluation needs unique row ids: they seed each prompt's draws")
    draw = SamplingConfig(
        **{**asdict(sampling), "seed": None, "row_seeds": [prompt_seed(seed, "eval", i) for i in ids]}
    )
    batch = engine.generate(rows, n=k, sampling=draw)
    totals = rewards.score_rows(rows, batch.completion_text, batch.row_index).total
    checked = score([rows[i] for i in batch.row_index], batch.completion_text, prefer=prefer).results
    prompts: dict[str, PromptDraws] = {}
    for i, row in enumerate(rows):
        mine = range(i * k, (i + 1) * k)
        correct = [checked[j].correct for j in mine]
        draws = [float(totals[j]) for j in mine]
        right = None if any(c is None for c in correct) else int(sum(c >= 1.0 for c in correct))
        prompts[row.id] = PromptDraws(reward=float(np.mean(draws)), rewards=draws, correct=right)
    counts = [p.correct for p in prompts.values() if p.correct is not None]
    return SampledResult(
        k=k,
        temperature=sampling.temperature,
        seed=seed,
        reward=bootstrap_interval(np.array([p.reward for p in prompts.values()]), seed=seed),
        pass_at_1=bootstrap_interval(np.array([pass_at_k(k, c, 1) for c in counts]), seed=seed) if counts else None,
        pass_at_k=bootstrap_interval(np.array([pass_at_k(k, c, k) for c in counts]), seed=seed) if counts else None,
        prompts=prompts,
    )


def paired_difference(after: SampledResult, before: SampledResult, field: str = "reward", seed: int = 0) -> Interval:
    """``after`` minus ``before`` on the prompts both saw, per prompt, with its bootstrap interval: above 0 when the
    whole interval is.

    Args:
        field: ``reward`` (each prompt's mean reward) or ``pass_at_1`` (its share of right completions, over the
            prompts with an answer to check).

    Raises:
        ValueError: no prompt in common, or the two drew with different seeds, k or temperature (not paired).
    """
    if (after.seed, after.k, after.temperature) != (before.seed, before.k, before.temperature):
        raise ValueError("a paired difference needs evaluations drawn with the same seed, k and temperature")
    common = sorted(set(after.prompts) & set(before.prompts))
    if field != "reward":
        common = [i for i in common if after.prompts[i].correct is not None]
    if not common:
        raise ValueError("the two evaluations have no prompt in common")

    def value(prompt: PromptDraws) -> float:
        return prompt.reward if field == "reward" else prompt.correct / after.k

    diffs = np.array([value(after.prompts[i]) - value(before.prompts[i]) for i in common])
    return bootstrap_interval(diffs, seed=seed)

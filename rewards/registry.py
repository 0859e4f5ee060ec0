"""The reward registry, dotted-path loading, and weighted combination with a safety net.

Rewards are looked up by name in ``REWARDS``; a name of the form ``package.module:function`` imports a user's
function. A spec with settings (``kwargs``) builds a new instance through the registered reward's class (or
calls the user's factory with them). :class:`RewardSet` calls several rewards, checks what they return, and
combines them with weights into a total plus one component per reward for logging.

A reward value is what TRL's GRPOTrainer takes (it reads them with ``torch.tensor(values, dtype=torch.float32)``):
a real number, bools (as 0 and 1) and NumPy or torch scalars included, or None (the reward does not apply). A
string is refused, even "1": a reward returning text has a bug that a silent conversion would hide.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from grpo_audio.errors import UserError

from .accuracy import answer_accuracy, mcq_accuracy
from .caption import structured_caption
from .format import format_reward
from .music_theory import music_theory

logger = logging.getLogger(__name__)

RewardFn = Callable[..., list]

REWARDS: dict[str, RewardFn] = {
    "format": format_reward,
    "mcq_accuracy": mcq_accuracy,
    "answer_accuracy": answer_accuracy,
    "music_theory": music_theory,
    "structured_caption": structured_caption,
}

ON_ERROR = ("raise", "zero", "skip")


class RewardError(UserError, RuntimeError):
    """A reward raised or returned something unusable; the message names the reward and the sample."""


def reward_name(fn: Any) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


def load_reward(name: str, **kwargs: Any) -> RewardFn:
    """A reward by registry name or ``package.module:function`` path, built with ``kwargs`` if given.

    >>> load_reward("format")(None, ["<think>x</think><answer>y</answer>"])
    [1.0]
    >>> load_reward("answer_accuracy", numeric_tolerance=0.05)(None, ["<answer>123</answer>"], answer=["120"])
    [1.0]
    """
    fn = REWARDS[name] if name in REWARDS else _import_reward(name)
    if inspect.isclass(fn):  # a user's reward class: its instances are the rewards
        return fn(**kwargs)
    if not kwargs:
        return fn
    return type(fn)(**kwargs) if name in REWARDS else fn(**kwargs)


def _is_reward_function(obj: Any) -> bool:
    """Whether ``obj`` has TRL's reward signature (its first parameters are ``prompts`` and ``completions``)."""
    try:
        params = list(inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        return False
    return params[:2] == ["prompts", "completions"]


def _check_reward_call(name: str, fn: Any, columns: Sequence[str]) -> None:
    """Raise a ValueError unless ``fn`` takes the call every reward gets, ``fn(prompts=..., completions=...,
    **columns)`` (TRL's signature; the columns are the rows' other fields)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or extension callable: nothing to check without calling it
        return
    try:
        signature.bind(prompts=[], completions=[], **dict.fromkeys(columns, []))
    except TypeError as e:
        raise ValueError(
            f"reward '{name}' cannot be called as f(prompts, completions, **columns) (TRL's reward signature; the "
            f"columns: {', '.join(columns) or 'none'}): {e}; its signature: {name.partition(':')[2]}{signature}"
        ) from None


def _import_reward(name: str) -> Any:
    """The object a ``package.module:function`` path names (a reward, or a factory of one)."""
    if ":" not in name:
        raise ValueError(
            f"unknown reward '{name}'; registered: {', '.join(REWARDS)}; or give 'package.module:function'"
        )
    module_name, _, attr = name.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot load reward '{name}': {e}") from None


def check_reward_spec(name: str, kwargs: dict[str, Any], columns: Sequence[str] = ()) -> None:
    """Check, without running anything, that a reward exists and that its factory takes ``kwargs``; a registered
    reward is also built, so that a bad value fails too. A user's reward function given without settings must take
    the call it will get: ``prompts``, ``completions`` and ``columns`` as keywords.

    Raises:
        ValueError: unknown reward, a module or function that does not import, settings the factory does not
            take (the message lists the ones it does) or rejects, or a reward function with another signature.

    >>> check_reward_spec("mcq_accuracy", {"strict": True})
    Traceback (most recent call last):
    ...
    ValueError: reward 'mcq_accuracy' takes no setting 'strict'; its settings: answer_tag, fallback, prefer
    """
    factory = type(REWARDS[name]) if name in REWARDS else _import_reward(name)
    if name not in REWARDS and not inspect.isclass(factory):
        if not kwargs:  # a user's reward without settings is the function itself: it must take TRL's call
            _check_reward_call(name, factory, columns)
            return
        if _is_reward_function(factory):
            raise ValueError(
                f"reward '{name}' is a reward function (it takes prompts and completions), not a factory: its "
                "settings cannot be given as kwargs; give a factory or a class that takes them"
            )
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or extension type: nothing to check without calling it
        return
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"]
    unknown = [k for k in kwargs if k not in named]
    if unknown and not takes_any:
        raise ValueError(
            f"reward '{name}' takes no setting {unknown[0]!r}; its settings: {', '.join(named) or 'none'}"
        )
    if name in REWARDS:
        try:
            load_reward(name, **kwargs)
        except (TypeError, ValueError) as e:
            raise ValueError(f"reward '{name}': {e}") from None


@dataclass
class RewardOutput:
    """Rewards of a batch of N completions.

    Attributes:
        total: [N] weighted sum over rewards; a reward's ``None`` (does not apply) adds nothing.
        components: per reward name, [N] values with NaN where the reward returned None or was skipped.
        errors: per reward name, how many values were replaced under the ``zero``/``skip`` policies.
    """

    total: list[float]
    components: dict[str, list[float]]
    errors: dict[str, int] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """``rewards/<name>/mean`` and ``/std`` over applicable samples, ``rewards/<name>/errors``, total."""
        out: dict[str, float] = {}
        for name, values in self.components.items():
            vals = [v for v in values if not math.isnan(v)]
            mean = sum(vals) / len(vals) if vals else math.nan
            std = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals)) if vals else math.nan
            out[f"rewards/{name}/mean"], out[f"rewards/{name}/std"] = mean, std
            out[f"rewards/{name}/errors"] = float(self.errors.get(name, 0))
        out["reward/mean"] = sum(self.total) / len(self.total) if self.total else math.nan
        return out

    def means(self) -> dict[str, float]:
        """The mean weighted total (``total``) and each reward's mean over the samples it applies to (NaN if
        none), by reward name.

        >>> RewardOutput(total=[1.0, 0.0], components={"format": [1.0, math.nan]}).means()
        {'total': 0.5, 'format': 1.0}
        """
        metrics = self.metrics()
        return {"total": metrics["reward/mean"], **{n: metrics[f"rewards/{n}/mean"] for n in self.components}}


class RewardSet:
    """Several rewards with weights, called through a safety net.

    Each reward is called with TRL's signature. What it returns is checked: a list, one value per completion,
    each a finite number or None. An exception or a bad value follows ``on_error``: ``raise`` (default; a
    ``RewardError`` naming the reward and the sample id), ``zero`` (the bad values become 0.0) or ``skip``
    (they become None); both of the latter are counted in ``RewardOutput.errors``. A reward that gives no value
    (None) for any sample of a batch it applies to adds nothing to it: that is logged as a warning.

    >>> rs = RewardSet([(format_reward, 0.5), (mcq_accuracy, 1.0)])
    >>> out = rs(["Q"], ["<think>t</think><answer>B</answer>"], choices=[["x", "y"]], answer=["B"], id=["q1"])
    >>> out.total, out.components
    ([1.5], {'format': [1.0], 'mcq_accuracy': [1.0]})
    """

    def __init__(self, rewards: Sequence[tuple[RewardFn, float] | RewardFn], on_error: str = "raise"):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.rewards = [(r, 1.0) if callable(r) else (r[0], float(r[1])) for r in rewards]
        self.on_error = on_error
        names = [reward_name(fn) for fn, _ in self.rewards]
        if len(set(names)) != len(names):
            raise ValueError(f"reward names must be unique (they name the logged components): {names}")
        self.names = names

    @classmethod
    def from_specs(cls, specs: Sequence[Any], on_error: str = "raise") -> RewardSet:
        """From config entries with ``name``, ``weight`` and ``kwargs`` (``RewardSpec`` or dicts)."""
        rewards = []
        for spec in specs:
            get = spec.get if isinstance(spec, dict) else lambda k, d=None, s=spec: getattr(s, k, d)
            fn = load_reward(get("name"), **dict(get("kwargs", {}) or {}))
            tasks = list(get("tasks", []) or [])
            rewards.append((ForTasks(fn, tasks) if tasks else fn, float(get("weight", 1.0))))
        return cls(rewards, on_error=on_error)

    def __call__(self, prompts: list[Any], completions: list[Any], **columns: Any) -> RewardOutput:
        n = len(completions)
        ids = [str(i) for i in (columns.get("id") or range(n))]
        total = [0.0] * n
        components: dict[str, list[float]] = {}
        errors: dict[str, int] = {}
        for (fn, weight), name in zip(self.rewards, self.names, strict=True):
            values = self._call_one(fn, name, prompts, completions, columns, ids, errors)
            if name not in errors:  # a failure was reported already
                self._warn_if_empty(fn, name, values, columns)
            components[name] = [math.nan if v is None else float(v) for v in values]
            for i, v in enumerate(values):
                if v is not None:
                    total[i] += weight * float(v)
        return RewardOutput(total=total, components=components, errors=errors)

    def score_rows(self, rows: Sequence[Any], completions: Sequence[str], row_index: Sequence[int]) -> RewardOutput:
        """The rewards of completions written for dataset rows, called as TRL calls them.

        Args:
            rows: the prompts' rows; any objects with ``prompt`` and ``columns()`` (``data.schema.Row``).
            completions: [N] completion texts; ``completions[j]`` answers ``rows[row_index[j]]``.
            row_index: [N] indices into ``rows``.

        Raises:
            ValueError: completions and indices differ in number, or an index is outside ``rows``.

        Each row's columns are repeated per completion (TRL passes dataset columns the same way), and the
        completions go in as assistant messages (TRL's conversational format), so TRL's rewards run unchanged.
        """
        if len(completions) != len(row_index) or any(not 0 <= i < len(rows) for i in row_index):
            raise ValueError(
                f"score_rows: {len(completions)} completions and {len(row_index)} row indices (each in 0.."
                f"{len(rows) - 1}) must pair up one to one"
            )
        columns: dict[str, list] = {}
        for i in row_index:
            for k, v in rows[i].columns().items():
                columns.setdefault(k, []).append(v)
        prompts = [rows[i].prompt for i in row_index]
        return self(prompts, [[{"role": "assistant", "content": t}] for t in completions], **columns)

    def _call_one(self, fn, name, prompts, completions, columns, ids, errors) -> list[float | None]:
        n = len(completions)
        try:
            values = fn(prompts=prompts, completions=completions, **columns)
        except Exception as e:  # noqa: BLE001 - any failure of user code goes through the policy
            return self._fail(name, f"raised {type(e).__name__}: {e}", ids, list(range(n)), [None] * n, errors, e)
        if not isinstance(values, (list, tuple)) or len(values) != n:
            got = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
            return self._fail(
                name, f"returned {got} values for {n} completions", ids, list(range(n)), [None] * n, errors
            )
        values = list(values)
        bad = [i for i, v in enumerate(values) if v is not None and not _number(v)]
        if bad:
            first = values[bad[0]]
            return self._fail(
                name, f"returned {first!r} ({type(first).__name__}), not a number", ids, bad, values, errors
            )
        bad = [i for i, v in enumerate(values) if v is not None and not math.isfinite(float(v))]
        if bad:
            return self._fail(name, f"returned {values[bad[0]]!r}", ids, bad, values, errors)
        return values

    @staticmethod
    def _warn_if_empty(fn: RewardFn, name: str, values: list[float | None], columns: dict[str, Any]) -> None:
        """A warning when a reward gives no value (None) for any sample of the batch it applies to: the batch then
        trains without it, which is rarely meant (a column it reads may be missing)."""
        applies = fn.applies(columns, len(values)) if isinstance(fn, ForTasks) else [True] * len(values)
        if any(applies) and all(v is None for v, a in zip(values, applies, strict=True) if a):
            logger.warning(
                "reward '%s' gave no value (None) for any of the %d samples of this batch it applies to: it adds "
                "nothing to their reward",
                name,
                sum(applies),
            )

    def _fail(self, name, what, ids, bad, values, errors, exc=None) -> list[float | None]:
        rows = list(dict.fromkeys(ids[i] for i in bad))  # a prompt's G completions share its id
        where = ", ".join(rows[:5]) + (" ..." if len(rows) > 5 else "")
        msg = f"reward '{name}' {what} (sample id: {where})"
        if self.on_error == "raise":
            raise RewardError(msg) from exc
        logger.warning("%s; policy %s", msg, self.on_error)
        errors[name] = errors.get(name, 0) + len(bad)
        replacement = 0.0 if self.on_error == "zero" else None
        for i in bad:
            values[i] = replacement
        return values


class ForTasks:
    """A reward restricted to rows of some tasks (the ``task`` column); other rows get None (not applicable).

    The paper scores QA rows with format + accuracy and caption rows with format + the structured caption
    reward; this is how one config says so.

    >>> from grpo_audio.rewards import structured_caption
    >>> r = ForTasks(structured_caption, ["caption"])
    >>> r(None, ["in A minor", "in A minor"], metadata=[{"key": "A minor"}] * 2, task=["caption", "key"])
    [1.0, None]
    """

    def __init__(self, fn: RewardFn, tasks: Sequence[str]):
        self.fn, self.tasks = fn, tuple(tasks)
        self.__name__ = reward_name(fn)

    def applies(self, columns: dict[str, Any], n: int) -> list[bool]:
        """[n] whether each of n samples is of one of the tasks."""
        return [t in self.tasks for t in columns.get("task") or [""] * n]

    def __call__(self, prompts: Any, completions: list[Any], **columns: Any) -> list[float | None]:
        values = self.fn(prompts=prompts, completions=completions, **columns)
        if not isinstance(values, (list, tuple)) or len(values) != len(completions):
            return values  # the safety net reports it
        return [v if a else None for v, a in zip(values, self.applies(columns, len(completions)), strict=True)]


def _number(v: Any) -> bool:
    """Whether ``v`` is a reward value TRL takes: a real number (bool and int included), or a NumPy or torch scalar
    holding one.

    >>> [_number(v) for v in (1, 0.5, True, "1", 1j)]
    [True, True, True, False, False]
    """
    if isinstance(v, numbers.Real):
        return True
    item = getattr(v, "item", None)  # NumPy scalars (np.bool_ is no numbers.Real) and 0-d arrays and tensors
    return getattr(v, "shape", None) == () and callable(item) and isinstance(item(), numbers.Real)

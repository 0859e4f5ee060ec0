"""The parts every config schema is made of: :func:`setting` (a field with its help string, and its choices or the
:class:`Range` of a number), :func:`shared_fields`, and the value sets several schemas share (defined in
``choices.py``; ``ConfigError`` in ``errors.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from omegaconf import MISSING

from ..choices import DTYPES, ENGINES, HF_BATCH_SIZE, IS_MODES, LOSS_TYPES, MASTER_DTYPES, SCALE_REWARDS, STRATEGIES


@dataclass(frozen=True)
class Range:
    """The values a number may take: from ``low`` to ``high`` (None: unbounded), each end included unless open.

    >>> FRACTION, 0.0 in FRACTION, 1.0 in FRACTION, str(COUNT)
    (Range('(0, 1]'), False, True, '>= 1')
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        return self.side(value) is None

    def side(self, value: float) -> str | None:
        """'below' or 'above' for a value outside the range, 'outside' for NaN (no range holds it), None inside.

        >>> POSITIVE.side(float("nan")), POSITIVE.side(0.0), POSITIVE.side(2.0)
        ('outside', 'below', None)
        """
        if value != value:  # NaN: every comparison is False, so no bound would catch it
            return "outside"
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return "below"
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return "above"
        return None

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"

    def __repr__(self) -> str:
        return f"Range({str(self)!r})"


NON_NEGATIVE = Range(0)
POSITIVE = Range(0, low_open=True)
COUNT = Range(1)
FRACTION = Range(0, 1, low_open=True)  # a share that cannot be nothing: memory, nucleus mass
SHARE = Range(0, 1)
PROBABILITY_BELOW_1 = Range(0, 1, high_open=True)  # dropout: 1 would drop everything


def shared_fields(record: type, section: Any) -> dict[str, Any]:
    """The values of the config ``section``'s fields that the dataclass ``record`` has too (by name): a record built
    from a section with them (``record(**shared_fields(record, section))``) cannot miss a setting added to both.

    >>> @dataclass
    ... class Sampling:
    ...     temperature: float = 1.0
    ...     seed: int | None = None
    >>> @dataclass
    ... class Section:
    ...     temperature: float = 0.7
    ...     engine: str = "hf"
    >>> shared_fields(Sampling, Section())
    {'temperature': 0.7}
    """
    return {f.name: getattr(section, f.name) for f in fields(record) if hasattr(section, f.name)}


def setting(
    default: Any = MISSING,
    help: str = "",
    choices: tuple[str, ...] | None = None,
    factory: Any = None,
    within: Range | None = None,
) -> Any:
    """A dataclass field of a config schema, with its help string (and optional fixed choices, or the range of a
    number) in its metadata; ``MISSING`` (the default) makes it required. ``load_config`` checks both."""
    meta: dict[str, Any] = {"help": help}
    if choices is not None:
        meta["choices"] = choices
    if within is not None:
        meta["range"] = within
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


__all__ = [
    "COUNT",
    "DTYPES",
    "ENGINES",
    "FRACTION",
    "HF_BATCH_SIZE",
    "IS_MODES",
    "LOSS_TYPES",
    "MASTER_DTYPES",
    "NON_NEGATIVE",
    "POSITIVE",
    "PROBABILITY_BELOW_1",
    "SCALE_REWARDS",
    "SHARE",
    "STRATEGIES",
    "Range",
    "setting",
    "shared_fields",
]

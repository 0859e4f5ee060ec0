"""Loading a config: a YAML file plus ``key=value`` overrides against a schema with omegaconf's structured configs.

An unknown key, a value of the wrong type or a missing required field fails at load time with a
:class:`ConfigError` that names the key and, for unknown keys, the valid ones. Fields whose value is one of a
fixed set declare ``choices`` in their metadata, and numbers with a natural range (a fraction, a count, a rate)
declare it as a :class:`Range` (``within``); both are checked the same way, in every schema. A file that is not
valid YAML fails naming the file and line; ``key=`` (nothing after the '=') sets a text or list field to its empty
value. :func:`describe` lists a schema's fields with their help (``grpo-audio config-help``).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from ..data.schema import REWARD_COLUMNS
from ..errors import ConfigError
from ..rewards.registry import check_reward_spec
from .run import RunConfig

T = TypeVar("T")


def _unknown_key_message(node_cls: type | None, full_key: str, key: str) -> str:
    """``node_cls`` is the dataclass the unknown ``key`` was found in (None if not known)."""
    valid = [f.name for f in dataclasses.fields(node_cls)] if node_cls is not None else []
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"unknown config key '{full_key}'.{hint} Valid keys here: {', '.join(valid)}."


def _node_class(schema: type, full_key: str) -> type | None:
    node_cls: type | None = schema
    for part in re.sub(r"\[\d+\]", "", full_key).split(".")[:-1]:
        node_cls = _resolve_field_type(node_cls, part) if node_cls is not None else None
    return node_cls


def _resolve_field_type(cls: type, name: str) -> type | None:
    hints = _type_hints(cls)
    t = hints.get(name)
    if t is not None and dataclasses.is_dataclass(t):
        return t
    origin_args = getattr(t, "__args__", None)
    if origin_args and dataclasses.is_dataclass(origin_args[0]):  # list[RewardSpec]
        return origin_args[0]
    return None


def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_values(obj: Any, prefix: str = "") -> None:
    """Each field's value against its ``choices`` and ``range``, recursing into sections and lists of them."""
    if isinstance(obj, list):
        for i, item in enumerate(obj):
            check_values(item, f"{prefix}[{i}]")
        return
    if not dataclasses.is_dataclass(obj):
        return
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}.{f.name}" if prefix else f.name
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            close = difflib.get_close_matches(str(value).lower(), [str(c) for c in choices], n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"config key '{key}' = {value!r} is not one of: {', '.join(choices)}.{hint}")
        within = f.metadata.get("range")
        if within is not None and (side := within.side(value)):
            raise ConfigError(f"config key '{key}' = {value!r} is {side} its range, {within}.")
        check_values(value, key)


def to_object(cfg: DictConfig, schema: type[T]) -> T:
    """Turn a merged omegaconf node into the dataclass instance, translating omegaconf's errors."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"missing required config key(s): {', '.join(missing)}.")
    try:
        obj = OmegaConf.to_object(cfg)
    except MissingMandatoryValue as e:  # pragma: no cover - caught by missing_keys above
        raise ConfigError(f"missing required config key '{e.full_key}'.") from None
    check_values(obj)
    return obj  # type: ignore[return-value]


def _check_keys(schema: type, data: Any, source: str, prefix: str = "") -> None:
    """Find unknown keys ourselves, with their full path: omegaconf loses the path inside list items; and a
    true/false setting given anything but true or false (omegaconf would read 2 as true, 0 and "off" as false)."""
    if not isinstance(data, dict):
        return
    valid = {f.name for f in dataclasses.fields(schema)}
    hints = _type_hints(schema)
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in valid:
            raise ConfigError(f"{source}: {_unknown_key_message(schema, full, str(key))}")
        if hints[key] is bool and not isinstance(value, bool):
            raise ConfigError(f"{source}: config key '{full}' has the wrong type: {value!r} is not true or false")
        sub = _resolve_field_type(schema, key)
        if sub is None:
            continue
        if isinstance(value, list):
            for i, item in enumerate(value):
                _check_keys(sub, item, source, f"{full}[{i}].")
        else:
            _check_keys(sub, value, source, f"{full}.")


def merge_config(schema: type, base: DictConfig, other: DictConfig | ListConfig, source: str) -> DictConfig:
    """``other`` merged into ``base`` (a structured config of ``schema``); errors name the key and ``source``."""
    _check_keys(schema, OmegaConf.to_container(other), source)
    try:
        return OmegaConf.merge(base, other)  # type: ignore[return-value]
    except ConfigKeyError as e:
        node = _node_class(schema, e.full_key)
        raise ConfigError(f"{source}: {_unknown_key_message(node, e.full_key, str(e.key))}") from None
    except ValidationError as e:
        raise ConfigError(f"{source}: config key '{e.full_key}' has the wrong type: {e.msg.splitlines()[0]}") from None
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"{source}: config key '{key}': {str(e).splitlines()[0]}") from None


_LIST_ITEM = re.compile(r"\[\d+\]|(?:^|\.)\d+(?:\.|$)")  # stages[1].epochs or stages.1.epochs


def set_list_item(schema: type, cfg: DictConfig, override: str, source: str) -> None:
    """Apply one ``key=value`` override whose key goes through an item of a list (``stages[1].epochs=2``, or
    ``stages.1.epochs=2``) to ``cfg`` (a structured config of ``schema``), in place: the value is read as YAML, as
    every override's is, and checked against the field's type.

    Raises:
        ConfigError: the index is outside the list, a key is unknown (with the valid keys), or the value has the
            wrong type; the message names the key and ``source``.
    """
    key, text = override.split("=", 1)
    parts = re.sub(r"\[(\d+)\]", r".\1", key).split(".")
    if parts[-1].isdigit():
        raise ConfigError(f"{source}: config key '{key}': set a list item's fields one by one ({key}.FIELD=VALUE)")
    node: Any = cfg
    for depth, part in enumerate(parts[:-1]):
        if part.isdigit():
            if not isinstance(node, ListConfig) or int(part) >= len(node):
                where = ".".join(parts[:depth])
                size = len(node) if isinstance(node, ListConfig) else 0
                raise ConfigError(f"{source}: config key '{key}': '{where}' has {size} items, no item {part}")
            node = node[int(part)]
        elif isinstance(node, DictConfig) and part in node:
            node = node[part]
        else:
            break  # OmegaConf.update names the unknown key below
    leaf = re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", ".".join(parts))  # stages[1].epochs
    value = _override_value(schema, leaf, text, source)
    node_cls = _node_class(schema, leaf)
    if node_cls is not None:  # unknown keys and true/false settings as a YAML file's are checked
        _check_keys(node_cls, {parts[-1]: value}, source, leaf[: len(leaf) - len(parts[-1])])
    try:
        OmegaConf.update(cfg, ".".join(parts), value, merge=True)
    except (ConfigKeyError, ConfigAttributeError) as e:
        message = _unknown_key_message(_node_class(schema, e.full_key), key, str(e.key))
        raise ConfigError(f"{source}: {message}") from None
    except ValidationError as e:
        raise ConfigError(f"{source}: config key '{key}' has the wrong type: {e.msg.splitlines()[0]}") from None


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    schema: type[T] = RunConfig,  # type: ignore[assignment]
) -> T:
    """Load a YAML file (optional) and ``key=value`` overrides against a dataclass schema.

    Args:
        path: YAML file mirroring ``schema``; None starts from the schema's defaults.
        overrides: dot-list overrides, e.g. ``["grpo.beta=0.04", "model.path=/ckpt"]``.
        schema: the top-level dataclass (``RunConfig`` for a GRPO run).

    Returns:
        An instance of ``schema``.

    Raises:
        ConfigError: unknown key (with the valid keys), wrong type, missing required field, a value outside
            a field's choices, or a reward that does not exist or does not take its ``kwargs``; the message names
            the key.
    """
    cfg: DictConfig = OmegaConf.structured(schema)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        cfg = merge_config(schema, cfg, _read_yaml(path), str(path))
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"overrides must be key=value, got: {', '.join(bad)}")
        items = [o for o in overrides if _LIST_ITEM.search(o.split("=", 1)[0])]
        plain = [o for o in overrides if o not in items]
        if plain:
            cfg = merge_config(schema, cfg, _read_overrides(schema, plain, "command line"), "command line")
        for override in items:
            set_list_item(schema, cfg, override, "command line")
    obj = to_object(cfg, schema)
    _check_rewards(obj)
    return obj


def _read_yaml(path: Path) -> DictConfig:
    """A config file's settings; a file that is not YAML, or not a mapping of keys, fails naming the file (and the
    line and column of the fault)."""
    try:
        data = OmegaConf.load(path)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML: {_yaml_problem(e)}") from e
    except OSError as e:  # omegaconf's word for a file holding a single value
        raise ConfigError(f"{path}: cannot be read as a config: {e}") from e
    if not isinstance(data, DictConfig):
        raise ConfigError(f"{path}: a config file is a mapping of keys (key: value), not a list")
    return data


def _yaml_problem(e: yaml.YAMLError) -> str:
    """What a YAML parser says is wrong, on one line ("found duplicate key seed", "did not find expected ',' ...")."""
    problem, context = getattr(e, "problem", None), getattr(e, "context", None)
    if problem is None:
        return str(e).splitlines()[0]
    return f"{context}: {problem}" if context else problem


def _read_overrides(schema: type, overrides: list[str], source: str) -> DictConfig:
    """``key=value`` overrides as one config node, each value read by :func:`_override_value`."""
    node = OmegaConf.create()
    for override in overrides:
        key, text = override.split("=", 1)
        OmegaConf.update(node, key, _override_value(schema, key, text, source), merge=True)
    return node


_EMPTY: dict[type, Any] = {str: "", list: []}


def _override_value(schema: type, key: str, text: str, source: str) -> Any:
    """The value of the override ``key=text``, read as YAML as omegaconf reads it, except that ``key=`` (nothing
    after the '=', which YAML reads as null and no field takes) sets a text or list field to its empty value.

    Raises:
        ConfigError: the text is not valid YAML, or ``key=`` for a field that has no empty value (a number, a flag,
            a mapping, whose overrides merge into it).
    """
    if not text.strip():
        node = _node_class(schema, key)
        hint = _type_hints(node).get(re.sub(r"\[\d+\]", "", key).split(".")[-1]) if node is not None else None
        origin = typing.get_origin(hint) or hint
        if origin in _EMPTY:
            return type(_EMPTY[origin])()
        if hint is not None:
            raise ConfigError(f"{source}: config key '{key}' needs a value ({getattr(hint, '__name__', hint)})")
        return None  # an unknown key: named as one when it is merged
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist([f"value={text}"]))["value"]
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: config key '{key}': {text!r} is not valid YAML: {_yaml_problem(e)}") from e


def _check_rewards(cfg: Any) -> None:
    """Each reward spec's name and settings, checked against the reward's factory now rather than in the run."""
    for i, spec in enumerate(getattr(cfg, "rewards", None) or []):
        try:
            check_reward_spec(spec.name, dict(spec.kwargs), REWARD_COLUMNS)
        except ValueError as e:
            raise ConfigError(f"rewards[{i}]: {e}") from None


def help_of(schema: type, name: str) -> str:
    """The help string of ``schema``'s field ``name`` (for a command-line flag that sets the same thing)."""
    return next(f.metadata["help"] for f in dataclasses.fields(schema) if f.name == name)


def describe(schema: type = RunConfig, prefix: str = "") -> list[str]:
    """One line per field, ``key (type, default): help [choices]`` (or its range: ``[>= 1]``, ``[in (0, 1]]``),
    recursing into nested sections."""
    lines: list[str] = []
    hints = _type_hints(schema)
    for f in dataclasses.fields(schema):
        key = f"{prefix}{f.name}"
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            lines.append(f"{key}: {f.metadata['help']}")
            lines.extend(describe(t, key + "."))
            continue
        if f.default is not dataclasses.MISSING and f.default is not MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "required"
        tname = getattr(t, "__name__", str(t))
        choices = f.metadata.get("choices")
        within = f.metadata.get("range")
        extra = f" [{' | '.join(choices)}]" if choices else ""
        if within is not None:  # [>= 1], [in (0, 1]]
            extra = f" [{within}]" if within.low is None or within.high is None else f" [in {within}]"
        lines.append(f"{key} ({tname}, {default}): {f.metadata['help']}{extra}")
        sub = _resolve_field_type(schema, f.name)
        if sub is not None:
            lines.extend(describe(sub, key + "[]."))
    return lines

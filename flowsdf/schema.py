"""Config dataclasses <-> JSON, checked: what a valid value of every field is, said beside the field.

Every config section is a dataclass whose fields carry their type (the annotation) and whose
class attribute ``RULES`` says, per field, which values are allowed (`Rule`): a range, a set of
names, an upper bound on anything that sizes an allocation. `build` rebuilds a dataclass tree
from plain JSON values and checks every field on the way, so a config.json, a dataset manifest
or a `--set` override with an impossible value is refused by one line naming the field
("config: render.n_samples must be an integer from 1 to 512, got -5") instead of failing later,
deep inside torch, or allocating more memory than the machine has.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flowsdf.errors import FlowSDFError


@dataclass(frozen=True)
class Rule:
    """A field's allowed values: `ok(value)` on a value of the right type; `text` says it in words."""

    text: str  # completes "config: render.n_samples must be ..."
    ok: Callable[[Any], bool]


def int_range(low: int, high: int) -> Rule:
    """An integer from `low` to `high`: every size-like field has an upper bound, so no config can
    ask for an allocation the bound does not allow."""
    return Rule(f"an integer from {low:,} to {high:,}", lambda v: low <= v <= high)


def one_of(*names: str) -> Rule:
    return Rule(" or ".join(repr(n) for n in names), lambda v: v in names)


def all_in(low: int, high: int) -> Rule:
    """A non-empty list of integers, each from `low` to `high`."""
    return Rule(f"a non-empty list of integers from {low:,} to {high:,}",
                lambda v: len(v) > 0 and all(low <= c <= high for c in v))


COUNT = Rule("an integer >= 0", lambda v: v >= 0)
POSITIVE = Rule("a positive number", lambda v: v > 0)
NON_NEGATIVE = Rule("a number >= 0", lambda v: v >= 0)
FRACTION = Rule("a number in [0, 1]", lambda v: 0 <= v <= 1)
ANY_BOOL = Rule("true or false", lambda v: True)


def build(cls: Any, value: Any, path: str = "", rule: Rule | None = None) -> Any:
    """Rebuild a dataclass (recursively) from plain JSON values, checking every field's name, type
    and rule (the class's RULES); `path` names the field in the one-line error ("render.n_samples")."""
    if dataclasses.is_dataclass(cls):
        where = path or "the config"
        if not isinstance(value, dict):
            raise FlowSDFError(f"config: {where} must be an object of {cls.__name__} fields, got {value!r}")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(value) - names
        if unknown:
            raise FlowSDFError(f"config: unknown field(s) {sorted(unknown)} in {where} ({cls.__name__})")
        rules = getattr(cls, "RULES", {})
        return cls(**{k: build(hints[k], v, f"{path}.{k}" if path else k, rules.get(k)) for k, v in value.items()})
    built = _typed(cls, value)
    if built is _WRONG or (rule is not None and not rule.ok(built)):
        raise FlowSDFError(f"config: {path} must be {rule.text if rule else _type_text(cls)}, got {json.dumps(value)}")
    return built


def check(obj: Any, path: str = "") -> Any:
    """A dataclass built in code, checked like one read from JSON (the same object back)."""
    return build(type(obj), dataclasses.asdict(obj), path)


_WRONG = object()  # what _typed returns for a value of the wrong type


def _typed(cls: Any, value: Any) -> Any:
    """`value` as the annotated type `cls` (int, float, bool, str, tuple[T, ...], list[T],
    dict[str, T], T | None), or _WRONG. JSON has no tuples, and writes 1.0 as 1; bools are not numbers here."""
    origin, args = typing.get_origin(cls), typing.get_args(cls)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _typed(next(a for a in args if a is not type(None)), value)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return _WRONG
        items = [_typed(args[0], v) for v in value]
        return _WRONG if _WRONG in items else origin(items)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            return _WRONG
        items = {k: _typed(args[1], v) for k, v in value.items()}
        return _WRONG if _WRONG in items.values() else items
    if cls is bool:
        return value if isinstance(value, bool) else _WRONG
    if cls is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _WRONG
    if cls is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return float(value) if ok else _WRONG
    if cls is str:
        return value if isinstance(value, str) else _WRONG
    raise TypeError(f"config field type {cls} has no JSON form")  # a new field type: teach _typed


def _type_text(cls: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    return names.get(cls, f"of type {getattr(cls, '__name__', cls)}")

"""Config overrides from the command line: `--set stage1.batch_size=2 --set data.n_train_shapes=1000`.

A value is read as a JSON literal (`2`, `1e-4`, `true`, `[16, 32, 32, 64]`, `{"decoder": 0.5}`,
`"text"`); anything that is not JSON is taken as a plain string (`render.search_dtype=bfloat16`).
The overridden config goes through the same checks as a config.json (types, ranges, agreements
between sections), so a bad key or value is one line naming it. Overrides are part of the config:
the run's config.json records the values they set.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import typing
from typing import Any

from flowsdf import config as config_mod
from flowsdf.config import Config
from flowsdf.errors import FlowSDFError


def add_argument(parser: argparse.ArgumentParser) -> None:
    """The repeatable `--set KEY=VALUE` option."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config field, e.g. --set stage1.batch_size=2 (repeatable; "
                             "values are JSON literals or plain strings; recorded in the run's config.json)")


def parse(items: list[str]) -> list[tuple[str, Any]]:
    """`["a.b=1", ...]` -> `[("a.b", 1), ...]`; a malformed item is a FlowSDFError."""
    pairs = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise FlowSDFError(f"--set {item!r}: expected KEY=VALUE, e.g. stage1.batch_size=2")
        pairs.append((key, parse_value(text.strip())))
    return pairs


def parse_value(text: str) -> Any:
    """A JSON literal if `text` is one, else the text itself as a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _field_path(key: str) -> list[str]:
    """Check that `key` names a leaf field of Config ("stage1.batch_size"); returns its parts."""
    cls: Any = Config
    parts = key.split(".")
    for i, name in enumerate(parts):
        where = ".".join(parts[:i]) or "the config"
        if not dataclasses.is_dataclass(cls):
            raise FlowSDFError(f"--set {key}: {where} is a single value, not a section")
        names = [f.name for f in dataclasses.fields(cls)]
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean {'.'.join([*parts[:i], close[0]])}?)" if close else ""
            raise FlowSDFError(f"--set {key}: unknown config key{hint}; {where} has: {', '.join(names)}")
        cls = typing.get_type_hints(cls)[name]
    if dataclasses.is_dataclass(cls):
        raise FlowSDFError(f"--set {key}: {key} is a section; set one of its fields, e.g. {key}.{dataclasses.fields(cls)[0].name}")
    return parts


def apply(cfg: Config, items: list[str]) -> Config:
    """A new, checked Config: `cfg` with the `--set` overrides applied (`cfg` is left alone)."""
    if not items:
        return cfg
    d = config_mod.to_dict(cfg)
    for key, value in parse(items):
        *sections, leaf = _field_path(key)
        node = d
        for name in sections:
            node = node[name]
        node[leaf] = value
    return config_mod.from_dict(d)


def keys(items: list[str]) -> list[str]:
    return [key for key, _ in parse(items)]


def check_recorded(run_cfg: Config, items: list[str], run: str) -> None:
    """A continued run keeps its config.json: `--set` may repeat its values but not change them."""
    wanted = config_mod.to_dict(apply(run_cfg, items))
    have = config_mod.to_dict(run_cfg)
    for key in keys(items):
        a, b = have, wanted
        for name in key.split("."):
            a, b = a[name], b[name]
        if a != b:
            raise FlowSDFError(
                f"--set {key}={json.dumps(b)}: {run} was made with {key}={json.dumps(a)} and a continued run keeps "
                f"its config; start a new run (another --out) to change it"
            )

"""YAML run configs: load with clear errors, and override entries from the command line."""

from __future__ import annotations

import contextlib
import copy
import math
import os
import re
import types
import typing
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Iterator, Self

import yaml

from rissole_runtime.errors import ConfigError


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-4` as a float (YAML 1.1 wants `1.0e-4`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found. Shipped configs are under configs/.")
    try:
        cfg = parse_yaml(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc}).") from exc
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, found {type(cfg).__name__}.")
    return cfg


def apply_overrides(cfg: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` strings (value parsed as YAML), e.g. `train.steps=200`."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. train.steps=200.")
        node = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section of the config.")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"override {item!r}: unknown key {key!r}; known here: {sorted(node)}.")
        node[parts[-1]] = parse_yaml(raw)
    return cfg


def require(section: dict[str, Any], name: str, keys: list[str]) -> None:
    """`section` must be a mapping holding `keys`, each a mapping when it is one of the config's sections."""
    if not isinstance(section, dict):
        raise ConfigError(f"config section {name!r}: expected a mapping, found {_found(section)}.")
    missing = [k for k in keys if k not in section]
    if missing:
        raise ConfigError(f"config section {name!r} is missing {missing}.")
    for k in keys:
        if k in SECTIONS and not isinstance(section[k], dict):
            raise ConfigError(f"config key {k!r}: expected a mapping (a section), found {_found(section[k])}.")


SECTIONS = ("model", "data", "train", "diffusion")


def require_data(config: dict[str, Any], keys: list[str]) -> None:
    """The config's `data` section must name `keys` (paths and specs: strings); the other entries a trainer reads
    with defaults must be strings, numbers or null."""
    data = config["data"]
    require(data, "data", keys)
    for key, value in data.items():
        if key in keys and not isinstance(value, str) or not isinstance(value, (str, int, float, type(None))) \
                or isinstance(value, bool):
            raise ConfigError(f"config key data.{key}: expected {'a path or spec (a string)' if key in keys else 'a string, a number or null'}, "
                              f"found {_found(value)}.")


@contextlib.contextmanager
def naming_file(path: str | os.PathLike) -> Iterator[None]:
    """Prefix a ConfigError raised while a config is used with the file it came from."""
    try:
        yield
    except ConfigError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise ConfigError(f"{path}: {exc}") from exc


def _found(value: Any) -> str:
    if isinstance(value, bool):
        return f"{str(value).lower()} (a bool)"
    if isinstance(value, (int, float, str)):
        return f"{value!r} ({type(value).__name__})"
    return "null" if value is None else f"a {type(value).__name__}"


def _matches(value: Any, hint: Any) -> bool:
    """Does a YAML value fit a dataclass field's type hint (int, float, bool, str, list[int], dict, X | None)?
    A bool is not a number and a string is not a bool; floats must be finite."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin is list or hint is list:
        args = typing.get_args(hint)
        return isinstance(value, list) and (not args or all(_matches(v, args[0]) for v in value))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True


def _describe(hint: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return f"a list of {_describe(typing.get_args(hint)[0]).removeprefix('an ').removeprefix('a ')}s"
    if typing.get_origin(hint) is dict or hint is dict:
        return "a mapping"
    return names.get(hint, str(hint))


def _negative(value: Any) -> bool:
    nums = value if isinstance(value, list) else [value]
    return any(isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0 for v in nums)


def check_section_types(section: Any, defaults: dict[str, Any], name: str,
                        positive: tuple[str, ...] = (), nullable: tuple[str, ...] = ()) -> None:
    """A train-like section against its defaults: a key whose default is an int must be an integer, a float a
    finite number (an integer will do), a bool true/false, a str a string, a list a list; a default of None takes
    anything, and so may those named in `nullable` (null switches them off). Numbers may not be negative, and
    those named in `positive` must be at least 1."""
    if not isinstance(section, dict):
        raise ConfigError(f"config section {name!r}: expected a mapping, found {_found(section)}.")
    for key, value in section.items():
        if key not in defaults or value is None and (defaults[key] is None or key in nullable):
            continue
        default = defaults[key]
        hint: Any = Any if default is None else type(default)
        bad = not _matches(value, hint) or isinstance(value, float) and not math.isfinite(value)
        if bad:
            raise ConfigError(f"config key {name}.{key}: expected {_describe(hint) if hint is not Any else 'a finite value'}"
                              f", found {_found(value)}.")
        if _negative(value):
            raise ConfigError(f"config key {name}.{key}: expected a value >= 0, found {_found(value)}.")
        if key in positive and isinstance(value, (int, float)) and value < 1:
            raise ConfigError(f"config key {name}.{key}: expected a value >= 1, found {_found(value)}.")


class ModelConfig:
    """Base of the model config dataclasses: built from a YAML mapping with unknown keys refused
    (a typo would otherwise silently train the default), and written back as a plain dict."""

    what = "model"  # how the error names the section
    may_be_zero: tuple[str, ...] = ()  # integer keys allowed to be 0 (the class checks their own rule)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        """Unknown keys refused; every value checked against its field's type (a bool is not a number, 'no' is
        not false, 'ten' is not an integer); integers and integer lists at least 1, floats finite and >= 0."""
        if not isinstance(d, dict):
            raise ConfigError(f"config section {cls.what!r}: expected a mapping, found {_found(d)}.")
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown {cls.what} keys {sorted(unknown)}; known: {sorted(known)}")
        hints = typing.get_type_hints(cls)
        for key, value in d.items():
            hint = hints[key]
            if not _matches(value, hint):
                raise ConfigError(f"config key {cls.what}.{key}: expected {_describe(hint)}, found {_found(value)}.")
            int_hint = hint is int or typing.get_origin(hint) is list and typing.get_args(hint) == (int,)
            ints = [v for v in (value if isinstance(value, list) else [value])
                    if int_hint and isinstance(v, int) and not isinstance(v, bool)]
            if any(v < (0 if key in cls.may_be_zero else 1) for v in ints) or _negative(value):
                raise ConfigError(f"config key {cls.what}.{key}: expected {'values' if isinstance(value, list) else 'a value'} "
                                  f">= {1 if ints else 0}, found {_found(value)}.")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

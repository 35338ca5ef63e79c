"""Checks on untrusted input that the runtime and the training package share (numpy and the standard library
only): a manifest's keys and types against a small schema, finiteness of arrays, paths named by a manifest
staying inside their directory.

A schema maps a key to a `Field`: the type(s) allowed, whether it may be missing or None, and for numbers
the smallest value. bool is never accepted where a number is wanted (JSON `true` is not 1), and a number
is never accepted where a bool is wanted (YAML `'no'` as a string is not false).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from rissole_runtime.errors import DataError, RissoleError


@dataclass(frozen=True)
class Field:
    types: tuple[type, ...]
    required: bool = True
    nullable: bool = False
    min: float | None = None  # numbers: smallest allowed value
    length: int | None = None  # lists: exact length
    items: tuple[type, ...] | None = None  # lists: type of every item


INT = (int,)
NUM = (int, float)
STR = (str,)
BOOL = (bool,)
LIST = (list,)
DICT = (dict,)

_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true/false", list: "a list", dict: "a mapping"}


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a bool)"
    if isinstance(value, (int, float, str)):
        return f"{value!r} ({type(value).__name__})"
    return f"a {type(value).__name__}"


def _is(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, float) and float in types:
        return math.isfinite(value)
    return isinstance(value, types)


def expected(f: Field) -> str:
    names = " or ".join(dict.fromkeys(_NAMES[t] for t in (f.types if f.types != NUM else (float,))))
    if f.types == NUM:
        names = "a finite number"
    if f.min is not None:
        names += f" >= {f.min:g}"
    if f.length is not None:
        names += f" of {f.length}"
    if f.items is not None:
        names += f" ({' or '.join(_NAMES[t] for t in f.items)} each)"
    return names + (" or null" if f.nullable else "")


def check_value(value: Any, f: Field) -> bool:
    if value is None:
        return f.nullable
    if not _is(value, f.types):
        return False
    if f.min is not None and not isinstance(value, bool) and isinstance(value, (int, float)) and value < f.min:
        return False
    if isinstance(value, list):
        if f.length is not None and len(value) != f.length:
            return False
        if f.items is not None and not all(_is(v, f.items) and (f.min is None or v >= f.min) for v in value):
            return False
    return True


def check_schema(obj: Any, schema: Mapping[str, Field], where: str | os.PathLike, section: str = "",
                 error: type[RissoleError] = DataError, fix: str = "") -> dict[str, Any]:
    """Refuse `obj` unless it is a mapping whose keys match `schema` (required keys present, types and ranges
    right); the message names the file, the key, what was expected and what was found. Returns obj."""
    tail = f" {fix}" if fix else ""
    if not isinstance(obj, dict):
        what = f"{section!r}" if section else "the top level"
        raise error(f"{where}: expected a mapping at {what}, found {type_name(obj)}.{tail}")
    for key, f in schema.items():
        name = f"{section}.{key}" if section else key
        if key not in obj:
            if f.required:
                raise error(f"{where}: key {name!r} is missing (expected {expected(f)}).{tail}")
            continue
        if not check_value(obj[key], f):
            raise error(f"{where}: key {name!r}: expected {expected(f)}, found {type_name(obj[key])}.{tail}")
    return obj


def check_finite(array: Any, what: str) -> None:
    """Refuse an array holding nan or inf (decoding those gives black images and exit 0); name what and where."""
    a = np.asarray(array)
    if a.dtype.kind not in "fc":
        return
    bad = ~np.isfinite(a)
    if bad.any():
        first = np.unravel_index(int(np.argmax(bad)), a.shape)
        raise DataError(f"{what}: {int(bad.sum())} of {a.size} values are not finite (first at index "
                        f"{list(map(int, first))}: {a[first]}); expected finite numbers. Nothing was written. "
                        "Check the options (guidance, eta) and the model's weights and database.")


def read_json(path: str | os.PathLike, fix: str, what: str = "manifest") -> Any:
    """The JSON document at `path`; unreadable JSON or text that is not UTF-8 is a DataError naming the file,
    `what` it is and the `fix` (manifests, tables and bundles are untrusted input)."""
    try:
        return json.loads(Path(path).read_text())
    except ValueError as exc:  # json.JSONDecodeError and UnicodeDecodeError
        raise DataError(f"{path}: corrupt {what} ({exc}). {fix}") from exc


def contained_path(root: str | os.PathLike, rel: str, what: str) -> Path:
    """root / rel, refused unless it stays inside root: no absolute path, no `..`, no symlink (at any level)
    resolving outside. Files named by a manifest are untrusted input (a bundle or database from elsewhere)."""
    root = Path(root)
    p = Path(rel) if isinstance(rel, str) else None
    if p is None or not rel or p.is_absolute() or ".." in p.parts or "\x00" in rel:
        raise DataError(f"{root}: {what} names {rel!r}; expected a relative path inside {root}, found "
                        f"{'an absolute path' if p is not None and p.is_absolute() else 'a path leaving it'}. "
                        "The manifest is corrupt or hostile; nothing outside the directory is opened.")
    full = root / p
    base = os.path.realpath(root)
    real = os.path.realpath(full)
    if os.path.commonpath([base, real]) != base:
        raise DataError(f"{full}: {what} resolves to {real}, outside {base}; expected a file inside the directory "
                        "(a symlink leaves it). Nothing outside the directory is opened.")
    return full

"""Typed configuration: nested dataclasses read from TOML with ``--set`` overrides.

Every component keeps its own config dataclass next to its code (``StateConfig`` in
``state.py``, ``WriterConfig`` in ``writer.py`` …) and validates itself in
``__post_init__``. This module only knows how to build such a tree of dataclasses
from plain dictionaries, strictly: an unknown key or a value of the wrong type is
refused with a message that names the full dotted key, before any work starts.

Precedence is CLI (``--set a.b=1``) > TOML file > dataclass defaults.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib

T = TypeVar("T")


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file (or a ``.json`` one, e.g. a run's ``config.json``) into a dictionary.

    Args:
        path: file to read.

    Returns:
        The parsed document.

    Raises:
        ValueError: if the file is missing or is not valid TOML (JSON for ``.json``).
    """
    p = Path(path)
    if p.suffix == ".json":
        return load_json_object(p, "config file")
    if not p.is_file():
        raise ValueError(f"config file not found: {p}")
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config file {p} is not valid TOML: {exc}") from exc


def load_json_object(path: str | Path, what: str) -> dict[str, Any]:
    """Read a JSON file that must hold one object.

    Args:
        path: file to read.
        what: how messages name the file (``config file``, ``deepspeed.config``).

    Raises:
        ValueError: the file is missing, not valid JSON, or not one object.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{what} not found: {p}")
    try:
        doc = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} {p} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"{what} {p} must hold one JSON object")
    return doc


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse one ``a.b.c=value`` override; the value is read as a TOML value.

    Bare words that are not valid TOML (``dtype=bf16``) are taken as strings, so
    users need not quote them on a shell command line.

    Raises:
        ValueError: if there is no ``=`` or the key is empty.
    """
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ValueError(f"override {text!r} has an empty key")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def apply_overrides(doc: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``doc`` with every ``--set`` override applied in order."""
    out = json.loads(json.dumps(doc))  # deep copy of plain TOML data
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {text!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return out


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _refuse_nonfinite(value: Any, key: str) -> None:
    """Refuse NaN/inf anywhere in ``value`` (TOML accepts ``inf`` and ``nan``).

    No setting means anything as NaN or infinity (``train.lr = inf`` would
    silently diverge), so every float of the config is checked, whatever its
    declared type, with its dotted key named.
    """
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{key}: {value!r} is not a finite number")
    if isinstance(value, dict):
        for name, item in value.items():
            _refuse_nonfinite(item, f"{key}.{name}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _refuse_nonfinite(item, f"{key}[{i}]")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert only lossless cases."""
    _refuse_nonfinite(value, key)
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(f"{key}: {value!r} matches none of {tp}")
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ValueError(f"{key}: {value!r} is not one of {list(allowed)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a table, got {type(value).__name__}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a table, got {type(value).__name__} {value!r}")
        return from_dict(tp, value, prefix=key + ".")  # type: ignore[arg-type]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{key}: expected a string, got {value!r}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ValueError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, refusing unknown keys and wrong types.

    Args:
        cls: a dataclass type whose fields may themselves be dataclasses.
        data: plain values (from TOML and overrides).
        prefix: dotted path of ``data`` inside the whole config, for messages.

    Returns:
        An instance of ``cls``; its ``__post_init__`` validation has run.

    Raises:
        ValueError: naming the dotted key of the first problem found.
    """
    assert dataclasses.is_dataclass(cls), cls
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise ValueError(
            f"unknown config key {prefix}{unknown[0]!s} (known keys in "
            f"{prefix.rstrip('.') or 'the top level'}: {known})"
        )
    kwargs = {name: _coerce(value, hints[name], prefix + name) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ValueError as exc:
        msg = str(exc)
        # Sub-configs name their own keys; put the section path in front.
        if prefix and not msg.startswith(prefix):
            msg = prefix + msg
        raise ValueError(msg) from exc


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass tree as plain dictionaries (for logs and checkpoints)."""
    assert dataclasses.is_dataclass(obj)
    return dataclasses.asdict(obj)  # type: ignore[arg-type]


def _toml_value(value: Any, key: str) -> str:
    """One value as TOML (JSON's string escapes are valid TOML basic strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v, key) for v in value) + "]"
    raise ValueError(f"{key}: {value!r} cannot be written as TOML")


def to_toml(doc: dict[str, Any], prefix: str = "") -> str:
    """A nested dictionary as TOML text that :func:`load_toml` reads back.

    ``None`` values are left out (TOML has no null), so they read back as the
    field's default; every ``None`` default of the config is already ``None``.
    A dictionary-valued field becomes a table, as a section does.
    """
    scalars = [f"{k} = {_toml_value(v, prefix + k)}" for k, v in doc.items()
               if v is not None and not isinstance(v, dict)]
    tables = [to_toml(v, f"{prefix}{k}.") for k, v in doc.items() if isinstance(v, dict)]
    head = f"[{prefix.rstrip('.')}]\n" if prefix else ""
    body = head + "".join(line + "\n" for line in scalars)
    return "\n".join([body, *tables]) if tables else body


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] | None = None) -> T:
    """Defaults, then the TOML file, then ``--set`` overrides; validated."""
    doc = load_toml(path) if path is not None else {}
    doc = apply_overrides(doc, overrides or [])
    return from_dict(cls, doc)

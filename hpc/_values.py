"""Turning what users pass to ``log`` into values the run format can hold.

Runs on the writer thread, not in ``log()``: converting a tensor (``.item()`` may synchronise a GPU) or
flattening a nested dict must not cost the training loop anything.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Dict

__all__ = ["MAX_KEY_CHARS", "flatten_row", "key_problem", "plain_config"]

MAX_KEY_CHARS = 250
_SCALARS = (bool, int, float, str)  # bool first: it is a subclass of int
_NOT_CONVERTIBLE = object()
_FAST = frozenset(_SCALARS)


def key_problem(key: Any) -> str:
    """Why ``key`` cannot be a metric key, or '' when it can."""
    if not isinstance(key, str):
        return f"metric keys must be strings, got {type(key).__name__} {key!r}"
    if not key or not key.strip():
        return "metric keys must not be empty"
    if len(key) > MAX_KEY_CHARS:
        return f"metric key {key[:40]!r}... is {len(key)} characters; the limit is {MAX_KEY_CHARS}"
    return ""


def _convert(value: Any) -> Any:
    kind = type(value)
    if kind in _FAST:
        return value
    for base in _SCALARS:  # subclasses: numpy.float64 is a float, an IntEnum an int
        if isinstance(value, base):
            return base(value)
    if isinstance(value, (list, tuple)):
        items = [_convert(v) for v in value]
        if all(type(v) in (int, float) for v in items):
            return items
        return _NOT_CONVERTIBLE
    shape = getattr(value, "shape", None)
    if shape is not None and len(shape) == 1 and hasattr(value, "tolist"):
        return _convert(value.tolist())  # a 1-d array or tensor of numbers
    item = getattr(value, "item", None)
    if callable(item):
        try:
            converted = item()  # numpy scalars, 0-d arrays, one-element tensors
        except (ValueError, TypeError, RuntimeError):
            return _NOT_CONVERTIBLE
        if type(converted) in _FAST:
            return converted
    return _NOT_CONVERTIBLE


def flatten_row(
    data: Mapping, out: Dict[str, Any], reject: Callable[[str, str], None], prefix: str = ""
) -> None:
    """Flatten nested mappings with '/' into ``out``; call ``reject(key, why)`` for what cannot be kept."""
    for key, value in data.items():
        if not prefix and type(value) in _FAST:  # the common row: flat numbers, checked in log()
            out[key] = value
            continue
        full = f"{prefix}{key}" if prefix else key
        problem = (key_problem(key) or key_problem(full)) if prefix else ""  # top-level keys: log() checked
        if problem:
            reject(str(full), problem)
            continue
        if isinstance(value, Mapping):
            flatten_row(value, out, reject, f"{full}/")
            continue
        converted = _convert(value)
        if converted is _NOT_CONVERTIBLE:
            reject(full, f"values of type {type(value).__name__} cannot be logged "
                         "(use numbers, bools, strings, lists of numbers or nested dicts)")
            continue
        out[full] = converted


def plain_config(value: Any) -> Any:
    """A JSON-able copy of a config value: numbers, strings, lists, nested dicts; anything else as str()."""
    if isinstance(value, Mapping):
        return {str(k): plain_config(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain_config(v) for v in value]
    if value is None or type(value) in _FAST:
        return value
    converted = _convert(value)
    if converted is not _NOT_CONVERTIBLE:
        return converted
    return str(value)

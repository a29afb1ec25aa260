"""Turning what users pass to ``log`` into values the run format can hold.

Runs on the writer thread, not in ``log()``: converting a tensor (``.item()`` may synchronise a GPU) or
flattening a nested dict must not cost the training loop anything.

Converting calls the user's own code (``.item()``, ``.shape``, ``.tolist()``), which may raise anything: such
a failure drops that key with a warning, never the row.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Callable, Dict, Optional

__all__ = ["MAX_KEY_CHARS", "flatten_row", "key_problem", "plain_config"]

MAX_KEY_CHARS = 250
_SCALARS = (bool, int, float, str)  # bool first: it is a subclass of int
_NOT_CONVERTIBLE = object()
_FAST = frozenset(_SCALARS)
# From this magnitude on, float(n) overflows: docs/run-format.md section 3 writes such an integer as the float
# it rounds to, "Infinity" or "-Infinity". Smaller integers (even beyond 64 bits) stay exact JSON integers.
INT_FLOAT_LIMIT = 2 ** 1024 - 2 ** 970
_MAX_ERROR_CHARS = 120


def key_problem(key: Any) -> str:
    """Why ``key`` cannot be a metric key, or '' when it can."""
    if not isinstance(key, str):
        return f"metric keys must be strings, got {type(key).__name__} {key!r}"
    if not key or not key.strip():
        return "metric keys must not be empty"
    if len(key) > MAX_KEY_CHARS:
        return f"metric key {key[:40]!r}... is {len(key)} characters; the limit is {MAX_KEY_CHARS}"
    return ""


def _in_range(value: int) -> Any:
    if -INT_FLOAT_LIMIT < value < INT_FLOAT_LIMIT:
        return value
    return math.inf if value > 0 else -math.inf


def _convert(value: Any) -> Any:
    kind = type(value)
    if kind is int:
        return _in_range(value)
    if kind in _FAST:
        return value
    for base in _SCALARS:  # subclasses: numpy.float64 is a float, an IntEnum an int
        if isinstance(value, base):
            return _in_range(base(value)) if base is int else base(value)
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
        if type(converted) is int:
            return _in_range(converted)
        if type(converted) in _FAST:
            return converted
    return _NOT_CONVERTIBLE


def _raised(err: Exception) -> str:
    text = " ".join(str(err).split())
    if len(text) > _MAX_ERROR_CHARS:
        text = text[:_MAX_ERROR_CHARS] + "..."
    return f"reading its value raised {type(err).__name__}" + (f": {text}" if text else "")


def flatten_row(
    data: Mapping, out: Dict[str, Any], reject: Callable[[str, str], None], prefix: str = "",
    media: Optional[Callable[[str, Any], bool]] = None,
) -> None:
    """Flatten nested mappings with '/' into ``out``; call ``reject(key, why)`` for what cannot be kept.
    ``media(key, value)`` is offered every value that is not a plain scalar and returns True if it took it
    (an ``hpc.Image``, ``Table`` or ``Histogram``, or a list of them)."""
    for key, value in data.items():
        kind = type(value)
        if not prefix and kind in _FAST and (kind is not int or -INT_FLOAT_LIMIT < value < INT_FLOAT_LIMIT):
            out[key] = value  # the common row: flat numbers, keys checked in log()
            continue
        full = f"{prefix}{key}" if prefix else key
        problem = (key_problem(key) or key_problem(full)) if prefix else ""  # top-level keys: log() checked
        if problem:
            reject(str(full), problem)
            continue
        try:
            if isinstance(value, Mapping):
                flatten_row(value, out, reject, f"{full}/", media)
                continue
            if media is not None and media(full, value):
                continue
            converted = _convert(value)
        except Exception as err:  # noqa: BLE001 - the user's object raised: drop this key, keep the row
            reject(str(full), _raised(err))
            continue
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
    if value is None:
        return value
    try:
        converted = _convert(value)
        return converted if converted is not _NOT_CONVERTIBLE else str(value)
    except Exception as err:  # noqa: BLE001 - the user's object raised: keep a readable placeholder
        return f"<{type(value).__name__}: {_raised(err)}>"

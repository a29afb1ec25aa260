"""One place where every compute-side setting is resolved: explicit argument, then environment, then default.

Nothing else in ``hpc`` reads ``HPCSYNC_*`` variables, and nothing is read at import time: a job that sets
the environment after ``import hpc`` still gets what it set.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from .errors import SettingsError

__all__ = ["Settings"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_MODES = {"offline": "offline", "dryrun": "offline", "disabled": "disabled"}
_RESUME = {"allow": "allow", "must": "must", "never": "never", "true": "allow", "false": "never"}


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise SettingsError(name, value, "one of true/false/1/0/yes/no/on/off")


def _positive_float(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SettingsError(name, value, "a positive number of seconds") from None
    if not number > 0 or number == float("inf"):
        raise SettingsError(name, value, "a positive number of seconds")
    return number


def _positive_int(name: str, value: Any) -> int:
    expected = "a positive whole number of bytes"
    if isinstance(value, bool):
        raise SettingsError(name, value, expected)
    try:
        number = value if isinstance(value, int) else int(str(value).strip())
    except ValueError:
        raise SettingsError(name, value, expected) from None
    if number <= 0:
        raise SettingsError(name, value, expected)
    return number


def _mode(name: str, value: Any) -> str:
    text = str(value).strip().lower()
    if text not in _MODES:
        raise SettingsError(name, value, "one of offline, dryrun, disabled")
    return _MODES[text]


def _resume(name: str, value: Any) -> Optional[str]:
    if value is None:
        return None
    if value is True:
        return "allow"
    if value is False:
        return "never"
    text = str(value).strip().lower()
    if text == "":
        return None
    if text not in _RESUME:
        raise SettingsError(name, value, "one of allow, must, never (or true/false)")
    return _RESUME[text]


def _globs(name: str, value: Any) -> Tuple[str, ...]:
    """A comma-separated string or a list (globs, tags)."""
    if isinstance(value, str):
        return tuple(g.strip() for g in value.split(",") if g.strip())
    try:
        return tuple(str(g) for g in value)
    except TypeError:
        raise SettingsError(name, value, "a comma-separated string or a list of globs") from None


def _text(name: str, value: Any) -> Optional[str]:
    if value is None:
        return None
    text = str(value)
    return text if text.strip() else None


def _stats(name: str, value: Any) -> bool:
    return _bool(name, value)


# field name -> (environment variable, parser)
_ENV: Dict[str, Tuple[str, Callable[[str, Any], Any]]] = {
    "root": ("HPCSYNC_DIR", _text),
    "mode": ("HPCSYNC_MODE", _mode),
    "project": ("HPCSYNC_PROJECT", _text),
    "group": ("HPCSYNC_RUN_GROUP", _text),
    "job_type": ("HPCSYNC_JOB_TYPE", _text),
    "tags": ("HPCSYNC_TAGS", _globs),
    "run_id": ("HPCSYNC_RUN_ID", _text),
    "resume": ("HPCSYNC_RESUME", _resume),
    "silent": ("HPCSYNC_SILENT", _bool),
    "console": ("HPCSYNC_CONSOLE", _bool),
    "disable_code": ("HPCSYNC_DISABLE_CODE", _bool),
    "ignore_globs": ("HPCSYNC_IGNORE_GLOBS", _globs),
    "flush_interval_s": ("HPCSYNC_FLUSH_INTERVAL_S", _positive_float),
    "heartbeat_interval_s": ("HPCSYNC_HEARTBEAT_INTERVAL_S", _positive_float),
    "queue_max_bytes": ("HPCSYNC_QUEUE_MAX_BYTES", _positive_int),
    "stats": ("HPCSYNC_STATS", _stats),
    "stats_sample_s": ("HPCSYNC_STATS_SAMPLE_S", _positive_float),
    "stats_average_s": ("HPCSYNC_STATS_AVERAGE_S", _positive_float),
    "run_dir": ("HPCSYNC_RUN_DIR", _text),
}


@dataclass(frozen=True)
class Settings:
    """Resolved compute-side settings. Build one with :meth:`Settings.resolve`."""

    root: str = "hpc-runs"
    mode: str = "offline"
    project: str = "uncategorized"
    group: Optional[str] = None
    job_type: Optional[str] = None
    tags: Optional[Tuple[str, ...]] = None
    run_id: Optional[str] = None
    resume: Optional[str] = None
    silent: bool = False
    console: bool = True
    disable_code: bool = False
    ignore_globs: Tuple[str, ...] = field(default_factory=tuple)
    flush_interval_s: float = 1.0
    heartbeat_interval_s: float = 5.0
    # Rows and console text waiting for the writer thread; beyond it they are dropped and counted (docs/sdk.md).
    queue_max_bytes: int = 64 * 1024 * 1024
    stats: bool = True
    stats_sample_s: float = 2.0
    stats_average_s: float = 30.0
    run_dir: Optional[str] = None  # the run that `hpc log` / `hpc run finish` write to (shell scripts)

    @classmethod
    def names(cls) -> Tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def env_var(cls, name: str) -> str:
        return _ENV[name][0]

    @classmethod
    def resolve(
        cls, explicit: Optional[Mapping[str, Any]] = None, environ: Optional[Mapping[str, str]] = None,
        fallback: Optional[Mapping[str, Any]] = None,
    ) -> Settings:
        """Explicit values (``None`` means "not given") beat ``HPCSYNC_*`` variables, which beat ``fallback``
        (values a caller offers below the environment, such as W&B's ``dir=``), which beat defaults."""
        explicit = dict(explicit or {})
        fallback = {k: v for k, v in (fallback or {}).items() if v is not None}
        environ = os.environ if environ is None else environ
        unknown = sorted(set(explicit) - set(_ENV))
        if unknown:
            raise SettingsError(
                "settings", unknown, "valid settings are: " + ", ".join(sorted(_ENV))
            )
        values: Dict[str, Any] = {}
        for name, (var, parse) in _ENV.items():
            if explicit.get(name) is not None:
                values[name] = parse(name, explicit[name])
            elif environ.get(var) is not None and environ.get(var) != "":
                values[name] = parse(var, environ[var])
            elif name in fallback:
                values[name] = parse(name, fallback[name])
        resolved = cls(**{k: v for k, v in values.items() if v is not None})
        if resolved.stats_average_s < resolved.stats_sample_s:
            raise SettingsError(
                "stats_average_s", resolved.stats_average_s,
                f"at least stats_sample_s ({resolved.stats_sample_s})",
            )
        return resolved

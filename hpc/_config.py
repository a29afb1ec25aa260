"""``run.config`` and ``run.summary``: the two dict-like objects a run exposes besides ``log``."""
from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any, Callable, Dict, Iterator, Optional

from ._values import key_problem
from .errors import NoActiveRunError, UsageError

__all__ = ["Config", "Summary", "PreInit"]


class Config(dict):
    """``run.config``: a dict with attribute access; every change is written to config.json."""

    def __init__(self, data: Optional[Mapping] = None, on_change: Any = None):
        super().__init__(data or {})
        object.__setattr__(self, "_on_change", on_change)

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(dict(self))

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self._changed()

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self._changed()

    def update(self, *args: Any, allow_val_change: bool = True, **kwargs: Any) -> None:
        super().update(*args, **kwargs)
        self._changed()

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def as_dict(self) -> Dict[str, Any]:
        return dict(self)


class Summary(MutableMapping):
    """``run.summary``: last logged value per key (or its min/max/mean policy); a value set by hand wins.

    It holds no state of its own: ``values`` reads the run's current summary (after what is queued is
    written), ``set_value`` and ``delete`` pass a change on to the run's writer."""

    def __init__(self, values: Callable[[], Dict[str, Any]], set_value: Callable[[str, Any], None],
                 delete: Callable[[str], None]):
        self._read = values
        self._set = set_value
        self._delete = delete

    def _values(self) -> Dict[str, Any]:
        return self._read()

    def __getitem__(self, key: str) -> Any:
        return self._values()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        problem = key_problem(key)
        if problem:
            raise UsageError(problem)
        self._set(key, value)

    def __delitem__(self, key: str) -> None:
        if key not in self._values():
            raise KeyError(key)
        self._delete(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._values())

    def __len__(self) -> int:
        return len(self._values())

    def __repr__(self) -> str:
        return f"Summary({self._values()!r})"


class PreInit:
    """``hpc.config`` and ``hpc.summary`` while there is no active run (before ``init``, after ``finish``):
    as W&B's, every use raises an error that says to call ``init`` first (NoActiveRunError, a wandb.Error
    under ``hpc.as_wandb()``), instead of a TypeError or AttributeError on None."""

    def __init__(self, name: str):
        object.__setattr__(self, "_name", name)

    def _refuse(self, what: str) -> NoActiveRunError:
        return NoActiveRunError(f"{what} needs an active run: call hpc.init() (wandb.init()) first")

    def __getitem__(self, key: str) -> Any:
        raise self._refuse(f"{self._name}[{key!r}]")

    def __setitem__(self, key: str, value: Any) -> None:
        raise self._refuse(f"{self._name}[{key!r}]")

    def __delitem__(self, key: str) -> None:
        raise self._refuse(f"{self._name}[{key!r}]")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # copy, pickle and the like probe for dunders: they must see a plain object
            raise AttributeError(name)
        raise self._refuse(f"{self._name}.{name}")

    def __setattr__(self, name: str, value: Any) -> None:
        raise self._refuse(f"{self._name}.{name}")

    def __repr__(self) -> str:
        return f"<{self._name}: no active run>"

"""``hpc.as_wandb()``: make ``import wandb`` (and ``wandb.sdk...``, ``wandb.wandb_run``) give hpc.

A finder placed first on ``sys.meta_path`` answers every ``wandb`` and ``wandb.*`` import with modules built
here from hpc's own objects, so libraries that import wandb themselves (transformers' ``WandbCallback``,
Lightning's ``WandbLogger``) record hpc runs, even where the real ``wandb`` package is installed. A
``wandb.*`` submodule not listed in ``_SUBMODULES`` is not found (``ModuleNotFoundError``), as for any
missing module: libraries guard such imports.

Also here: W&B's ``Settings`` object and how ``init`` maps its fields, ``util.generate_id``, ``login``.
"""
from __future__ import annotations

import importlib.machinery
import sys
import types
from typing import Any, Dict, Optional, Tuple, cast

from ._names import random_id
from .errors import HpcError, UsageError

__all__ = ["as_wandb", "WandbSettings", "ConfigError", "CommError", "generate_id", "login", "util",
           "WANDB_API_VERSION", "wandb_settings"]

#: The W&B release whose API the stand-in follows (``wandb.__version__`` under ``as_wandb()``).
WANDB_API_VERSION = "0.31.0"


class ConfigError(HpcError):
    """``wandb.sdk.lib.config_util.ConfigError`` (transformers imports it; hpc never raises it)."""


class CommError(HpcError):
    """``wandb.errors.CommError``: hpc never talks to a server, so it is never raised."""


def generate_id(length: int = 8) -> str:
    """A random run id of ``length`` characters from ``[a-z0-9]`` (``wandb.util.generate_id``)."""
    return "".join(random_id() for _ in range(length // 8 + 1))[:length]


def login(*args: Any, **kwargs: Any) -> bool:
    """``wandb.login``: nothing to log in to on a compute node; the gateway holds the server's credentials."""
    return True


# W&B Settings field -> hpc setting. Anything else is accepted, recorded in run.json and ignored.
_SETTING_NAMES = {"mode": "mode", "project": "project", "run_id": "run_id", "run_group": "group",
                  "run_job_type": "job_type", "run_tags": "tags", "resume": "resume", "silent": "silent",
                  "quiet": "silent", "disable_code": "disable_code", "x_disable_stats": "stats",
                  "_disable_stats": "stats", "console": "console"}


class WandbSettings:
    """``wandb.Settings(**fields)``: every field is accepted. The few that mean something to hpc are used
    (mode, project, run_id, run_name, run_group, run_job_type, run_tags, run_notes, resume, root_dir,
    silent/quiet, console, disable_code, x_disable_stats); the rest are recorded in run.json and ignored."""

    def __init__(self, **fields: Any):
        object.__setattr__(self, "_fields", dict(fields))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self._fields.get(name)

    def __setattr__(self, name: str, value: Any) -> None:
        self._fields[name] = value

    def update(self, settings: Any = None, **fields: Any) -> None:
        if isinstance(settings, WandbSettings):
            self._fields.update(settings._fields)
        elif settings:
            self._fields.update(dict(settings))
        self._fields.update(fields)

    def to_dict(self) -> Dict[str, Any]:
        return dict(self._fields)

    def __repr__(self) -> str:
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in self._fields.items())})"


def wandb_settings(settings: WandbSettings) -> Tuple[Dict[str, Any], Dict[str, Any], Dict[str, Any]]:
    """(hpc settings, init arguments it implies: name/notes/dir, fields recorded and ignored)."""
    explicit: Dict[str, Any] = {}
    implied: Dict[str, Any] = {}
    ignored: Dict[str, Any] = {}
    for key, value in settings.to_dict().items():
        if value is None:
            continue
        target = _SETTING_NAMES.get(key)
        if target == "stats":
            explicit["stats"] = not value
        elif target == "console":
            explicit["console"] = str(value).lower() not in ("off", "false", "0")
        elif target is not None:
            explicit[target] = value
        elif key in ("run_name", "run_notes", "root_dir"):
            implied[{"run_name": "name", "run_notes": "notes", "root_dir": "dir"}[key]] = value
        else:
            ignored[key] = value
    return explicit, implied, ignored


util = types.ModuleType("wandb.util", "W&B's util helpers that hpc provides: generate_id.")
util.generate_id = generate_id  # type: ignore[attr-defined]


# ---- the wandb stand-in --------------------------------------------------------------------------------
def _module(name: str, doc: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name, doc)
    module.__path__ = []  # a package: its submodules come from our finder only
    module.__dict__.update(attrs)
    return module


def _build() -> Dict[str, types.ModuleType]:
    hpc = sys.modules["hpc"]
    from ._run import DisabledRun, Run

    root = _module("wandb", "hpc standing in for wandb (hpc.as_wandb()); see docs/coming-from-wandb.md.")
    for name in hpc.__all__:
        if name not in ("run", "config", "summary", "Settings", "errors", "as_wandb"):
            setattr(root, name, getattr(hpc, name))
    errors = _module("wandb.errors", "W&B's error classes, as hpc's.", Error=HpcError, UsageError=UsageError,
                     CommError=CommError, AuthenticationError=CommError)
    config_util = _module("wandb.sdk.lib.config_util", "", ConfigError=ConfigError)
    disabled = _module("wandb.sdk.lib.disabled", "", RunDisabled=DisabledRun)
    lib = _module("wandb.sdk.lib", "", RunDisabled=DisabledRun, config_util=config_util, disabled=disabled)
    wandb_run = _module("wandb.sdk.wandb_run", "", Run=Run)
    settings_module = _module("wandb.sdk.wandb_settings", "", Settings=WandbSettings)
    data_types = _module("wandb.sdk.data_types", "", Image=hpc.Image, Table=hpc.Table, Histogram=hpc.Histogram)
    artifacts = _module("wandb.sdk.artifacts", "", Artifact=hpc.Artifact)
    sdk = _module("wandb.sdk", "", lib=lib, wandb_run=wandb_run, wandb_settings=settings_module,
                  Settings=WandbSettings, data_types=data_types, artifacts=artifacts)
    top_data_types = _module("wandb.data_types", "", Image=hpc.Image, Table=hpc.Table, Histogram=hpc.Histogram)
    util_module = util  # the same object as hpc.util
    root.__dict__.update(
        __version__=WANDB_API_VERSION, Settings=WandbSettings, errors=errors, Error=HpcError, sdk=sdk,
        wandb_run=wandb_run, util=util_module, data_types=top_data_types, login=login, hpc=hpc,
        termlog=_term("info"), termwarn=_term("warn"), termerror=_term("warn"),
    )

    def __getattr__(name: str) -> Any:  # wandb.run, wandb.config, wandb.summary follow hpc's, live
        if name in ("run", "config", "summary"):
            return getattr(hpc, name)
        raise AttributeError(f"hpc standing in for wandb has no wandb.{name} (docs/coming-from-wandb.md "
                             "lists what is supported)")

    vars(root)["__getattr__"] = __getattr__  # module-level __getattr__ (PEP 562), set after creation
    modules = {m.__name__: m for m in (root, errors, config_util, disabled, lib, wandb_run, settings_module,
                                       data_types, artifacts, sdk, top_data_types, util_module)}
    modules["wandb.wandb_run"] = _module("wandb.wandb_run", "", Run=Run)
    return modules


def _term(kind: str) -> Any:
    def say(message: str, *args: Any, **kwargs: Any) -> None:
        from ._terminal import Terminal
        getattr(Terminal(False), kind)(str(message))
    return say


class _Finder:
    """A meta-path finder and its own loader (the protocol only; importlib.abc costs import time, so the
    type checker cannot see it is a Loader: hence the casts)."""

    def __init__(self, modules: Dict[str, types.ModuleType]):
        self.modules = modules
        for name, module in modules.items():  # importlib.util.find_spec("wandb") reads an imported one's spec
            module.__spec__ = importlib.machinery.ModuleSpec(name, cast(Any, self), is_package=True)
            module.__loader__ = cast(Any, self)

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Optional[Any]:
        if fullname in self.modules:
            return importlib.machinery.ModuleSpec(fullname, cast(Any, self), is_package=True)
        return None

    def create_module(self, spec: Any) -> types.ModuleType:
        return self.modules[spec.name]

    def exec_module(self, module: types.ModuleType) -> None:
        return None


_finder: Optional[_Finder] = None


def as_wandb() -> types.ModuleType:
    """From now on, ``import wandb`` anywhere in this process gives hpc (even with wandb installed).
    Returns the stand-in module. Calling it again changes nothing."""
    global _finder
    if _finder is None:
        _finder = _Finder(_build())
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)
    real = [name for name in sys.modules if (name == "wandb" or name.startswith("wandb."))
            and sys.modules[name] is not _finder.modules.get(name)]
    if real:
        from ._terminal import Terminal
        Terminal(False).warn("the real wandb was imported before hpc.as_wandb(): code that already holds it "
                             "keeps it; call hpc.as_wandb() first (or run `python -m hpc.as_wandb script.py`)")
        for name in real:
            del sys.modules[name]
    for name, module in _finder.modules.items():
        sys.modules[name] = module
    return _finder.modules["wandb"]

"""hpc: record machine-learning runs offline on shared storage, W&B-style.

    import hpc
    run = hpc.init(project="resnet", config={"lr": 0.1})
    for step in range(100):
        hpc.log({"loss": 1 / (step + 1)})
    hpc.finish()

``import hpc as wandb`` keeps the common calls working; ``hpc.as_wandb()`` (or ``python -m hpc.as_wandb
script.py``) makes every ``import wandb`` in the process give hpc, for libraries that import wandb
themselves (docs/coming-from-wandb.md). The run format is docs/run-format.md.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

from . import errors
from ._artifact import Artifact
from ._config import PreInit as _PreInit
from ._init import init
from ._media import Histogram, Image, Table
from ._run import NO_CONFIG as _NO_CONFIG
from ._run import NO_SUMMARY as _NO_SUMMARY
from ._run import Config, DisabledRun, Run, Summary
from ._settings import Settings
from ._wandb import as_wandb, login, util
from .errors import HpcError, ResumeError, UsageError

__version__ = "0.1.0"

__all__ = [
    "init", "log", "finish", "define_metric", "save", "run", "config", "summary",
    "Run", "DisabledRun", "Config", "Summary", "Settings", "errors", "HpcError", "UsageError",
    "ResumeError", "__version__",
    # W&B's surface beyond the common calls (docs/coming-from-wandb.md)
    "as_wandb", "Image", "Table", "Histogram", "Artifact", "log_artifact", "log_code", "watch", "unwatch",
    "login", "util",
]

#: The active run (``None`` before ``init`` and after ``finish``), like ``wandb.run``.
run: Optional[Run] = None
#: The active run's config and summary, replaced by ``init``; without a run, every use of them raises
#: NoActiveRunError, as W&B's raise ``wandb.Error``.
config: Config | _PreInit = _NO_CONFIG
summary: Summary | dict | _PreInit = _NO_SUMMARY


def _current(what: str) -> Any:
    current = run
    if current is None:
        raise errors.NoActiveRunError(f"hpc.{what}() needs an active run: call hpc.init() first")
    return current


def log(data: Mapping[str, Any], step: Optional[int] = None, commit: Optional[bool] = None,
        sync: Any = None) -> None:
    """Log a row to the active run (see :meth:`Run.log`)."""
    _current("log").log(data, step=step, commit=commit)


def finish(exit_code: Optional[int] = 0, quiet: Optional[bool] = None) -> None:
    """Finish the active run; does nothing when there is none."""
    current = run
    if current is not None:
        current.finish(exit_code)


def define_metric(name: str, step_metric: Optional[str] = None, summary: Optional[str] = None,
                  **wandb_fields: Any) -> None:
    """See :meth:`Run.define_metric` (W&B's step_sync, hidden, goal, overwrite are accepted)."""
    _current("define_metric").define_metric(name, step_metric=step_metric, summary=summary, **wandb_fields)


def log_artifact(artifact_or_path: Any, name: Optional[str] = None, type: Optional[str] = None,
                 aliases: Any = None, tags: Any = None) -> Artifact:
    """Record an artifact's files in the active run (see :meth:`Run.log_artifact`)."""
    return _current("log_artifact").log_artifact(artifact_or_path, name=name, type=type, aliases=aliases)


def log_code(root: Optional[str] = ".", name: Optional[str] = None, include_fn: Any = None,
             exclude_fn: Any = None) -> None:
    """Copy source files into the active run's ``files/code/`` (see :meth:`Run.log_code`)."""
    _current("log_code").log_code(root, name=name, include_fn=include_fn, exclude_fn=exclude_fn)


def watch(models: Any = None, criterion: Any = None, log: Optional[str] = "gradients", log_freq: int = 1000,
          idx: Any = None, log_graph: bool = False) -> None:
    """W&B's ``watch``: accepted, records nothing, says so once (docs/coming-from-wandb.md)."""
    current = run
    if current is not None:
        current.watch(models)


def unwatch(models: Any = None) -> None:
    return None


def save(path_or_glob: str, policy: str = "now", base_path: Optional[str] = None) -> None:
    _current("save").save(path_or_glob, policy=policy, base_path=base_path)

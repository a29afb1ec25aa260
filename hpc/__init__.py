"""hpc: record machine-learning runs offline on shared storage, W&B-style.

    import hpc
    run = hpc.init(project="resnet", config={"lr": 0.1})
    for step in range(100):
        hpc.log({"loss": 1 / (step + 1)})
    hpc.finish()

``import hpc as wandb`` keeps the common calls working. The run format is docs/run-format.md.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

from . import errors
from ._init import init
from ._run import Config, DisabledRun, Run, Summary
from ._settings import Settings
from .errors import HpcError, ResumeError, UsageError

__version__ = "0.1.0"

__all__ = [
    "init", "log", "finish", "define_metric", "save", "run", "config", "summary",
    "Run", "DisabledRun", "Config", "Summary", "Settings", "errors", "HpcError", "UsageError",
    "ResumeError", "__version__",
]

#: The active run (``None`` before ``init`` and after ``finish``), like ``wandb.run``.
run: Optional[Run] = None
#: The active run's config and summary, replaced by ``init``.
config: Optional[Config] = None
summary: Optional[Summary] = None


def _current(what: str) -> Any:
    current = run
    if current is None:
        raise UsageError(f"hpc.{what}() needs an active run: call hpc.init() first")
    return current


def log(data: Mapping[str, Any], step: Optional[int] = None, commit: Optional[bool] = None) -> None:
    """Log a row to the active run (see :meth:`Run.log`)."""
    _current("log").log(data, step=step, commit=commit)


def finish(exit_code: int = 0) -> None:
    """Finish the active run; does nothing when there is none."""
    current = run
    if current is not None:
        current.finish(exit_code)


def define_metric(name: str, step_metric: Optional[str] = None, summary: Optional[str] = None) -> None:
    _current("define_metric").define_metric(name, step_metric=step_metric, summary=summary)


def save(path_or_glob: str, policy: str = "now", base_path: Optional[str] = None) -> None:
    _current("save").save(path_or_glob, policy=policy, base_path=base_path)

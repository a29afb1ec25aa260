"""The W&B ``Run`` methods that frameworks call beyond log/config/summary: ``url``, ``log_artifact``,
``log_code``, ``watch``, ``_label``, ``alert``... Mixed into :class:`hpc.Run` and :class:`hpc.DisabledRun`,
which provide what :class:`RunHost` lists.

Each either does what W&B does with the run's own files, or is accepted and does nothing, saying so once
(docs/coming-from-wandb.md lists which is which).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple

from ._artifact import Artifact, artifact_copies

__all__ = ["WandbRunMethods", "RunHost"]

_CODE_SKIP_DIRS = {".git", ".venv", "venv", "__pycache__", "node_modules", ".tox", ".mypy_cache", "wandb",
                   "hpc-runs"}
_CODE_MAX_FILES = 2000


_WATCH_NOTICE = ("watch() is accepted and does nothing: hpc records no gradient or parameter histograms by "
                 "itself; log hpc.Histogram(tensor) values where you want them")


class RunHost(Protocol):
    """What the W&B methods need of the run they are mixed into."""

    @property
    def id(self) -> str: ...

    @property
    def project(self) -> str: ...

    @property
    def dir(self) -> Optional[str]:
        """None: the run records nothing (mode="disabled")."""

    _artifact_versions: Dict[str, int]  # artifact name -> the next version number

    def _copy_into_run(self, copies: List[Tuple[Any, str]]) -> bool:
        """Queue ``(source path or bytes, path under files/)`` copies; False when the run records nothing."""

    def _warn(self, message: str, once: Optional[str] = None) -> None:
        """Tell the user (once per ``once`` key when given); a run that records nothing says nothing."""


class WandbRunMethods:
    """W&B run methods; a run that records nothing (``DisabledRun``, a forked child) accepts them all."""

    entity: Optional[str] = None
    offline = True

    @property
    def url(self) -> Optional[str]:
        """The run's page on the tracking server. The compute node is offline and the gateway does not
        write into run directories, so this is None (W&B's offline runs answer None too)."""
        return None

    def get_url(self) -> Optional[str]:
        return self.url

    def get_project_url(self) -> Optional[str]:
        return None

    def get_sweep_url(self) -> Optional[str]:
        return None

    @property
    def path(self: RunHost) -> str:
        return f"{self.project}/{self.id}"

    @property
    def disabled(self: RunHost) -> bool:
        return self.dir is None

    @property
    def sweep_id(self) -> Optional[str]:
        return None

    def project_name(self: RunHost) -> str:
        return str(self.project)

    def _label(self, *args: Any, **kwargs: Any) -> None:
        """W&B's telemetry label (transformers calls it); nothing to record."""

    def mark_preempting(self) -> None:
        """W&B's hint that the job is about to be preempted; hpc sees the scheduler's signal itself."""

    def alert(self: RunHost, title: str = "", text: str = "", level: Any = None,
              wait_duration: Any = None) -> None:
        self._warn(f"alert: {title}: {text} (W&B alerts are not sent from an offline run)")

    def watch(self: RunHost, models: Any = None, criterion: Any = None, log: Optional[str] = "gradients",
              log_freq: int = 1000, idx: Any = None, log_graph: bool = False) -> None:
        self._warn(_WATCH_NOTICE, once="watch")

    def unwatch(self, models: Any = None) -> None:
        return None

    def log_artifact(self: RunHost, artifact_or_path: Any, name: Optional[str] = None,
                     type: Optional[str] = None, aliases: Optional[Sequence[str]] = None,
                     tags: Optional[Sequence[str]] = None) -> Artifact:
        """Copy the artifact's files into the run (``files/artifacts/<name>/v<N>/``); returns the artifact."""
        artifact, copies = artifact_copies(artifact_or_path, name, type, aliases, self._artifact_versions)
        self._copy_into_run(copies)
        return artifact

    def log_model(self: RunHost, path: Any, name: Optional[str] = None,
                  aliases: Optional[Sequence[str]] = None) -> None:
        WandbRunMethods.log_artifact(self, path, name=name, type="model", aliases=aliases)

    def use_artifact(self: RunHost, artifact_or_name: Any, type: Optional[str] = None, aliases: Any = None,
                     use_as: Any = None) -> Any:
        self._warn("use_artifact() is accepted and does nothing: an offline run cannot fetch artifacts from a "
                   "server; pass local paths instead", once="use_artifact")
        return artifact_or_name if isinstance(artifact_or_name, Artifact) else None

    def log_code(self: RunHost, root: Optional[str] = ".", name: Optional[str] = None,
                 include_fn: Optional[Callable[..., bool]] = None,
                 exclude_fn: Optional[Callable[..., bool]] = None) -> Optional[Artifact]:
        """Copy the source files under ``root`` (``*.py`` unless ``include_fn`` says otherwise) into the
        run's ``files/code/``, as W&B's log_code does (skipping .git, virtual environments and the like)."""
        base = os.path.abspath(root or ".")
        copies = []
        for folder, dirs, files in os.walk(base):
            dirs[:] = sorted(d for d in dirs if d not in _CODE_SKIP_DIRS and not d.startswith("."))
            for file in sorted(files):
                full = os.path.join(folder, file)
                wanted = _call_filter(include_fn, full, base) if include_fn else file.endswith(".py")
                if not wanted or (exclude_fn is not None and _call_filter(exclude_fn, full, base)):
                    continue
                copies.append((full, "code/" + os.path.relpath(full, base).replace(os.sep, "/")))
                if len(copies) >= _CODE_MAX_FILES:
                    break
        self._copy_into_run(copies)
        return None


def _call_filter(fn: Callable[..., bool], path: str, root: str) -> bool:
    try:
        return bool(fn(path, root))
    except TypeError:  # W&B's filters take (path, root); older ones only (path)
        return bool(fn(path))

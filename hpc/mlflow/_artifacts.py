"""MLflow's artifact repository for ``hpc:`` artifact URIs: a run's ``artifacts/`` directory, byte for byte.

MLflow's own local repository does the work (its reads, listings, downloads and streaming uploads); what
changes is where it stages a file before the rename: under the run format's temporary prefix ``.tmp-``, which
every run-format reader ignores (MLflow's own prefix, ``.artifact.uploading.``, is not one), and a directory
logged with ``log_artifacts`` goes file by file through that same staging, so a reader polling the run never
copies half a file.
"""
from __future__ import annotations

import os
import tempfile
from typing import Optional, Tuple

from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

from .. import _format as fmt
from .._stream import describe
from .._terminal import Terminal
from ._layout import path_from_uri

__all__ = ["HpcArtifactRepository"]

_STAGING_PREFIX = fmt.TMP_PREFIX + "artifact-"
_terminal = Terminal(False)  # one per process: a storage failure warns once per kind, whichever repository


class HpcArtifactRepository(LocalArtifactRepository):
    def __init__(self, artifact_uri: str, tracking_uri: Optional[str] = None, registry_uri: Optional[str] = None):
        super().__init__(path_from_uri(artifact_uri), tracking_uri, registry_uri)
        self.artifact_uri = artifact_uri  # shown by mlflow.get_artifact_uri(); files live in artifact_dir

    def _create_staging_artifact(self, artifact_file_name: str,
                                 artifact_path: Optional[str] = None) -> Tuple[int, str, str]:
        artifact_dir, destination = self._get_destination_artifact_path(artifact_file_name, artifact_path)
        fd, temp_path = tempfile.mkstemp(dir=artifact_dir, prefix=_STAGING_PREFIX)
        return fd, temp_path, destination

    def log_artifact(self, local_file: str, artifact_path: Optional[str] = None) -> None:
        """MLflow's copy (staged, renamed); a storage failure (full disk, a vanished directory) warns and
        leaves the artifact out instead of ending the training, as every other write of an hpc run does."""
        try:
            super().log_artifact(local_file, artifact_path)
        except OSError as err:
            if not os.path.exists(local_file):
                raise  # the caller's file is missing: the caller's error, raised as MLflow raises it
            _terminal.warn_once(f"artifact-{err.errno}", f"cannot write the artifact {local_file} into "
                                f"{self.artifact_dir}: {describe(err)}; it is NOT recorded, training goes on "
                                "(further failures of this kind are not reported)")

    def log_artifacts(self, local_dir: str, artifact_path: Optional[str] = None) -> None:
        local_dir = os.path.abspath(local_dir)
        self._get_or_create_artifact_dir(artifact_path)
        for folder, dirs, files in os.walk(local_dir):
            dirs.sort()
            rel = os.path.relpath(folder, local_dir)
            parts = [p for p in ((artifact_path or "").split("/") + ([] if rel == "." else rel.split(os.sep))) if p]
            target = "/".join(parts) or None
            self._get_or_create_artifact_dir(target)
            for name in sorted(files):
                self.log_artifact(os.path.join(folder, name), target)

    def list_artifacts(self, path: Optional[str] = None):
        return [f for f in super().list_artifacts(path)
                if not os.path.basename(f.path).startswith(fmt.TMP_PREFIX)]

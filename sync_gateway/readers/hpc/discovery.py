"""Where the hpc run format's runs are: ``<root>/<project>/<run_id>/`` holding a ``run.json`` that is a
regular file (docs/run-format.md section 1), both names valid run names; nothing else is a run.

Built on the source's transport calls only, three calls whatever the number of runs (each one pipelined
round over SFTP): list the root, list every project, stat every ``run.json``. The run directories found
are then handed to :meth:`Source.list_ahead`, which an SFTP source uses to list them and everything below
them in a few more rounds for the ``scan`` and ``walk`` calls of the pass.
"""
from __future__ import annotations

from typing import List, Tuple

from sync_gateway.errors import SourceError
from sync_gateway.readers.base import is_run_name
from sync_gateway.records import RunRef
from sync_gateway.sources.base import Source

__all__ = ["discover_hpc"]


def discover_hpc(source: Source) -> List[RunRef]:
    """Every hpc run directory under the source's root, in listing order."""
    root = source.list_dirs([""])[""]
    if root is None:
        raise SourceError(source.display, ".", "cannot list the root: check that it exists and that this "
                                               "user may read it")
    projects = [e.name for e in root.entries if e.is_dir and is_run_name(e.name)]
    candidates: List[Tuple[str, str, str]] = []      # (project, run id, location)
    for project, listing in source.list_dirs(projects).items():
        if listing is None:
            continue   # vanished or unreadable since the root was listed: not a project we can sync
        candidates += [(project, e.name, f"{listing.location}/{e.name}") for e in listing.entries
                       if e.is_dir and is_run_name(e.name)]
    paths = [f"{project}/{run_id}/run.json" for project, run_id, _ in candidates]
    stats = source.stat_files(paths)
    refs = [RunRef(project, run_id, location) for (project, run_id, location), path in zip(candidates, paths)
            if stats.get(path) is not None]
    source.list_ahead([f"{ref.project}/{ref.run_id}" for ref in refs])
    return refs

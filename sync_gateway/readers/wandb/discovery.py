"""Where W&B's runs are: ``offline-run-<date>-<id>/`` (or ``run-...``, which online runs keep too)
directories at most ``wandb_search_depth`` levels below a root (docs/wandb.md, "Discovery"); the fragments
of one run id in one directory (a resumed run) are one run.

Built on :meth:`Source.list_dirs` only: every level is one call (one pipelined round over SFTP).
"""
from __future__ import annotations

import hashlib
import logging
import re
from typing import AbstractSet, Dict, List, Set, Tuple

from sync_gateway.readers.base import is_run_name
from sync_gateway.records import RunRef
from sync_gateway.sources.base import Source

__all__ = ["discover_wandb", "FRAGMENT", "FORMAT"]

log = logging.getLogger(__name__)

FORMAT = "wandb"   # the format named on the RunRefs (WandbReader.format)
#: ``offline-run-20261127_062601-ji1c624p`` (offline) or ``run-...`` (online runs keep a .wandb too)
FRAGMENT = re.compile(r"(?:offline-)?run-(\d{8}_\d{6})-(.+)")
#: directories never searched for W&B runs (besides hidden ones and hpc run directories)
_NO_DESCENT = frozenset({"files", "logs", "tmp", "code", "media", "artifacts", "__pycache__", "node_modules"})


def _label(rel: str) -> str:
    """A state key part for the directory holding the fragments: readable, unique, and a valid name."""
    digest = hashlib.sha1(rel.encode()).hexdigest()[:8]
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", rel.replace("/", ".")).strip("._-")[:100] or "wandb"
    return f"{readable}-{digest}" if readable[0].isalnum() else f"w{readable}-{digest}"


def discover_wandb(source: Source, max_depth: int, skip: AbstractSet[str] = frozenset()) -> List[RunRef]:
    """W&B runs below ``source``'s root, at most ``max_depth`` directories deep (``<root>/offline-run-*`` is
    depth 1, ``<root>/wandb/offline-run-*`` depth 2). ``skip``: root-relative directories not to enter
    (the hpc runs already found). Every level is listed in one call (one pipelined round over SFTP); the
    fragments of one run id in one directory become one RunRef, in start order. A fragment directory is
    taken by its name; whether it holds its ``run-<id>.wandb`` yet is the snapshot's business (a run
    without one is not ready), so discovery lists no fragment directory."""
    found: Dict[Tuple[str, str], List[str]] = {}
    locations: Dict[str, str] = {}
    level = [""]
    warned: Set[str] = set()
    for _depth in range(max_depth):
        listings = source.list_dirs(level)
        deeper: List[str] = []
        candidates: List[Tuple[str, str, str]] = []
        for rel, listing in listings.items():
            if listing is None:
                continue
            locations[rel] = listing.location
            for e in listing.entries:
                if not e.is_dir:
                    continue
                child = f"{rel}/{e.name}" if rel else e.name
                m = FRAGMENT.fullmatch(e.name)
                if m:
                    candidates.append((rel, e.name, m.group(2)))
                elif not e.name.startswith(".") and e.name not in _NO_DESCENT and child not in skip:
                    deeper.append(child)
        for rel, name, run_id in candidates:
            if not is_run_name(run_id):
                if run_id not in warned:
                    warned.add(run_id)
                    log.warning("%s: W&B run id %r is not a valid run name ([A-Za-z0-9][A-Za-z0-9._-]*): "
                                "skipped", source.display, run_id)
                continue
            found.setdefault((rel, run_id), []).append(name)
        level = deeper
        if not level:
            break
    refs = []
    for (rel, run_id), names in sorted(found.items()):
        names.sort(key=lambda n: (FRAGMENT.fullmatch(n).group(1), n))  # type: ignore[union-attr]
        refs.append(RunRef(_label(rel), run_id, locations[rel], format=FORMAT, parts=tuple(names)))
    return refs

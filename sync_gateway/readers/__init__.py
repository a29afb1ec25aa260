"""Readers: one package per run format, each bringing its reader and its discovery. Each turns a run
directory into the neutral records of :mod:`sync_gateway.records`: the hpc run format (docs/run-format.md,
``readers/hpc/``) and W&B's offline runs (docs/wandb.md, ``readers/wandb/``)."""
from __future__ import annotations

from typing import Dict, List, Type

from sync_gateway.readers.base import Reader, is_run_name
from sync_gateway.readers.hpc.discovery import discover_hpc
from sync_gateway.readers.hpc.reader import HpcReader
from sync_gateway.readers.wandb.discovery import discover_wandb
from sync_gateway.readers.wandb.reader import WandbReader
from sync_gateway.records import RunRef
from sync_gateway.sources.base import Source

__all__ = ["READERS", "reader_for", "discover_runs", "discover_hpc", "discover_wandb", "is_run_name", "Reader",
           "HpcReader", "WandbReader"]

#: format name -> reader class
READERS: Dict[str, Type[Reader]] = {HpcReader.format: HpcReader, WandbReader.format: WandbReader}


def reader_for(source: Source, ref: RunRef) -> Reader:
    """The reader of one discovered run (the format the discovery named on the RunRef)."""
    return READERS[getattr(ref, "format", HpcReader.format)](source, ref)


def discover_runs(source: Source, wandb_search_depth: int = 0) -> List[RunRef]:
    """Every run under the source's root: hpc run directories (:func:`discover_hpc`), then, unless
    ``wandb_search_depth`` is 0, W&B runs up to that depth (:func:`discover_wandb`; hpc run directories are
    not searched)."""
    refs = discover_hpc(source)
    if wandb_search_depth > 0:
        refs += discover_wandb(source, wandb_search_depth, skip={r.key for r in refs})
    return refs

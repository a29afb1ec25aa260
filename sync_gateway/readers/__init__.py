"""Readers: one per run format. Each turns a run directory into the neutral records of
:mod:`sync_gateway.readers.base`: the hpc run format (docs/run-format.md) and W&B's offline runs
(docs/wandb.md)."""
from __future__ import annotations

from typing import Dict, List, Type

from sync_gateway.readers.base import Reader
from sync_gateway.readers.hpc.reader import HpcReader
from sync_gateway.readers.wandb.reader import WandbReader, discover_wandb
from sync_gateway.records import RunRef
from sync_gateway.sources.base import Source

__all__ = ["READERS", "reader_for", "discover_runs", "Reader", "HpcReader", "WandbReader"]

#: format name -> reader class
READERS: Dict[str, Type[Reader]] = {HpcReader.format: HpcReader, WandbReader.format: WandbReader}


def reader_for(source: Source, ref: RunRef) -> Reader:
    """The reader of one discovered run (the format the discovery named on the RunRef)."""
    return READERS[getattr(ref, "format", HpcReader.format)](source, ref)


def discover_runs(source: Source, wandb_search_depth: int = 0) -> List[RunRef]:
    """Every run under the source's root: hpc run directories (``Source.list_runs``), then, unless
    ``wandb_search_depth`` is 0, W&B runs up to that depth (hpc run directories are not searched)."""
    refs = list(source.list_runs())
    if wandb_search_depth > 0:
        refs += discover_wandb(source, wandb_search_depth, skip={r.key for r in refs})
    return refs

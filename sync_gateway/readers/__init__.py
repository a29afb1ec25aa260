"""Readers: one per run format. Each turns a run directory into the neutral records of
:mod:`sync_gateway.readers.base`. Today: the hpc run format (docs/run-format.md)."""
from __future__ import annotations

from typing import Dict, Type

from ..sources.base import RunRef, Source
from .base import Reader
from .hpc import HpcReader

__all__ = ["READERS", "reader_for", "Reader", "HpcReader"]

#: format name -> reader class
READERS: Dict[str, Type[Reader]] = {HpcReader.format: HpcReader}


def reader_for(source: Source, ref: RunRef) -> Reader:
    """The reader of one discovered run (sources list hpc run directories; a second format adds its own
    discovery and names its format on the RunRef)."""
    return READERS[getattr(ref, "format", HpcReader.format)](source, ref)

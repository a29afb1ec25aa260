"""Sources of runs: :class:`LocalSource` for a directory, ``SftpSource`` for an ``ssh://`` root."""
from __future__ import annotations

from typing import TYPE_CHECKING

from sync_gateway.errors import ConfigError
from sync_gateway.records import FileStat, RunRef
from sync_gateway.sources.base import Source
from sync_gateway.sources.local import LocalSource

if TYPE_CHECKING:
    from sync_gateway.settings import Settings

__all__ = ["FileStat", "RunRef", "Source", "LocalSource", "open_source"]


def open_source(root: str, settings: Settings) -> Source:
    """The source for one configured root: ``ssh://[user@]host[:port]/path`` or a local directory."""
    if root.startswith("ssh://"):
        # Imported lazily: paramiko is only needed (extra [remote]) by those who sync over SSH.
        try:
            from sync_gateway.sources.sftp.source import SftpSource
        except ImportError as e:
            raise ConfigError(f"root {root}: ssh:// roots need the SFTP source and paramiko "
                              f"(pip install 'hpc-sync[gateway,remote]'): {e}") from e

        return SftpSource(root, settings)
    return LocalSource(root)

"""The SFTP source: ``ssh://[user@]host[:port]/path`` roots over one SSH connection per host (docs/remote.md)."""

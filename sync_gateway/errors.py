"""Every exception the gateway raises derives from :class:`GatewayError`.

Retryable failures (the network, a server that is restarting) are split from permanent ones (a run the
server rejects, a configuration error), so callers can decide without parsing messages.
"""
from __future__ import annotations

__all__ = ["GatewayError", "RetryableError", "PermanentError", "SourceError", "ConfigError", "FormatError",
           "ServerError", "RunDeleted", "FileTooLarge", "LeaseHeld", "BundleError"]


class GatewayError(Exception):
    """Base class of every error raised by ``sync_gateway``.

    Exceptions cross process boundaries (a multiprocessing pool, a test harness); pickle's default
    rebuilds one by calling its constructor with ``args``, which fails for a subclass whose constructor
    takes fields (``SourceError(root, path, message)``). ``__reduce__`` rebuilds from the message and the
    fields instead, for every subclass.
    """

    def __reduce__(self) -> tuple:
        return (_restore, (type(self), self.args), dict(self.__dict__))


def _restore(cls: type, args: tuple) -> GatewayError:
    error = cls.__new__(cls, *args)
    error.args = args
    return error


class RetryableError(GatewayError):
    """A failure that may go away by itself: try again on the next pass."""


class PermanentError(GatewayError):
    """A failure that will not go away without a change of configuration or data."""


class SourceError(RetryableError):
    """Reading a root failed (a file system or SSH error); the pass skips what it could not read."""

    def __init__(self, root: str, path: str, message: str):
        super().__init__(f"{root}: {path}: {message}")
        self.root = root
        self.path = path


class ConfigError(PermanentError):
    """The configuration is invalid; the message names the setting to fix."""


class FormatError(PermanentError):
    """A run does not follow docs/run-format.md (e.g. an unknown major version); that run is skipped."""


class ServerError(GatewayError):
    """The tracking server refused a request; ``retryable`` says whether a later pass may succeed."""

    def __init__(self, message: str, status: int = 0, retryable: bool = False, unreachable: bool = False):
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.unreachable = unreachable   # the server itself cannot be reached: not this run's fault


class RunDeleted(ServerError):
    """A user deleted the server-side run (MLflow: moved it to the trash). The gateway respects that: the
    run is not synced (and never re-created) until it is restored on the server."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message, status, retryable=False)


class FileTooLarge(ServerError):
    """The server (or a proxy before it) refused a file upload as too large (HTTP 413). The run's other
    data goes on; the file is noted on the run and tried again when it changes."""

    def __init__(self, message: str, status: int = 413):
        super().__init__(message, status, retryable=False)


class LeaseHeld(RetryableError):
    """Another gateway holds the lease on a root; this one skips that root until the lease expires."""


class BundleError(PermanentError):
    """An air-gap bundle (docs/airgap.md) is corrupt, truncated, out of order or of an unknown format: it is
    refused whole and nothing of it is applied; the message names the bundle and what to do."""

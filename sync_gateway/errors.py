"""Every exception the gateway raises derives from :class:`GatewayError`.

Retry safety is in the classes, not in flags (requests' ``ConnectTimeout`` "is safe to retry"): every error
is either a :class:`RetryableError` (the network, a server that is restarting, a lease another gateway
holds: try again on a later pass) or a :class:`PermanentError` (a run the server refuses, a configuration or
format error: nothing changes until a person or the data does). A server's answer is a
:class:`ServerError` and one of the two at once, e.g. :class:`ServerUnavailable` is both a ``ServerError``
and a ``RetryableError``. The engine decides by these classes only: it quarantines a
:class:`BatchRefused`, backs off on a ``RetryableError``, ends the pass on :class:`ServerUnreachable`.

Tree::

    GatewayError
    ├── RetryableError
    │   ├── SourceError ── SshUnreachableError
    │   ├── LeaseHeld
    │   └── ServerUnavailable (+ ServerError) ── ServerUnreachable
    └── PermanentError
        ├── ConfigError
        ├── FormatError
        ├── BundleError
        ├── SshConfigError, SshHostKeyError, SshAuthError
        └── ServerRefused (+ ServerError) ── RunDeleted, FileTooLarge, BatchRefused
"""
from __future__ import annotations

__all__ = ["GatewayError", "RetryableError", "PermanentError", "SourceError", "ConfigError", "FormatError",
           "ServerError", "ServerUnavailable", "ServerUnreachable", "ServerRefused", "RunDeleted",
           "FileTooLarge", "BatchRefused", "LeaseHeld", "BundleError", "SshConfigError", "SshUnreachableError",
           "SshHostKeyError", "SshAuthError"]


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
    """A failure that may go away by itself: safe to try again on a later pass."""


class PermanentError(GatewayError):
    """A failure that will not go away without a change of configuration or data."""


# -- sources and configuration ------------------------------------------------------------------------
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


class LeaseHeld(RetryableError):
    """Another gateway holds the lease on a root; this one skips that root until the lease expires."""

    def __init__(self, message: str, holder: str = ""):
        super().__init__(message)
        self.holder = holder


class BundleError(PermanentError):
    """An air-gap bundle (docs/airgap.md) is corrupt, truncated, out of order or of an unknown format: it is
    refused whole and nothing of it is applied; the message names the bundle and what to do."""


class SshConfigError(PermanentError):
    """The root URL, the ssh_config or a named key file is unusable: fix the configuration."""


class SshUnreachableError(SourceError):
    """The host did not answer or the connection dropped: retryable, the next call reconnects."""

    def __init__(self, display: str, message: str, path: str = ""):
        super().__init__(display, path, message)
        if not path:  # about the whole connection, not one file
            self.args = (f"{display}: {message}",)


class SshHostKeyError(PermanentError):
    """The server's host key is unknown or changed: refused until a person checks and adds it."""

    def __init__(self, message: str, host: str, port: int, fingerprint: str):
        super().__init__(message)
        self.host = host
        self.port = port
        self.fingerprint = fingerprint


class SshAuthError(PermanentError):
    """No key was usable or the server refused every key offered."""


# -- the server ---------------------------------------------------------------------------------------
class ServerError(GatewayError):
    """The tracking server failed or refused a request (``status``: its HTTP status, 0 without an answer).

    Never raised as such: every instance is also a :class:`RetryableError` (:class:`ServerUnavailable`) or a
    :class:`PermanentError` (:class:`ServerRefused`). ``retryable`` and ``unreachable`` read the class."""

    def __init__(self, message: str, status: int = 0, error_code: str = ""):
        super().__init__(message)
        self.status = status
        self.error_code = error_code   # the server's own code (MLflow: RESOURCE_DOES_NOT_EXIST, ...)

    @property
    def retryable(self) -> bool:
        return isinstance(self, RetryableError)

    @property
    def unreachable(self) -> bool:
        """The server itself cannot be reached (not this run's fault): the pass ends, no backoff."""
        return isinstance(self, ServerUnreachable)


class ServerUnavailable(ServerError, RetryableError):
    """A transient server fault: 5xx, 429, a connection reset or read timeout mid-request, an answer cut off
    or unparsable, a request past its deadline. Safe to send again (the sink's requests are idempotent)."""


class ServerUnreachable(ServerUnavailable):
    """No connection could be opened at all (refused, DNS, connect timeout): the server is down."""


class ServerRefused(ServerError, PermanentError):
    """The server refused the request for good (a 4xx other than 429, a TLS certificate it cannot prove)."""


class RunDeleted(ServerRefused):
    """A user deleted the server-side run (MLflow: moved it to the trash). The gateway respects that: the
    run is not synced (and never re-created) until it is restored on the server."""

    def __init__(self, message: str, status: int = 400, error_code: str = ""):
        super().__init__(message, status, error_code)


class FileTooLarge(ServerRefused):
    """The server (or a proxy before it) refused a file upload as too large (HTTP 413). The run's other
    data goes on; the file is noted on the run and tried again when it changes."""

    def __init__(self, message: str, status: int = 413, error_code: str = ""):
        super().__init__(message, status, error_code)


class BatchRefused(ServerRefused):
    """The server refused ``points`` points of a batch for good (the sink stored the others). The engine
    quarantines them: the cursor moves past the batch, the run records how many were lost and why."""

    def __init__(self, message: str, points: int, status: int = 0, error_code: str = ""):
        super().__init__(message, status, error_code)
        self.points = points

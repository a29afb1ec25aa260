"""HTTP for the sinks: one ``requests.Session`` with retries, TLS trust and auth resolved in one place.

Generic: it names no server's variables (a sink maps its own onto the settings, e.g. MLflow's
``MLFLOW_TRACKING_SERVER_CERT_PATH`` onto ``tls.ca_bundle``; messages name the place a value came from,
``Settings.origin``).

TLS trust, first match wins (``resolve_tls``):
  1. ``tls.insecure: true``  -> no verification (a loud warning on every pass);
  2. ``tls.ca_bundle``       -> that PEM file or hashed directory;
  3. ``tls.truststore: true`` -> the operating system's trust store (corporate CAs);
  4. ``REQUESTS_CA_BUNDLE``, then ``SSL_CERT_FILE``, then ``CURL_CA_BUNDLE`` from the environment;
  5. requests' default store (certifi).
(1-3 come from the config file, or else from a sink's variables, e.g. MLflow's.)
requests lets ``REQUESTS_CA_BUNDLE`` silently override ``Session.verify`` (docs/facts.md), so the session has
``trust_env = False``, proxies are resolved here from ``HTTPS_PROXY``/``NO_PROXY``, and ``verify`` is passed
on every request.

Every request has a total deadline (``request_deadline_s``, plus a second per MB of an upload): urllib3's
timeouts bound each socket read only, so a server trickling a byte a second would hold a pass forever. A
watchdog shuts the request's socket down when the deadline passes, and no retry starts after it.

Calls that are not idempotent (MLflow ``runs/create``) go through ``request(..., idempotent=False)``: retried
only when the connection could not be opened (nothing reached the server), never after a lost answer.

An answer whose end cannot be told from a cut is not an answer: an HTTP/1.1 response with a body but neither
``Content-Length`` nor chunked framing (the connection closed after the status line, or the deadline shut
the socket mid-headers: http.client then returns "200" with no headers and an empty body) raises
:class:`IncompleteAnswer` inside urllib3, which retries it like a lost answer (idempotent calls) or gives up.
urllib3 itself refuses a body shorter than its ``Content-Length``.
"""
from __future__ import annotations

import http.client
import logging
import os
import socket
import stat
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util.retry import Retry

from sync_gateway._redact import register_secret, split_url_credentials
from sync_gateway.errors import ConfigError
from sync_gateway.settings import AuthSettings, Settings, TlsSettings

__all__ = ["secret_file", "TlsChoice", "resolve_tls", "resolve_auth", "describe_auth", "build_session", "HttpClient",
           "DeadlineExceeded", "IncompleteAnswer"]

log = logging.getLogger(__name__)

RETRY_STATUSES = (429, 500, 502, 503, 504)


@dataclass(frozen=True)
class TlsChoice:
    verify: Union[bool, str]       # what requests gets as verify=
    source: str                    # the setting that decided it, for messages and `doctor`
    truststore: bool = False
    cert: Union[None, str, Tuple[str, str]] = None


def resolve_tls(tls: TlsSettings, environ: Mapping[str, str],
                origin: Callable[[str], str] = lambda key: key) -> TlsChoice:
    """``origin`` names where a ``tls.*`` value came from (``Settings.origin``: the config key or a variable)."""
    cert: Union[None, str, Tuple[str, str]] = None
    if tls.client_cert:
        cert = (os.path.expanduser(tls.client_cert), os.path.expanduser(tls.client_key)) \
            if tls.client_key else os.path.expanduser(tls.client_cert)
        for key, path in (("tls.client_cert", tls.client_cert), ("tls.client_key", tls.client_key)):
            if path and not os.path.exists(os.path.expanduser(path)):
                where = f"{origin(key)} {os.path.expanduser(path)}"
                raise ConfigError(f"{where} does not exist; point it at the client's PEM file")
    if tls.insecure:
        return TlsChoice(False, origin("tls.insecure"), cert=cert)
    if tls.ca_bundle:
        path = os.path.expanduser(tls.ca_bundle)
        if not os.path.exists(path):
            raise ConfigError(f"{origin('tls.ca_bundle')} {path} does not exist; point it at the CA's PEM file")
        return TlsChoice(path, origin("tls.ca_bundle"), cert=cert)
    if tls.truststore:
        return TlsChoice(True, origin("tls.truststore"), truststore=True, cert=cert)
    for var in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE"):
        if environ.get(var):
            return TlsChoice(environ[var], var, cert=cert)
    return TlsChoice(True, "the default CA store (certifi)", cert=cert)


class _BearerAuth(requests.auth.AuthBase):
    def __init__(self, token: str):
        self._token = token
        register_secret(token)

    def __call__(self, r):
        r.headers["Authorization"] = f"Bearer {self._token}"
        return r

    def __repr__(self) -> str:  # never show the token
        return "BearerAuth(***)"


def secret_file(path: str, setting: str) -> str:
    """The secret in the file ``path`` that the config key ``setting`` names, refused unless only its owner
    can read it."""
    path = os.path.expanduser(path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise ConfigError(f"{setting} {path}: {e.strerror}") from e
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{setting} {path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}); "
                          f"run: chmod 600 {path}")
    with open(path) as f:
        return f.read().strip()


def resolve_auth(auth: AuthSettings, environ: Mapping[str, str]) -> Optional[requests.auth.AuthBase]:
    token = None
    if auth.token_file:
        token = secret_file(auth.token_file, "auth.token_file")
    elif auth.token_env:
        token = environ.get(auth.token_env)
        if not token:
            raise ConfigError(f"auth.token_env names {auth.token_env}, which is not set")
    if token:
        return _BearerAuth(token)
    if auth.username:
        if auth.password_file:
            password = secret_file(auth.password_file, "auth.password_file")
        elif auth.password_env and environ.get(auth.password_env):
            password = environ[auth.password_env]
        else:
            raise ConfigError("auth.username is set without a password: set auth.password_file (mode 0600) "
                              "or auth.password_env")
        register_secret(password)
        return requests.auth.HTTPBasicAuth(auth.username, password)
    return None


def describe_auth(auth: AuthSettings) -> str:
    """Where the credentials come from, in words (``doctor``, messages); never a secret."""
    if auth.token_file:
        return f"the bearer token in {auth.token_file}"
    if auth.token_env:
        return f"the bearer token in ${auth.token_env}"
    if auth.username:
        where = auth.password_file or (f"${auth.password_env}" if auth.password_env else "nowhere")
        return f"basic auth as {auth.username!r} (password from {where})"
    return "no credentials (anonymous)"


# -- the total deadline of one request --------------------------------------------------------------
_current = threading.local()


class DeadlineExceeded(requests.exceptions.Timeout):
    """No complete answer within the request's total deadline (the socket was shut down)."""


class IncompleteAnswer(http.client.HTTPException):
    """An answer whose end cannot be told from a cut (see the module docstring); urllib3 counts it as a
    failed read: retried where the request is idempotent."""


def _unframed(response: Any, method: str) -> bool:
    """An HTTP/1.1 answer that has a body (not 1xx, 204, 304, nor to HEAD) but neither a Content-Length nor
    chunked framing. Legal in HTTP/1.1 (the body ends when the connection closes), but no server or proxy a
    gateway talks to sends one; a connection cut after the status line looks exactly like it."""
    if getattr(response, "version", 11) < 11 or method == "HEAD" or response.status < 200 \
            or response.status in (204, 304):
        return False
    headers = response.headers
    return "content-length" not in headers and "chunked" not in headers.get("transfer-encoding", "").lower()


class _Deadline:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self.expired = False
        self._conns: List[Any] = []
        self._lock = threading.Lock()

    def watch(self, conn: Any) -> None:
        with self._lock:
            self._conns.append(conn)
            expired = self.expired
        if expired:
            self._kill(conn)

    def fire(self) -> None:
        with self._lock:
            self.expired = True
            conns = list(self._conns)
        for c in conns:
            self._kill(c)

    @staticmethod
    def _kill(conn: Any) -> None:
        sock = getattr(conn, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # a blocked recv/send returns at once
            except OSError:
                pass


class _Watched:
    """Mixed into urllib3's connections: the request's deadline watches the connection it goes out on."""

    def request(self, method: str, *args: Any, **kwargs: Any) -> None:
        d = getattr(_current, "deadline", None)
        if d is not None:
            d.watch(self)
        self._hpc_method = method
        return super().request(method, *args, **kwargs)  # type: ignore[misc]

    def getresponse(self) -> Any:
        r = super().getresponse()  # type: ignore[misc]
        if _unframed(r, getattr(self, "_hpc_method", "")):
            self.close()  # type: ignore[attr-defined]
            raise IncompleteAnswer(f"HTTP {r.status} answer cut off (neither Content-Length nor chunked framing: "
                                   f"the connection closed after the status line or inside the headers)")
        return r


class _WatchedHTTPConnection(_Watched, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, HTTPSConnection):
    pass


class _Pool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _SPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _DeadlineRetry(Retry):
    """urllib3's Retry that starts no retry after the request's deadline, nor sleeps past it."""

    def increment(self, *args: Any, **kwargs: Any) -> Retry:  # type: ignore[override]
        d = getattr(_current, "deadline", None)
        if d is not None and (d.expired or time.monotonic() >= d.at):
            return Retry.increment(self.new(total=0), *args, **kwargs)  # exhausted: raises or returns
        return super().increment(*args, **kwargs)

    def get_backoff_time(self) -> float:
        return self._within(super().get_backoff_time())

    def get_retry_after(self, response: Any) -> Optional[float]:
        t = super().get_retry_after(response)
        return None if t is None else self._within(t)

    @staticmethod
    def _within(t: float) -> float:
        d = getattr(_current, "deadline", None)
        return t if d is None else max(0.0, min(t, d.at - time.monotonic()))


class _Adapter(HTTPAdapter):
    truststore = False

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        if self.truststore:
            import ssl

            import truststore  # optional: only when tls.truststore is on

            kwargs["ssl_context"] = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _Pool, "https": _SPool}

    def proxy_manager_for(self, *args: Any, **kwargs: Any) -> Any:
        pm = super().proxy_manager_for(*args, **kwargs)
        pm.pool_classes_by_scheme = {"http": _Pool, "https": _SPool}
        return pm


class _TruststoreAdapter(_Adapter):
    truststore = True


def build_session(settings: Settings, backoff_factor: float = 0.5, idempotent: bool = True) -> requests.Session:
    # idempotent: log-batch stores an identical point once, an identical param again is accepted, a tag
    # or an artifact PUT replaces its value: a retry after a lost answer cannot duplicate anything.
    # Otherwise (runs/create): only a connection that could not be opened is retried (nothing was sent);
    # after a lost answer the sink searches by its tag before it creates again.
    n = settings.retries
    retry = _DeadlineRetry(total=n, connect=n, read=n if idempotent else 0, status=n if idempotent else 0,
                           other=0, allowed_methods=None, status_forcelist=RETRY_STATUSES,
                           backoff_factor=backoff_factor, backoff_max=30.0, backoff_jitter=backoff_factor,
                           respect_retry_after_header=True, raise_on_status=False)
    s = requests.Session()
    s.trust_env = False  # see the module docstring: we resolve CA bundles and proxies ourselves
    # Each run worker has up to two requests open (its batch in flight, and the next run's or a
    # document's): a smaller pool would close and reopen connections (TLS handshakes) all the time.
    pool = max(10, 2 * settings.workers)
    adapter = _TruststoreAdapter(max_retries=retry, pool_maxsize=pool) if settings.tls.truststore \
        and not settings.tls.ca_bundle and not settings.tls.insecure else _Adapter(max_retries=retry, pool_maxsize=pool)
    s.mount("https://", adapter)
    s.mount("http://", _Adapter(max_retries=retry, pool_maxsize=pool))
    return s


class HttpClient:
    """What a sink needs: ``request()`` with this gateway's TLS, auth, proxies and timeout on each call."""

    def __init__(self, settings: Settings, environ: Optional[Mapping[str, str]] = None,
                 session: Optional[requests.Session] = None, backoff_factor: float = 0.5):
        environ = os.environ if environ is None else environ
        if not settings.server_url:
            raise ConfigError("no server URL: set server.url in the config or HPCSYNC_SERVER_URL")
        # Credentials in the URL (https://user:pass@host) become basic auth; the URL kept, logged and
        # shown never holds them.
        url, user, password = split_url_credentials(settings.server_url)
        self.base_url = url.rstrip("/")
        self.tls = resolve_tls(settings.tls, environ, settings.origin)
        self.auth = resolve_auth(settings.auth, environ)
        self.auth_desc = describe_auth(settings.auth)  # names where credentials come from, never a secret
        if self.auth is None and user is not None:
            self.auth = requests.auth.HTTPBasicAuth(user, password or "")
            self.auth_desc = "credentials in server.url"
        self.timeout_s = settings.timeout_s
        self.deadline_s = settings.request_deadline_s
        self.retries = settings.retries
        self.backoff_factor = backoff_factor   # the base of exponential backoff (s), also for callers' own retries
        self.session = session or build_session(settings, backoff_factor)
        self.session_once = build_session(settings, backoff_factor, idempotent=False)
        self.proxies: Dict[str, str] = _proxies(self.base_url, environ)

    def warn_if_insecure(self) -> None:
        if self.tls.verify is False:
            log.warning("TLS VERIFICATION IS OFF (%s): anyone on the network path can read and alter what this "
                        "gateway sends to %s. Set tls.ca_bundle instead.", self.tls.source, self.base_url)

    def request(self, method: str, path: str, idempotent: bool = True, deadline_s: Optional[float] = None,
                **kw: Any) -> requests.Response:
        """One request with retries, within a total deadline (``request_deadline_s`` unless given);
        raises :class:`DeadlineExceeded` when the deadline cut it short."""
        url = path if path.startswith("http") else self.base_url + path
        session = self.session if idempotent else self.session_once
        d = _Deadline(self.deadline_s if deadline_s is None else deadline_s)
        timer = threading.Timer(d.seconds, d.fire)
        timer.daemon = True
        _current.deadline = d
        timer.start()
        try:
            r = session.request(method, url, verify=self.tls.verify, cert=self.tls.cert, auth=self.auth,
                                proxies=self.proxies, timeout=self.timeout_s, **kw)
        except requests.exceptions.RequestException as e:
            if d.expired:
                raise DeadlineExceeded(f"no complete answer within the deadline of {d.seconds:.0f} s "
                                       f"(request_deadline_s)") from e
            raise
        finally:
            timer.cancel()
            _current.deadline = None
        return r


def _proxies(url: str, environ: Mapping[str, str]) -> Dict[str, str]:
    # requests' own helper honours NO_PROXY; it reads os.environ, so only use it when environ is os.environ.
    if environ is os.environ:
        return requests.utils.get_environ_proxies(url, no_proxy=None)
    return {}

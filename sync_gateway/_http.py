"""HTTP for the sinks: one ``requests.Session`` with retries, TLS trust and auth resolved in one place.

TLS trust, first match wins (``resolve_tls``):
  1. ``tls.insecure: true``  -> no verification (a loud warning on every pass);
  2. ``tls.ca_bundle``       -> that PEM file or hashed directory;
  3. ``tls.truststore: true`` -> the operating system's trust store (corporate CAs);
  4. ``REQUESTS_CA_BUNDLE``, then ``SSL_CERT_FILE``, then ``CURL_CA_BUNDLE`` from the environment;
  5. requests' default store (certifi).
requests lets ``REQUESTS_CA_BUNDLE`` silently override ``Session.verify`` (docs/facts.md), so the session has
``trust_env = False``, proxies are resolved here from ``HTTPS_PROXY``/``NO_PROXY``, and ``verify`` is passed
on every request.
"""
from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from ._settings import AuthSettings, Settings, TlsSettings
from .errors import ConfigError

__all__ = ["TlsChoice", "resolve_tls", "resolve_auth", "build_session", "HttpClient"]

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

RETRY_STATUSES = (429, 500, 502, 503, 504)


@dataclass(frozen=True)
class TlsChoice:
    verify: Union[bool, str]       # what requests gets as verify=
    source: str                    # the setting that decided it, for messages and `doctor`
    truststore: bool = False
    cert: Union[None, str, Tuple[str, str]] = None


def resolve_tls(tls: TlsSettings, environ: Mapping[str, str]) -> TlsChoice:
    cert: Union[None, str, Tuple[str, str]] = None
    if tls.client_cert:
        cert = (os.path.expanduser(tls.client_cert), os.path.expanduser(tls.client_key)) \
            if tls.client_key else os.path.expanduser(tls.client_cert)
    if tls.insecure:
        return TlsChoice(False, "tls.insecure", cert=cert)
    if tls.ca_bundle:
        path = os.path.expanduser(tls.ca_bundle)
        if not os.path.exists(path):
            raise ConfigError(f"tls.ca_bundle {path} does not exist; point it at the CA's PEM file")
        return TlsChoice(path, "tls.ca_bundle", cert=cert)
    if tls.truststore:
        return TlsChoice(True, "tls.truststore", truststore=True, cert=cert)
    for var in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE"):
        if environ.get(var):
            return TlsChoice(environ[var], var, cert=cert)
    return TlsChoice(True, "the default CA store (certifi)", cert=cert)


class _BearerAuth(requests.auth.AuthBase):
    def __init__(self, token: str):
        self._token = token

    def __call__(self, r):
        r.headers["Authorization"] = f"Bearer {self._token}"
        return r

    def __repr__(self) -> str:  # never show the token
        return "BearerAuth(***)"


def _secret_file(path: str, what: str) -> str:
    path = os.path.expanduser(path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise ConfigError(f"auth.{what} {path}: {e.strerror}") from e
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"auth.{what} {path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}); "
                          f"run: chmod 600 {path}")
    with open(path) as f:
        return f.read().strip()


def resolve_auth(auth: AuthSettings, environ: Mapping[str, str]) -> Optional[requests.auth.AuthBase]:
    token = None
    if auth.token_file:
        token = _secret_file(auth.token_file, "token_file")
    elif auth.token_env:
        token = environ.get(auth.token_env)
        if not token:
            raise ConfigError(f"auth.token_env names {auth.token_env}, which is not set")
    if token:
        return _BearerAuth(token)
    if auth.username:
        if auth.password_file:
            password = _secret_file(auth.password_file, "password_file")
        elif auth.password_env and environ.get(auth.password_env):
            password = environ[auth.password_env]
        else:
            raise ConfigError("auth.username is set without a password: set auth.password_file (mode 0600) "
                              "or auth.password_env")
        return requests.auth.HTTPBasicAuth(auth.username, password)
    return None


class _TruststoreAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        import ssl

        import truststore  # optional: only when tls.truststore is on

        kwargs["ssl_context"] = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        super().init_poolmanager(*args, **kwargs)


def build_session(settings: Settings, backoff_factor: float = 0.5) -> requests.Session:
    # POST is retried too: every call the sinks make is idempotent (log-batch stores an identical point
    # once and an identical param again is accepted; runs/create is preceded by a search by tag, and
    # artifact PUTs replace the object), so a retry after a lost answer cannot duplicate anything.
    retry = Retry(total=settings.retries, connect=settings.retries, read=settings.retries,
                  status=settings.retries, other=0, allowed_methods=None, status_forcelist=RETRY_STATUSES,
                  backoff_factor=backoff_factor, backoff_max=30.0, backoff_jitter=backoff_factor,
                  respect_retry_after_header=True, raise_on_status=False)
    s = requests.Session()
    s.trust_env = False  # see the module docstring: we resolve CA bundles and proxies ourselves
    adapter = _TruststoreAdapter(max_retries=retry) if settings.tls.truststore and not settings.tls.ca_bundle \
        and not settings.tls.insecure else HTTPAdapter(max_retries=retry)
    s.mount("https://", adapter)
    s.mount("http://", HTTPAdapter(max_retries=retry))
    return s


class HttpClient:
    """What a sink needs: ``request()`` with this gateway's TLS, auth, proxies and timeout on each call."""

    def __init__(self, settings: Settings, environ: Optional[Mapping[str, str]] = None,
                 session: Optional[requests.Session] = None, backoff_factor: float = 0.5):
        environ = os.environ if environ is None else environ
        if not settings.server_url:
            raise ConfigError("no server URL: set server.url in the config or MLFLOW_TRACKING_URI")
        self.base_url = settings.server_url.rstrip("/")
        self.tls = resolve_tls(settings.tls, environ)
        self.auth = resolve_auth(settings.auth, environ)
        self.auth_desc = repr(settings.auth)  # names the places credentials come from, never a secret
        self.timeout_s = settings.timeout_s
        self.retries = settings.retries
        self.session = session or build_session(settings, backoff_factor)
        self.proxies: Dict[str, str] = _proxies(self.base_url, environ)

    def warn_if_insecure(self) -> None:
        if self.tls.verify is False:
            log.warning("TLS VERIFICATION IS OFF (tls.insecure: true): anyone on the network path can read "
                        "and alter what this gateway sends to %s. Set tls.ca_bundle instead.", self.base_url)

    def request(self, method: str, path: str, **kw: Any) -> requests.Response:
        url = path if path.startswith("http") else self.base_url + path
        return self.session.request(method, url, verify=self.tls.verify, cert=self.tls.cert, auth=self.auth,
                                    proxies=self.proxies, timeout=self.timeout_s, **kw)


def _proxies(url: str, environ: Mapping[str, str]) -> Dict[str, str]:
    # requests' own helper honours NO_PROXY; it reads os.environ, so only use it when environ is os.environ.
    if environ is os.environ:
        return requests.utils.get_environ_proxies(url, no_proxy=None)
    return {}

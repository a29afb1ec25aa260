"""The gateway's one Settings object, resolved in one place: explicit arguments > YAML config file >
environment > defaults.

Sink-agnostic: this module imports no sink. A sink's own environment variables (MLflow's
``MLFLOW_TRACKING_*``) and keys of the ``server:`` section are applied and checked by that sink's classmethods
(``settings_from_environ``, ``validate``, called by ``sinks.configure``) through :meth:`Settings.from_environ`,
which places them at the environment's rank: below the config file and explicit arguments, above defaults.
Each value that is not a default remembers where it came from (:meth:`Settings.origin`), so that rank holds
and messages name the place a value came from.

Example config (``~/.config/hpc-sync/gateway.yaml`` by default)::

    roots: [/scratch/alice/hpc-runs, "ssh://login1/scratch/bob/hpc-runs"]
    server: {kind: mlflow, url: "https://mlflow.lab.example"}
    tls: {ca_bundle: /etc/lab-ca.pem, client_cert: null, client_key: null, insecure: false, truststore: false}
    auth: {token_file: ~/.config/hpc-sync/token}     # or username + password_file; mode 0600 required
    state_dir: ~/.local/state/hpc-sync-gateway
    interval_s: 30
    stale_after_s: 300
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any, Dict, List, Mapping, Optional, Tuple

import yaml

from sync_gateway._redact import redact_url
from sync_gateway.errors import ConfigError
from sync_gateway.records import ROOT_ID

__all__ = ["Settings", "TlsSettings", "AuthSettings", "SshSettings", "default_config_path", "MIN_BUNDLE_BYTES"]

MIN_BUNDLE_BYTES = 64 << 10   # a bundle must hold its manifest and some data

MAX_WORKERS = 64  # runs synced at once; beyond this the server, not the gateway, is what needs scaling


@dataclass(frozen=True)
class TlsSettings:
    ca_bundle: Optional[str] = None     # a PEM file or a c_rehash'ed directory; wins over the environment
    client_cert: Optional[str] = None   # mTLS
    client_key: Optional[str] = None
    insecure: bool = False              # turns verification off; warned about on every pass
    truststore: bool = False            # use the OS trust store (corporate CAs) via the truststore package


@dataclass(frozen=True)
class AuthSettings:
    token_env: Optional[str] = None     # name of an environment variable holding a bearer token
    token_file: Optional[str] = None    # a file (mode 0600) holding a bearer token
    username: Optional[str] = None      # basic auth user; the password comes from password_env/file
    password_env: Optional[str] = None
    password_file: Optional[str] = None

    def __repr__(self) -> str:  # only names of places, never secrets, but keep it short in logs
        set_ = [f.name for f in fields(self) if getattr(self, f.name)]
        return f"AuthSettings({', '.join(set_) or 'none'})"


@dataclass(frozen=True)
class SshSettings:
    """For ``ssh://`` roots (docs/remote.md); unset fields take OpenSSH's defaults (~/.ssh/...)."""

    known_hosts: Optional[str] = None   # host keys are always verified; an unknown or changed key is refused
    config: Optional[str] = None        # an ssh_config file: Host aliases, User, Port, IdentityFile, ProxyJump
    identity_file: Optional[str] = None
    allow_agent: bool = True
    connect_timeout_s: float = 10.0
    keepalive_s: float = 30.0
    io_timeout_s: float = 60.0


@dataclass(frozen=True)
class Settings:
    roots: List[str] = field(default_factory=list)
    #: ids given to roots in the config (``roots: [{path: ..., id: ...}]``): root as configured -> id. A root
    #: without one has records.root_id(its path) (docs/gateway.md, "State directory").
    root_ids: Dict[str, str] = field(default_factory=dict)
    server_kind: str = "mlflow"
    server_url: Optional[str] = None
    server_options: Dict[str, Any] = field(default_factory=dict)  # the sink's own keys of `server:`
    tls: TlsSettings = field(default_factory=TlsSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    ssh: SshSettings = field(default_factory=SshSettings)
    state_dir: str = "~/.local/state/hpc-sync-gateway"
    lease_dir: Optional[str] = None     # default: state_dir; a shared directory when gateways run on 2 hosts
    lease_ttl_s: float = 600.0
    interval_s: float = 30.0
    stale_after_s: float = 300.0
    timeout_s: float = 30.0             # per socket read of an HTTP request
    request_deadline_s: float = 300.0   # total per HTTP request, retries included (+1 s per MB uploaded)
    retries: int = 6                    # per HTTP request, with exponential backoff and jitter
    batch_points: int = 1000            # most points per request; a sink caps it at its server's limit
    wandb_search_depth: int = 4         # how deep below a root W&B run directories are looked for; 0: not
    max_file_bytes: int = 5_000_000_000  # larger files (files/, output.log) are not uploaded (warned)
    bundle_max_bytes: int = 256 << 20   # air gap (docs/airgap.md): the most bytes one exported bundle file holds
    bundle_max_entries: int = 10_000    # air gap: the most entries (files) one bundle holds (~1 KiB memory each)
    workers: int = 4                    # runs synced at once (docs/gateway.md, "Sizing"); 1: one after another
    #: where each value that is not a default came from: a key (``server_url``, ``tls.ca_bundle``, ``auth``)
    #: -> ``config``, ``argument`` or the environment variable's name. Not part of the value (compare=False).
    origins: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def state_path(self) -> str:
        return os.path.abspath(os.path.expanduser(self.state_dir))

    @property
    def lease_path(self) -> str:
        return os.path.abspath(os.path.expanduser(self.lease_dir or self.state_dir))

    def origin(self, key: str) -> str:
        """Where the value of ``key`` (``server_url``, ``tls.ca_bundle``) came from, for messages: its config
        key (``server.url``), the environment variable, or ``argument``; the config key when nothing set it."""
        where = self.origins.get(key)
        return _CONFIG_NAME.get(key, key) if where in (None, "config") else where

    def from_environ(self, variable: str, values: Mapping[str, Any]) -> Settings:
        """Settings with ``values`` (keys as in :meth:`origin`; ``auth`` is the whole section) read from the
        environment variable ``variable``, at the environment's rank: a value applies only where no explicit
        argument, config key or earlier variable set that key or another key of the same choice (the trust
        anchors ``tls.insecure``/``ca_bundle``/``truststore``; the client certificate; the auth section),
        and where these all still hold their defaults. Sinks apply their own variables with it."""
        upd: Dict[str, Any] = {}
        tls: Dict[str, Any] = {}
        origins = dict(self.origins)
        for key, value in values.items():
            group = _CHOICE.get(key, key)
            keys = [k for k, g in _CHOICE.items() if g == group] or [key]
            if any(_CHOICE.get(k, k) == group for k in origins) or \
                    any(self._get(k) != _DEFAULTS._get(k) for k in keys):
                continue
            section, _, name = key.rpartition(".")
            (tls if section == "tls" else upd)[name] = value
            origins[key] = variable
        if tls:
            upd["tls"] = replace(self.tls, **tls)
        return replace(self, **upd, origins=origins) if upd else self

    def _get(self, key: str) -> Any:
        section, _, name = key.rpartition(".")
        return getattr(getattr(self, section) if section else self, name)

    @classmethod
    def resolve(cls, config_path: Optional[str] = None, environ: Optional[Mapping[str, str]] = None,
                overrides: Optional[Dict[str, Any]] = None) -> Settings:
        """Defaults, then the environment's generic HPCSYNC_* variables, then the YAML file, then
        ``overrides`` (CLI flags). The sink's own variables and keys are applied by ``sinks.configure``."""
        environ = os.environ if environ is None else environ
        path = config_path or environ.get("HPCSYNC_GATEWAY_CONFIG")
        explicit = path is not None
        path = path or default_config_path(environ)
        s = _from_env(cls(), environ)
        if os.path.exists(path):
            s = _from_yaml(s, path, _load_yaml(path))
        elif explicit:
            raise ConfigError(f"config file {path} does not exist; create it or drop --config")
        if overrides:
            given = {k: v for k, v in overrides.items() if v is not None}
            s = replace(s, **given, origins={**s.origins, **{k: "argument" for k in given}})
        return _validated(s)


#: keys that are one choice: a value for any of them, from a stronger place, hides the others' values from a
#: weaker place (a config ``tls.truststore: true`` beats an environment's CA bundle)
_CHOICE = {"tls.insecure": "tls.trust", "tls.ca_bundle": "tls.trust", "tls.truststore": "tls.trust",
           "tls.client_cert": "tls.client", "tls.client_key": "tls.client"}
#: how the config file spells a key, for messages
_CONFIG_NAME = {"server_url": "server.url", "server_kind": "server.kind"}
_DEFAULTS = Settings()


def _shown(url: str) -> str:
    """A URL as a message may show it: without credentials, also before a host without a scheme."""
    return re.sub(r"^[^/]*@", "***@", redact_url(url) if "://" in url else url)


def default_config_path(environ: Mapping[str, str]) -> str:
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "hpc-sync", "gateway.yaml")


def _from_env(s: Settings, env: Mapping[str, str]) -> Settings:
    upd: Dict[str, Any] = {}
    origins: Dict[str, str] = {}
    if env.get("HPCSYNC_GATEWAY_ROOTS"):
        upd["roots"] = [r for r in env["HPCSYNC_GATEWAY_ROOTS"].split(os.pathsep) if r]
        origins["roots"] = "HPCSYNC_GATEWAY_ROOTS"
    if env.get("HPCSYNC_SERVER_KIND"):
        upd["server_kind"] = env["HPCSYNC_SERVER_KIND"]
        origins["server_kind"] = "HPCSYNC_SERVER_KIND"
    url = env.get("HPCSYNC_SERVER_URL")
    if url:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"HPCSYNC_SERVER_URL={_shown(url)!r} is not an http:// or https:// URL; set it to "
                              f"the tracking server's address (e.g. https://mlflow.example:5000) or unset it")
        upd["server_url"] = url
        origins["server_url"] = "HPCSYNC_SERVER_URL"
    for name, key, conv in (("state_dir", "HPCSYNC_GATEWAY_STATE_DIR", str),
                            ("interval_s", "HPCSYNC_GATEWAY_INTERVAL_S", float),
                            ("stale_after_s", "HPCSYNC_GATEWAY_STALE_AFTER_S", float),
                            ("wandb_search_depth", "HPCSYNC_GATEWAY_WANDB_SEARCH_DEPTH", int),
                            ("workers", "HPCSYNC_GATEWAY_WORKERS", int)):
        if env.get(key):
            try:
                upd[name] = conv(env[key])
            except ValueError:
                raise ConfigError(f"{key}={env[key]!r} is not a valid {name}") from None
            origins[name] = key
    return replace(s, **upd, origins={**s.origins, **origins})


_TOP = ("roots", "server", "tls", "auth", "ssh", "state_dir", "lease_dir", "lease_ttl_s", "interval_s",
        "stale_after_s", "timeout_s", "request_deadline_s", "retries", "batch_points", "max_file_bytes",
        "wandb_search_depth", "bundle_max_bytes", "bundle_max_entries", "workers")


def _check_keys(where: str, got: Mapping[str, Any], valid, hint: Optional[str] = None) -> None:
    unknown = sorted(set(got) - set(valid))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; "
                          f"{hint or 'valid keys are: ' + ', '.join(valid)}")


def _load_yaml(path: str) -> Dict[str, Any]:
    try:
        with open(path) as f:
            doc = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from e
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: the config must be a mapping of keys to values")
    return doc


def _from_yaml(s: Settings, path: str, doc: Dict[str, Any]) -> Settings:
    _check_keys(path, doc, _TOP)
    upd: Dict[str, Any] = {}
    origins: Dict[str, str] = {}
    for k in ("state_dir", "lease_dir", "lease_ttl_s", "interval_s", "stale_after_s", "timeout_s",
              "request_deadline_s", "retries", "batch_points", "max_file_bytes", "wandb_search_depth",
              "bundle_max_bytes", "bundle_max_entries", "workers"):
        if k in doc:
            upd[k] = doc[k]
    if "roots" in doc:
        roots = doc["roots"]
        if isinstance(roots, str):
            roots = [roots]
        upd["roots"], upd["root_ids"] = _roots(path, roots)
    server = doc.get("server") or {}
    if not isinstance(server, dict):
        raise ConfigError(f"{path}: server must be a mapping (kind, url, and the sink's own keys)")
    if "kind" in server:
        upd["server_kind"] = server["kind"]
    if "url" in server:
        upd["server_url"] = server["url"]
    # The sink's own keys: checked by the sink (its validate, from sinks.configure), which knows them.
    upd["server_options"] = {k: v for k, v in server.items() if k not in ("kind", "url")}
    for name, cls_ in (("tls", TlsSettings), ("auth", AuthSettings), ("ssh", SshSettings)):
        sub = doc.get(name)
        if sub is None:
            continue
        if not isinstance(sub, dict):
            raise ConfigError(f"{path}: {name} must be a mapping")
        _check_keys(f"{path}: {name}", sub, [f.name for f in fields(cls_)])
        # A config auth section replaces the environment's as a whole: mixing the two is confusing.
        base = AuthSettings() if name == "auth" else getattr(s, name)
        upd[name] = replace(base, **sub)
        origins.update({name: "config"} if name == "auth" else {f"{name}.{k}": "config" for k in sub})
    origins.update({k: "config" for k in upd if k not in ("tls", "auth", "ssh", "server_options")})
    return replace(s, **upd, origins={**s.origins, **origins})


def _roots(path: str, roots: Any) -> Tuple[List[str], Dict[str, str]]:
    """``roots``: a list of directories, each a string or ``{path: ..., id: ...}`` (the id keeps a root's
    runs their server runs when its path changes)."""
    if not isinstance(roots, list):
        raise ConfigError(f"{path}: roots must be a list of directories")
    out: List[str] = []
    ids: Dict[str, str] = {}
    for r in roots:
        if isinstance(r, dict):
            _check_keys(f"{path}: roots", r, ("path", "id"))
            root, rid = r.get("path"), r.get("id")
            if not isinstance(root, str) or not root:
                raise ConfigError(f"{path}: roots: {r!r} has no path; write {{path: /dir, id: name}}")
            if rid is not None:
                if not isinstance(rid, str) or not ROOT_ID.match(rid):
                    raise ConfigError(f"{path}: roots: the id of {root} must be 1 to 64 letters, digits, '.', '_' "
                                      f"or '-' (starting with a letter or digit), not {rid!r}")
                ids[root] = rid
            out.append(root)
        elif isinstance(r, str):
            out.append(r)
        else:
            raise ConfigError(f"{path}: roots must be a list of directories (or {{path: ..., id: ...}}), not {r!r}")
    return out, ids


def _validated(s: Settings) -> Settings:
    if s.server_url and not s.server_url.startswith(("http://", "https://")):
        raise ConfigError(f"{s.origin('server_url')} {_shown(s.server_url)!r} must start with http:// or https://")
    for k in ("interval_s", "stale_after_s", "timeout_s", "lease_ttl_s", "request_deadline_s"):
        v = getattr(s, k)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
            raise ConfigError(f"{k} must be a positive number of seconds, not {v!r}")
    if not isinstance(s.batch_points, int) or isinstance(s.batch_points, bool) or s.batch_points < 1:
        raise ConfigError(f"batch_points must be a positive integer, not {s.batch_points!r}")
    if not isinstance(s.wandb_search_depth, int) or isinstance(s.wandb_search_depth, bool) \
            or not 0 <= s.wandb_search_depth <= 16:
        raise ConfigError(f"wandb_search_depth must be an integer from 0 (W&B runs are not looked for) to 16, "
                          f"not {s.wandb_search_depth!r}")
    if not isinstance(s.workers, int) or isinstance(s.workers, bool) or not 1 <= s.workers <= MAX_WORKERS:
        raise ConfigError(f"workers must be an integer from 1 (one run after another) to {MAX_WORKERS}, "
                          f"not {s.workers!r}")
    if not isinstance(s.max_file_bytes, int) or isinstance(s.max_file_bytes, bool) or s.max_file_bytes < 0:
        raise ConfigError(f"max_file_bytes must be a non-negative integer (0: no limit), not {s.max_file_bytes!r}")
    if not isinstance(s.bundle_max_bytes, int) or isinstance(s.bundle_max_bytes, bool) \
            or s.bundle_max_bytes < MIN_BUNDLE_BYTES:
        raise ConfigError(f"bundle_max_bytes must be an integer of at least {MIN_BUNDLE_BYTES} (64 KiB), "
                          f"not {s.bundle_max_bytes!r}")
    if not isinstance(s.bundle_max_entries, int) or isinstance(s.bundle_max_entries, bool) \
            or s.bundle_max_entries < 1:
        raise ConfigError(f"bundle_max_entries must be a positive integer, not {s.bundle_max_entries!r}")
    if bool(s.tls.client_cert) != bool(s.tls.client_key) and s.tls.client_key:
        raise ConfigError("tls.client_key is set without tls.client_cert; set both for mTLS")
    for k in ("insecure", "truststore"):
        if not isinstance(getattr(s.tls, k), bool):
            raise ConfigError(f"tls.{k} must be true or false")
    return s

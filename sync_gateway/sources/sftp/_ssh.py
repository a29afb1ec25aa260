"""SSH connections for the SFTP source: ``~/.ssh/config`` resolution, ProxyJump, host keys, key auth.

Everything here is strict on purpose, because the gateway runs unattended:
- host keys are checked against known_hosts files and an unknown or changed key is refused with a message
  that says how to add it; nothing is ever added automatically;
- authentication uses passphrase-less key files or an ssh-agent only; there is no password or
  keyboard-interactive prompt, and an encrypted key is reported, not asked for.

paramiko is imported here and in ``sftp.py`` only; no paramiko exception leaves this package's SSH modules
(they are translated into :mod:`sync_gateway.errors` types at this boundary).
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Hashable, List, Optional, Sequence, Set, Tuple
from urllib.parse import unquote, urlsplit

import paramiko

from sync_gateway.errors import SshAuthError, SshConfigError, SshHostKeyError, SshUnreachableError

__all__ = [
    "SshOptions", "SshHop", "SshConnection", "ConnectionPool", "parse_ssh_url", "resolve_hops", "open_connection",
    "SshConfigError", "SshUnreachableError", "SshHostKeyError", "SshAuthError",
]

log = logging.getLogger("sync_gateway.sources.ssh")

_MAX_JUMPS = 8  # a ProxyJump chain longer than this is a loop in the config
_DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")


@dataclass(frozen=True)
class SshOptions:
    """How to connect: the ONE record that sync and ``doctor`` both build with :meth:`from_settings`, so
    the doctor checks exactly what a pass will do. ``None`` means: what ``~/.ssh/config`` and OpenSSH's
    defaults say. The defaults are the ``ssh`` settings' defaults (docs/remote.md, "Settings")."""

    known_hosts: Optional[str] = None     # overrides UserKnownHostsFile and ~/.ssh/known_hosts
    ssh_config: Optional[str] = None      # default ~/.ssh/config when it exists
    identity_file: Optional[str] = None   # tried before the config's IdentityFile entries
    connect_timeout_s: float = 10.0
    keepalive_s: float = 30.0
    io_timeout_s: float = 60.0            # one SFTP request; a silent dead link fails after this
    allow_agent: bool = True

    @classmethod
    def from_settings(cls, settings: object = None, **overrides: Any) -> SshOptions:
        """The options of the gateway settings' ``ssh`` section (an ``SshSettings``, or a dict of the same
        keys; ``config`` is this record's ``ssh_config``), then ``overrides`` that are not None."""
        chosen: Dict[str, Any] = {}
        ssh = getattr(settings, "ssh", None) if settings is not None else None
        if ssh is not None:
            for key in _SETTINGS_KEYS:
                value = ssh.get(key) if isinstance(ssh, dict) else getattr(ssh, key, None)
                if value is not None:
                    chosen[_SETTINGS_KEYS[key]] = value
        unknown = set(overrides) - set(cls.__dataclass_fields__)
        if unknown:
            raise TypeError(f"SshOptions has no field {', '.join(sorted(unknown))}")
        chosen.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**chosen)


#: ``ssh`` settings key -> SshOptions field (docs/remote.md, "Settings")
_SETTINGS_KEYS = {"known_hosts": "known_hosts", "config": "ssh_config", "ssh_config": "ssh_config",
                  "identity_file": "identity_file", "connect_timeout_s": "connect_timeout_s",
                  "keepalive_s": "keepalive_s", "io_timeout_s": "io_timeout_s", "allow_agent": "allow_agent"}


@dataclass(frozen=True)
class SshHop:
    """One SSH server on the way to the root (jump hosts first, the target last)."""

    alias: str                 # the name as written (URL host, Host alias, or ProxyJump entry)
    hostname: str              # what is dialled (HostName)
    port: int
    user: str
    identity_files: Tuple[str, ...] = ()
    known_hosts_files: Tuple[str, ...] = ()
    host_key_alias: Optional[str] = None
    identities_only: bool = False

    @property
    def known_hosts_name(self) -> str:
        """The name OpenSSH writes in known_hosts: ``host`` on port 22, else ``[host]:port``."""
        name = self.host_key_alias or self.hostname
        return name if self.port == 22 else f"[{name}]:{self.port}"

    @property
    def label(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"

    def keyscan_hint(self, known_hosts_file: str) -> str:
        port = "" if self.port == 22 else f"-p {self.port} "
        return f"ssh-keyscan {port}{self.hostname} >> {known_hosts_file}"


def parse_ssh_url(url: str) -> Tuple[Optional[str], str, Optional[int], str]:
    """``ssh://[user@]host[:port]/path`` -> (user, host, port, path). ``/~/x`` means ``x`` in the home."""
    parts = urlsplit(url)
    if parts.scheme not in ("ssh", "sftp"):
        raise SshConfigError(f"{url}: not an SSH root; write ssh://[user@]host[:port]/absolute/path")
    if not parts.hostname:
        raise SshConfigError(f"{url}: no host; write ssh://[user@]host[:port]/absolute/path")
    try:
        port = parts.port
    except ValueError as err:
        raise SshConfigError(f"{url}: bad port ({err}); write ssh://host:2222/path") from err
    path = unquote(parts.path)
    if not path or path == "/":
        raise SshConfigError(f"{url}: no path; write ssh://host/absolute/path/to/the/root")
    if path.startswith("/~/"):
        path = path[3:]
    user = unquote(parts.username) if parts.username else None
    # urlsplit lowercases hostname; a Host alias in ssh_config is matched case-sensitively by OpenSSH, so
    # keep it as written.
    host = parts.netloc.rsplit("@", 1)[-1]
    if host.startswith("["):
        host = host[1:host.index("]")]
    elif ":" in host:
        host = host.rsplit(":", 1)[0]
    return user, host, port, path


def _load_config(path: Optional[str]) -> paramiko.SSHConfig:
    if path is None:
        default = os.path.expanduser("~/.ssh/config")
        if not os.path.isfile(default):
            return paramiko.SSHConfig()
        path = default
    try:
        return paramiko.SSHConfig.from_path(os.path.expanduser(path))
    except FileNotFoundError as err:
        raise SshConfigError(f"ssh_config {path} does not exist: fix the path or leave it unset") from err
    except (OSError, paramiko.SSHException, ValueError) as err:
        raise SshConfigError(f"ssh_config {path} cannot be read: {err}") from err


def _split_spec(spec: str) -> Tuple[Optional[str], str, Optional[int]]:
    """A ProxyJump entry: ``[user@]host[:port]`` or ``ssh://[user@]host[:port]``."""
    spec = spec.strip()
    if spec.startswith("ssh://"):
        spec = spec[len("ssh://"):].rstrip("/")
    user = None
    if "@" in spec:
        user, spec = spec.rsplit("@", 1)
    port = None
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        if rest.startswith(":"):
            port = int(rest[1:])
    elif spec.count(":") == 1:
        host, port_text = spec.split(":")
        port = int(port_text)
    else:
        host = spec
    return user, host, port


def _hop(config: paramiko.SSHConfig, alias: str, user: Optional[str], port: Optional[int],
         options: SshOptions) -> Tuple[SshHop, List[str]]:
    """Resolve one host through the config; also return its own ProxyJump entries."""
    entry = config.lookup(alias)
    try:
        port_value = port if port is not None else int(entry.get("port", 22))
    except ValueError as err:
        raise SshConfigError(f"ssh_config: Host {alias}: bad Port {entry.get('port')!r}") from err
    user_value = user or entry.get("user") or _local_user()
    files: List[str] = []
    if options.identity_file:
        files.append(os.path.expanduser(options.identity_file))
    files += [os.path.expanduser(f) for f in entry.get("identityfile", [])]
    if options.known_hosts:
        known = [os.path.expanduser(options.known_hosts)]
    elif entry.get("userknownhostsfile"):
        known = [os.path.expanduser(f) for f in entry["userknownhostsfile"].split()]
    else:
        known = [os.path.expanduser("~/.ssh/known_hosts"), os.path.expanduser("~/.ssh/known_hosts2")]
    if entry.get("stricthostkeychecking", "yes").lower() in ("no", "off", "accept-new"):
        log.warning("ssh_config: StrictHostKeyChecking %s for %s is ignored: the gateway always verifies host "
                    "keys against known_hosts and never adds one", entry["stricthostkeychecking"], alias)
    jumps = entry.get("proxyjump", "")
    jump_list = [] if not jumps or jumps.lower() == "none" else [j for j in jumps.split(",") if j.strip()]
    hop = SshHop(
        alias=alias, hostname=entry.get("hostname", alias), port=port_value, user=user_value,
        identity_files=tuple(files), known_hosts_files=tuple(known),
        host_key_alias=entry.get("hostkeyalias"),
        identities_only=entry.get("identitiesonly", "no").lower() == "yes",
    )
    return hop, jump_list


def _local_user() -> str:
    import getpass

    return getpass.getuser()


def resolve_hops(host: str, user: Optional[str], port: Optional[int], options: SshOptions) -> List[SshHop]:
    """The chain of servers to go through, as OpenSSH would: jump hosts first, the target last.

    ``ProxyJump a,b`` on the target means: reach ``a`` (with a's own config, including its ProxyJump),
    from there reach ``b``, from there the target.
    """
    config = _load_config(options.ssh_config)

    def expand(alias: str, user_: Optional[str], port_: Optional[int], depth: int,
               follow_jump: bool) -> List[SshHop]:
        if depth > _MAX_JUMPS:
            raise SshConfigError(f"ssh_config: ProxyJump chain through {alias} is longer than {_MAX_JUMPS}: a loop?")
        hop, jumps = _hop(config, alias, user_, port_, options)
        if not follow_jump or not jumps:
            return [hop]
        try:
            specs = [_split_spec(j) for j in jumps]
        except ValueError as err:
            raise SshConfigError(f"ssh_config: Host {alias}: bad ProxyJump {','.join(jumps)!r}") from err
        first_user, first_host, first_port = specs[0]
        chain = expand(first_host, first_user, first_port, depth + 1, True)
        for u, h, p in specs[1:]:
            chain += expand(h, u, p, depth + 1, False)
        return chain + [hop]

    return expand(host, user, port, 0, True)


def _read_known_hosts(files: Sequence[str]) -> paramiko.HostKeys:
    keys = paramiko.HostKeys()
    for path in list(files) + ["/etc/ssh/ssh_known_hosts"]:
        if os.path.isfile(path):
            try:
                keys.load(path)
            except (OSError, paramiko.SSHException, ValueError) as err:
                log.warning("known_hosts %s cannot be read (%s): its keys are not trusted", path, err)
    return keys


def _verify_host_key(hop: SshHop, known: paramiko.HostKeys, server_key: paramiko.PKey) -> None:
    target = hop.known_hosts_files[0] if hop.known_hosts_files else "~/.ssh/known_hosts"
    entries = known.lookup(hop.known_hosts_name)
    offered = f"{server_key.get_name()} {server_key.fingerprint}"
    if entries is None or len(entries) == 0:
        raise SshHostKeyError(
            f"host key of {hop.known_hosts_name} is not in {' or '.join(hop.known_hosts_files) or 'known_hosts'} "
            f"(server offers {offered}); it is never accepted automatically: after checking that fingerprint "
            f"with the server's administrator, add it with: {hop.keyscan_hint(target)}",
            hop.hostname, hop.port, server_key.fingerprint)
    expected = entries.get(server_key.get_name())
    if expected is None or expected != server_key:
        if expected is None:
            expected = list(entries.values())[0]
        raise SshHostKeyError(
            f"host key of {hop.known_hosts_name} CHANGED: server offers {offered}, known_hosts has "
            f"{expected.get_name()} {expected.fingerprint}; refused (possible man-in-the-middle). If the "
            f"server's key really changed, remove the old line with: ssh-keygen -R '{hop.known_hosts_name}' "
            f"-f {target}, then {hop.keyscan_hint(target)} and check the fingerprint",
            hop.hostname, hop.port, server_key.fingerprint)


def _candidate_keys(hop: SshHop, options: SshOptions
                    ) -> Tuple[List[Tuple[str, paramiko.PKey]], List[str], Optional[paramiko.Agent]]:
    """Usable keys (label, key) in the order tried, why the others were not usable, and the agent
    connection their signatures need (close it after authenticating)."""
    agent: Optional[paramiko.Agent] = None
    keys: List[Tuple[str, paramiko.PKey]] = []
    problems: List[str] = []
    files = list(hop.identity_files)
    explicit = os.path.expanduser(options.identity_file) if options.identity_file else None
    if not files:
        files = [os.path.expanduser(f"~/.ssh/{name}") for name in _DEFAULT_KEYS]
    for path in dict.fromkeys(files):
        if not os.path.exists(path):
            if path == explicit:
                raise SshConfigError(f"identity file {path} does not exist: fix identity_file in the config")
            problems.append(f"{path} does not exist")
            continue
        try:
            keys.append((path, paramiko.PKey.from_path(path)))
        except (paramiko.PasswordRequiredException, TypeError) as err:
            # paramiko 5 lets cryptography's TypeError ("Key is password-protected...") through.
            if isinstance(err, TypeError) and "password" not in str(err).lower():
                problems.append(f"{path} is not a usable private key ({err})")
                continue
            problems.append(f"{path} is encrypted (the gateway never prompts: load it with ssh-add into an "
                            f"ssh-agent, or use a passphrase-less key)")
        except (OSError, paramiko.SSHException, ValueError) as err:
            problems.append(f"{path} is not a usable private key ({err})")
    if options.allow_agent and not hop.identities_only:
        if os.environ.get("SSH_AUTH_SOCK"):
            try:
                agent = paramiko.Agent()
                agent_keys = agent.get_keys()
            except (OSError, paramiko.SSHException) as err:
                agent_keys = ()
                problems.append(f"ssh-agent at $SSH_AUTH_SOCK did not answer ({err})")
            keys += [(f"agent key {k.fingerprint}", k) for k in agent_keys]
        else:
            problems.append("no ssh-agent (SSH_AUTH_SOCK is not set)")
    return keys, problems, agent


@dataclass
class SshConnection:
    """The transports of one hop chain (jump hosts first) and the SFTP session on the last one."""

    hops: List[SshHop]
    transports: List[paramiko.Transport] = field(default_factory=list)
    sftp: Optional[paramiko.SFTPClient] = None
    #: Held around each SFTP exchange: paramiko's synchronous requests must not interleave across threads.
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def active(self) -> bool:
        return bool(self.transports) and all(t.is_active() for t in self.transports)

    @property
    def server_version(self) -> str:
        return self.transports[-1].remote_version if self.transports else ""

    def close(self) -> None:
        if self.sftp is not None:
            try:
                self.sftp.close()
            except (OSError, EOFError, paramiko.SSHException):
                pass  # the link is already gone; nothing left to release
            self.sftp = None
        for transport in reversed(self.transports):
            transport.close()
        self.transports = []


class ConnectionPool:
    """SSH connections shared by the sources of a process: several roots on one host use one connection.

    Keyed by the hop chain and the options. A connection closes when the last source using it releases
    it, or at once when one of them finds the link dead (the others reconnect on their next call)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: Dict[Hashable, Tuple[SshConnection, Set[int]]] = {}

    def acquire(self, key: Hashable, owner: int,
                connect: Callable[[], SshConnection]) -> Tuple[SshConnection, bool]:
        """The live connection for ``key`` (and whether it was opened by this call)."""
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is not None and entry[0].active:
                entry[1].add(owner)
                self._entries[key] = entry
                return entry[0], False
        if entry is not None:
            entry[0].close()
        conn = connect()   # outside the lock: connecting takes a while
        with self._lock:
            other = self._entries.get(key)
            if other is not None and other[0].active:   # another source connected meanwhile
                other[1].add(owner)
                conn.close()
                return other[0], False
            self._entries[key] = (conn, {owner})
            return conn, True

    def release(self, key: Hashable, owner: int) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or owner not in entry[1]:
                return
            entry[1].discard(owner)
            if entry[1]:
                return
            del self._entries[key]
        entry[0].close()

    def discard(self, key: Hashable, conn: SshConnection) -> None:
        """The link is dead: forget and close it."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] is conn:
                del self._entries[key]
        conn.close()


Step = Callable[[str, SshHop, str], None]  # (step name, hop, message) after each step that succeeded


def open_connection(display: str, hops: List[SshHop], options: SshOptions,
                    on_step: Optional[Step] = None) -> SshConnection:
    """Connect through every hop (direct-tcpip channels for jumps), verify each host key, authenticate with
    keys only, and open an SFTP session on the last hop. Raises the ``Ssh*Error`` types of this module."""
    conn = SshConnection(hops=hops)
    try:
        for hop in hops:
            known = _read_known_hosts(hop.known_hosts_files)
            sock = _dial(display, hop, conn.transports[-1] if conn.transports else None, options)
            transport = _handshake(display, hop, sock, known, options)
            conn.transports.append(transport)
            if on_step:
                on_step("reachable", hop, f"{hop.hostname}:{hop.port} answered {transport.remote_version}")
            _verify_host_key(hop, known, transport.get_remote_server_key())
            if on_step:
                key = transport.get_remote_server_key()
                on_step("host key", hop,
                        f"{hop.known_hosts_name} {key.get_name()} {key.fingerprint} matches known_hosts")
            used = _authenticate(display, hop, transport, options)
            if on_step:
                on_step("auth", hop, f"{hop.user} authenticated with {used}")
        try:
            conn.sftp = paramiko.SFTPClient.from_transport(conn.transports[-1])
        except (OSError, EOFError, paramiko.SSHException) as err:
            raise SshUnreachableError(display, f"{hops[-1].label}: the SFTP subsystem did not start ({err}); "
                                      f"is 'Subsystem sftp' enabled in the server's sshd_config?") from err
        if conn.sftp is None:
            raise SshUnreachableError(display, f"{hops[-1].label}: the SFTP subsystem did not start")
        channel = conn.sftp.get_channel()
        if channel is not None:
            channel.settimeout(options.io_timeout_s)
        return conn
    except BaseException:
        conn.close()
        raise


def _dial(display: str, hop: SshHop, via: Optional[paramiko.Transport], options: SshOptions):
    if via is None:
        try:
            sock = socket.create_connection((hop.hostname, hop.port), timeout=options.connect_timeout_s)
            # SFTP is request/response: without this, Nagle's algorithm holds a small request behind the
            # server's delayed ACK (about 40 ms per file close after a large read, measured here).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except socket.gaierror as err:
            raise SshUnreachableError(display, f"cannot resolve {hop.hostname} ({err.strerror}): check the host "
                                      f"name or the HostName of Host {hop.alias} in ssh_config") from err
        except OSError as err:
            raise SshUnreachableError(display, f"cannot reach {hop.hostname}:{hop.port} "
                                      f"({err.strerror or err}): is sshd running there, is the port right?") from err
    try:
        return via.open_channel("direct-tcpip", (hop.hostname, hop.port), ("127.0.0.1", 0),
                                timeout=options.connect_timeout_s)
    except paramiko.ChannelException as err:
        raise SshUnreachableError(display, f"the jump host refused to forward to {hop.hostname}:{hop.port} "
                                  f"({err.text}): check AllowTcpForwarding/PermitOpen there") from err
    except (OSError, EOFError, paramiko.SSHException) as err:
        raise SshUnreachableError(display, f"forwarding to {hop.hostname}:{hop.port} through the jump host "
                                  f"failed ({err})") from err


def _handshake(display: str, hop: SshHop, sock, known_hosts: paramiko.HostKeys,
               options: SshOptions) -> paramiko.Transport:
    transport = paramiko.Transport(sock)
    transport.banner_timeout = options.connect_timeout_s
    transport.handshake_timeout = options.connect_timeout_s
    transport.auth_timeout = options.connect_timeout_s
    # Ask first for the key type known_hosts holds, so a server with several keys offers the one we know.
    known = known_hosts.lookup(hop.known_hosts_name)
    if known:
        security = transport.get_security_options()
        first = [t for t in security.key_types if t in known.keys()]
        security.key_types = first + [t for t in security.key_types if t not in first]
    try:
        transport.start_client(timeout=options.connect_timeout_s)
    except (OSError, EOFError, paramiko.SSHException) as err:
        transport.close()
        raise SshUnreachableError(display, f"SSH handshake with {hop.hostname}:{hop.port} failed ({err}): "
                                  f"is an SSH server listening there?") from err
    transport.set_keepalive(max(1, int(options.keepalive_s)))
    return transport


def _authenticate(display: str, hop: SshHop, transport: paramiko.Transport, options: SshOptions) -> str:
    keys, problems, agent = _candidate_keys(hop, options)
    try:
        return _try_keys(display, hop, transport, keys, problems)
    finally:
        if agent is not None:
            agent.close()


def _try_keys(display: str, hop: SshHop, transport: paramiko.Transport, keys: List[Tuple[str, paramiko.PKey]],
              problems: List[str]) -> str:
    refused: List[str] = []
    for label, key in keys:
        try:
            transport.auth_publickey(hop.user, key)
        except paramiko.BadAuthenticationType as err:
            raise SshAuthError(f"{display}: {hop.label} does not accept public keys (it allows "
                               f"{', '.join(err.allowed_types) or 'nothing'}); the gateway uses keys only") from err
        except paramiko.AuthenticationException:
            refused.append(f"{label} ({key.fingerprint})")
            continue
        except (OSError, EOFError, paramiko.SSHException) as err:
            raise SshUnreachableError(display, f"{hop.label}: connection lost during authentication ({err})") from err
        if transport.is_authenticated():
            return label
    if not keys:
        raise SshAuthError(f"{display}: no usable SSH key for {hop.label}: {'; '.join(problems)}; set "
                           f"identity_file or IdentityFile in ssh_config to a passphrase-less key")
    raise SshAuthError(f"{display}: {hop.label} refused every key offered ({', '.join(refused)}): add the public "
                       f"key to ~{hop.user}/.ssh/authorized_keys on that host"
                       + (f" (also: {'; '.join(problems)})" if problems else ""))

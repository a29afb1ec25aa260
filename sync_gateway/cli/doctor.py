"""``sync-gateway doctor``: check the configuration, DNS, TCP, TLS (naming the issuer it could not verify
and the setting that fixes it), auth and the server's version, one line per check."""
from __future__ import annotations

import os
import socket
import ssl
from typing import Callable, List, Mapping, Optional, Tuple
from urllib.parse import urlsplit

from sync_gateway.errors import GatewayError
from sync_gateway.settings import Settings
from sync_gateway.sinks import configure, make_sink
from sync_gateway.sinks._http import resolve_auth, resolve_tls

__all__ = ["doctor"]

Check = Tuple[bool, str, str]  # ok, name, detail


def _issuer_of(der: Optional[bytes]) -> Tuple[str, str]:
    """(issuer, subject) of a DER certificate, as RFC 4514 strings."""
    from cryptography import x509

    if not der:
        raise ValueError("the server sent no certificate")
    cert = x509.load_der_x509_certificate(der)
    return cert.issuer.rfc4514_string(), cert.subject.rfc4514_string()


def _tls_context(settings: Settings, environ: Mapping[str, str]) -> Tuple[ssl.SSLContext, str]:
    choice = resolve_tls(settings.tls, environ, settings.origin)
    if choice.truststore:
        import truststore

        ctx: ssl.SSLContext = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    elif isinstance(choice.verify, str):
        ctx = ssl.create_default_context(cafile=choice.verify if os.path.isfile(choice.verify) else None,
                                         capath=choice.verify if os.path.isdir(choice.verify) else None)
    else:
        ctx = ssl.create_default_context()
        if choice.verify is True:
            import certifi

            ctx.load_verify_locations(certifi.where())
    if choice.verify is False:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if choice.cert:
        cert, key = choice.cert if isinstance(choice.cert, tuple) else (choice.cert, None)
        ctx.load_cert_chain(cert, key)
    where = choice.source if not isinstance(choice.verify, str) else f"{choice.source}={choice.verify}"
    return ctx, where


def doctor(settings: Settings, config_path: Optional[str], environ: Mapping[str, str],
           out: Callable[[str], None] = print) -> bool:
    checks: List[Check] = []

    def add(ok: bool, name: str, detail: str) -> None:
        checks.append((ok, name, detail))
        out(f"[{'ok' if ok else 'FAIL'}] {name}: {detail}")

    add(True, "config", f"{config_path or 'no config file'}; state_dir={settings.state_path}")
    for r in settings.roots:
        if r.startswith("ssh://"):
            try:
                from sync_gateway.sources.sftp.source import SshOptions, check_ssh_root
            except ImportError as e:  # paramiko is the [remote] extra
                add(False, "root", f"{r}: ssh roots need paramiko ({e}): pip install 'hpc-sync[remote]'")
                continue
            # The very options a sync builds (SftpSource): what doctor says OK is what a pass will do.
            for c in check_ssh_root(r, SshOptions.from_settings(settings)):
                add(c.ok, f"ssh {c.name}", c.message)
        else:
            p = os.path.expanduser(r)
            add(os.path.isdir(p) and os.access(p, os.R_OK | os.X_OK), "root",
                f"{p}" + ("" if os.path.isdir(p) else " does not exist or is not a directory"))
    settings = configure(settings, environ)  # the sink's own variables (MLFLOW_TRACKING_URI, ...)
    if not settings.server_url:
        try:
            make_sink(settings, environ).close()
        except GatewayError as e:  # the sink says which of its variables held what
            add(False, "server", str(e))
        return False
    u = urlsplit(settings.server_url)
    host, port = u.hostname or "", u.port or (443 if u.scheme == "https" else 80)
    try:
        addrs = sorted({str(a[4][0]) for a in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})
        add(True, "dns", f"{host} -> {', '.join(addrs)}")
    except OSError as e:
        add(False, "dns", f"{host}: {e}; check the host name in server.url")
        return False
    try:
        socket.create_connection((host, port), timeout=settings.timeout_s).close()
        add(True, "tcp", f"{host}:{port} accepts connections")
    except OSError as e:
        add(False, "tcp", f"{host}:{port}: {e}; is the server up (if it stopped at start, its log says why, e.g. "
                          f"No module named 'psycopg': its PostgreSQL driver is missing), or is a firewall or "
                          f"proxy (HTTPS_PROXY) in the way?")
        return False
    if u.scheme == "https":
        if not _tls_check(settings, environ, host, port, add, config_path):
            return False
    try:
        resolve_auth(settings.auth, environ)
        sink = make_sink(settings, environ)
        try:
            sink.doctor(add)  # the server's own checks (version, auth): the sink knows its endpoints
        finally:
            sink.close()
    except (GatewayError, OSError) as e:
        add(False, "server", str(e))
    except Exception as e:  # noqa: BLE001 - doctor reports whatever a request raised, as one line
        add(False, "server", f"{e.__class__.__name__}: {e}")
    return all(ok for ok, _, _ in checks)


def _tls_check(settings: Settings, environ: Mapping[str, str], host: str, port: int,
               add: Callable[[bool, str, str], None], config_path: Optional[str]) -> bool:
    try:
        ctx, where = _tls_context(settings, environ)
    except (OSError, ssl.SSLError, GatewayError) as e:
        add(False, "tls", f"cannot load the TLS settings: {e}")
        return False
    if settings.tls.insecure:
        add(False, "tls", "VERIFICATION IS OFF (tls.insecure: true); set tls.ca_bundle instead")
    try:
        with socket.create_connection((host, port), timeout=settings.timeout_s) as sock:
            with ctx.wrap_socket(sock, server_hostname=host) as tls:
                issuer, subject = _issuer_of(tls.getpeercert(binary_form=True))
        add(True, "tls", f"handshake ok; certificate {subject} issued by "
                         f"{issuer}, verified with {where}")
        return True
    except ssl.SSLCertVerificationError as e:
        issuer, subject = _peer_unverified(host, port, settings.timeout_s)
        fix = (f"set tls.ca_bundle to the PEM file of the CA {issuer!r} in {config_path or 'the config'}"
               f" (or tls.truststore: true if that CA is in the operating system's store)")
        add(False, "tls", f"cannot verify the certificate {subject} issued by {issuer!r} with {where}: "
                          f"{e.verify_message}. Fix: {fix}")
        return False
    except (ssl.SSLError, OSError) as e:
        add(False, "tls", f"handshake with {host}:{port} failed: {e}")
        return False


def _peer_unverified(host: str, port: int, timeout_s: float) -> Tuple[str, str]:
    # Only to name the issuer in the message: nothing is sent over this unverified connection.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            with ctx.wrap_socket(sock, server_hostname=host) as tls:
                return _issuer_of(tls.getpeercert(binary_form=True))
    except (OSError, ssl.SSLError, ValueError):
        return "an unknown issuer", "the server's certificate"

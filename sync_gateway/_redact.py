"""Secrets never leave the gateway: one place that removes them from text (logs, ``status``, the state
directory, error bodies a server echoes back).

Two layers: the exact secrets the gateway knows (a token, a password, credentials in the server URL) are
registered when they are resolved and replaced wherever they appear; and patterns catch what a server may
echo in a form the gateway never saw (``Authorization: Bearer ...``, ``Basic ...``, ``user:pass@`` in a URL,
``password=...``).
"""
from __future__ import annotations

import base64
import logging
import re
import threading
from typing import Set
from urllib.parse import urlsplit, urlunsplit

__all__ = ["register_secret", "redact", "redact_url", "split_url_credentials", "RedactingFilter", "MASK"]

MASK = "***"
_lock = threading.Lock()
_secrets: Set[str] = set()
_PATTERNS = (
    # credentials in a URL: scheme://user:password@host
    (re.compile(r"(?i)([a-z][a-z0-9+.-]*://)[^/\s:@'\"]+:[^/\s@'\"]*@"), r"\1" + MASK + "@"),
    # an Authorization header echoed in any quoting: "Authorization": "Bearer x", authorization=Basic x
    (re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)(?:(bearer|basic|token)\s+)?[^\s'\",;}]+"),
     lambda m: m.group(1) + (m.group(2) + " " if m.group(2) else "") + MASK),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 " + MASK),
    # key=value and "key": "value" for the usual secret names
    (re.compile(r"(?i)((?:password|passwd|token|secret|api[_-]?key)['\"]?\s*[:=]\s*['\"]?)[^\s'\",;&}]+"),
     r"\1" + MASK),
)


def register_secret(secret: str) -> None:
    """Remember a secret so :func:`redact` removes it wherever it appears (also in base64 forms)."""
    if not secret or len(secret) < 3:
        return
    with _lock:
        _secrets.add(secret)


def _register_basic(user: str, password: str) -> None:
    register_secret(password)
    register_secret(base64.b64encode(f"{user}:{password}".encode()).decode())


def redact(text: object) -> str:
    s = str(text)
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        if secret in s:
            s = s.replace(secret, MASK)
    for pat, repl in _PATTERNS:
        s = pat.sub(repl, s)
    return s


def split_url_credentials(url: str):
    """``(url without user:password, user or None, password or None)``; the password is registered."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None, None
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    user, password = parts.username, parts.password
    if password:
        _register_basic(user or "", password)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)), user, password


def redact_url(url: str) -> str:
    """The URL as it may be shown: without credentials."""
    return split_url_credentials(url)[0] if url else url


class RedactingFilter(logging.Filter):
    """Installed by the CLI on its log handlers: every line that leaves the process is redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except (TypeError, ValueError):
            return True
        clean = redact(msg)
        if record.exc_info and record.exc_text is None:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        record.msg, record.args = clean, None
        return True

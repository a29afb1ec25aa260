"""The MLflow sink's diagnostics: what a refused or failed request means (a proxy's body limit, MLflow 3's
``--allowed-hosts`` guard, an unreachable server) and ``doctor``'s server checks. Split from ``mlflow.py``
so that the sink's data path stays readable."""
from __future__ import annotations

import re
from typing import Callable
from urllib.parse import urlsplit

import requests
import urllib3

from sync_gateway.sinks._http import HttpClient

__all__ = ["BAD_HOST", "BODY_PROBES_BYTES", "host_refused", "body_bytes", "no_connection", "short", "reason",
           "mlflow_doctor"]

#: MLflow 3's answer (403, text/plain) to a Host header not in its --allowed-hosts (DNS-rebinding guard)
BAD_HOST = "Invalid Host header"
#: doctor's probes of a proxy's body limit: above nginx's 1 MB default, then a size some files reach
BODY_PROBES_BYTES = (256 << 10, (1 << 20) + (4 << 10), 8 << 20)


def mlflow_doctor(http: HttpClient, api: str, add: Callable[[bool, str, str], None]) -> None:
    r = http.request("GET", "/version")
    if r.status_code in (502, 503, 504):
        add(False, "server", f"GET /version -> HTTP {r.status_code} from a proxy: the MLflow server behind it is "
                             f"not running or not reachable; its log says why (a server on PostgreSQL "
                             f"without its driver stops at start with: No module named 'psycopg')")
        return
    add(r.ok, "server", f"MLflow {r.text.strip()}" if r.ok else f"GET /version -> HTTP {r.status_code}")
    r = http.request("POST", api + "/experiments/search", json={"max_results": 1})
    auth = http.auth_desc
    if r.status_code == 403 and BAD_HOST in r.text:  # /version is exempt from the guard: only this shows it
        add(False, "host", host_refused(http.base_url))
        return
    if r.status_code in (401, 403):
        add(False, "auth", f"HTTP {r.status_code}: the server refused the credentials from {auth}")
        return
    add(r.ok, "auth", f"{auth} accepted" if r.ok else f"HTTP {r.status_code}: {r.text[:200]}")
    if r.ok:
        _body_limit(http, api, add)


def _body_limit(http: HttpClient, api: str, add: Callable[[bool, str, str], None]) -> None:
    """Probe the largest request body that passes (a proxy's limit; nginx's default is 1 MB) with a
    read-only search padded by a field the server ignores: nothing is written."""
    accepted = 0
    for size in BODY_PROBES_BYTES:
        r = http.request("POST", api + "/experiments/search", json={"max_results": 1, "hpc_sync_probe": "x" * size})
        if r.status_code == 413:
            add(False, "body limit",
                f"a request of {size / 2**20:,.2f} MiB was refused as too large (HTTP 413)"
                + (f", {accepted / 2**20:,.2f} MiB passed" if accepted else "")
                + ": batches are split to fit (slower), but larger files cannot be uploaded; raise the "
                  "proxy's limit (nginx: client_max_body_size)")
            return
        if not r.ok:
            add(False, "body limit", f"a request of {size / 2**20:,.2f} MiB -> HTTP {r.status_code}")
            return
        accepted = size
    add(True, "body limit", f"requests of {accepted / 2**20:,.0f} MiB pass")


def host_refused(base_url: str) -> str:
    host = urlsplit(base_url).netloc
    return (f"the server refused the host name {host!r} of server.url (HTTP 403 {BAD_HOST}: MLflow 3's "
            f"DNS-rebinding guard): add it to the server's --allowed-hosts (or MLFLOW_SERVER_ALLOWED_HOSTS), "
            f"or use a server.url whose host is already allowed")


def body_bytes(r: requests.Response) -> int:
    body = r.request.body if r.request is not None else None
    return len(body) if isinstance(body, (bytes, str)) else 0


def no_connection(e: Exception) -> bool:
    """No connection could be opened (refused, DNS, connect timeout): the server is down, not this run's
    request at fault. A connection reset or a read timeout mid-request may be the request's own doing."""
    if isinstance(e, requests.exceptions.ConnectTimeout):
        return True
    reason = getattr(e.args[0], "reason", None) if e.args else None
    return isinstance(reason, urllib3.exceptions.NewConnectionError) or \
        isinstance(e.__context__, urllib3.exceptions.NewConnectionError)


def short(e: Exception) -> str:
    """The useful end of urllib3's nested message ("[Errno 111] Connection refused", "Read timed out")."""
    text = str(e)
    m = re.search(r"\[Errno -?\d+\][^'\")]*", text) or re.search(r"(Read|Connect) timed out[^'\")]*", text)
    return m.group(0).strip() if m else f"{e.__class__.__name__}: {text[:200]}"


def reason(e: Exception) -> str:
    text = str(e)
    for marker in ("CERTIFICATE_VERIFY_FAILED", "certificate verify failed", "WRONG_VERSION_NUMBER"):
        i = text.find(marker)
        if i >= 0:
            return text[i:].split("'")[0].split('"')[0].rstrip(" )")
    return text[:200]

"""A small HTTP proxy in front of the real MLflow server (reverse, or forward via HTTP_PROXY) that injects
faults, then forwards everything else. Counts what it saw.

- ``fail_first=N, status=S``: answer S (503, 429, 400, ...) to the first N requests whose path contains
  ``match`` (and whose body contains ``body_match``, when given);
- ``lose_first=N``: forward the first N matching requests, then close the connection without an answer
  (the server did the work, the client never hears of it);
- ``chaos=(random.Random, p)``: each matching request, with probability p, gets one of: 503, a lost
  answer, or a connection closed before it was forwarded;
- ``echo_auth=True``: answer 400 to matching requests with a body that echoes the Authorization header
  (as some proxies and frameworks do);
- ``max_body_bytes=N``: answer any request whose body is larger with nginx's 413 page (its
  ``client_max_body_size``; nginx's default is 1 MB). Counted in ``too_large``.
- ``forwarded_host=True``: tell the upstream the proxy's address (``X-Forwarded-Host``/``-Proto``), so URLs
  it builds from the request (OpenWandb's upload URLs) lead back through the proxy;
- ``record=True``: keep every request in ``records`` (``Recorded``: time, method, path, headers, body, the
  status answered or None for no answer), in the order they arrived.
- ``cut_first=N``: forward the first N matching requests, then send only the status line of the answer
  (``HTTP/1.1 200 OK``) and close: urllib3 hands back a 200 with no headers and an empty body;
- ``stall_first=N, stall_s=S``: do NOT forward the first N matching requests (nothing reaches the server),
  and send nothing for S seconds (a read timeout), then close;
- ``trickle_first=N``: do NOT forward the first N matching requests, answer with a status line and then
  one header line per second (a request deadline fires between two header lines);
- ``retry_after="0"``: the ``Retry-After`` header of the ``fail_first`` answers (None: no header).
"""
from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional
from urllib.parse import urlsplit


@dataclass
class Recorded:
    t: float                   # time.monotonic() when the request arrived
    method: str
    path: str
    headers: Dict[str, str]
    body: bytes
    status: Optional[int]      # what the client got; None: no answer (lost, dropped)


class FaultProxy:
    def __init__(self, upstream: str, fail_first: int = 0, status: int = 503, match: str = "/runs/log-batch",
                 body_match: Optional[bytes] = None, lose_first: int = 0, chaos=None, echo_auth: bool = False,
                 max_body_bytes: Optional[int] = None, cut_first: int = 0, stall_first: int = 0,
                 stall_s: float = 5.0, trickle_first: int = 0, retry_after: Optional[str] = "0",
                 record: bool = False, forwarded_host: bool = False):
        self.up = urlsplit(upstream)
        self.fail_left = fail_first
        self.lose_left = lose_first
        self.status = status
        self.match = match
        self.body_match = body_match
        self.chaos = chaos
        self.echo_auth = echo_auth
        self.max_body_bytes = max_body_bytes
        self.record = record
        self.forwarded_host = forwarded_host
        self.records: List[Recorded] = []
        self.too_large = 0
        self.cut_left, self.stall_left, self.trickle_left = cut_first, stall_first, trickle_first
        self.stall_s = stall_s
        self.retry_after = retry_after
        self.cut = self.stalled = self.trickled = 0
        self.failed = 0
        self.lost = 0
        self.dropped = 0
        self.forwarded = 0
        self.seen = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def _any(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                rec = Recorded(time.monotonic(), self.command, self.path, dict(self.headers.items()), body, None)
                if proxy.record:
                    with proxy.lock:
                        proxy.records.append(rec)
                if proxy.max_body_bytes is not None and len(body) > proxy.max_body_bytes:
                    with proxy.lock:
                        proxy.too_large += 1
                    page = (b"<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n"
                            b"<center><h1>413 Request Entity Too Large</h1></center>\r\n<hr><center>nginx</center>"
                            b"\r\n</body>\r\n</html>\r\n")
                    rec.status = 413
                    self.send_response(413)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(page)))
                    self.end_headers()
                    self.wfile.write(page)
                    return
                action = None
                with proxy.lock:
                    hit = proxy.match in self.path and (proxy.body_match is None or proxy.body_match in body)
                    if hit:
                        proxy.seen += 1
                        if proxy.echo_auth:
                            action = "echo"
                        elif proxy.fail_left > 0:
                            proxy.fail_left -= 1
                            action = "fail"
                        elif proxy.lose_left > 0:
                            proxy.lose_left -= 1
                            action = "lose"
                        elif proxy.cut_left > 0:
                            proxy.cut_left -= 1
                            proxy.cut += 1
                            action = "cut"
                        elif proxy.stall_left > 0:
                            proxy.stall_left -= 1
                            proxy.stalled += 1
                            action = "stall"
                        elif proxy.trickle_left > 0:
                            proxy.trickle_left -= 1
                            proxy.trickled += 1
                            action = "trickle"
                        elif proxy.chaos is not None and proxy.chaos[0].random() < proxy.chaos[1]:
                            action = proxy.chaos[0].choice(["fail", "lose", "drop"])
                    if action == "fail":
                        proxy.failed += 1
                    elif action == "lose":
                        proxy.lost += 1
                    elif action == "drop":
                        proxy.dropped += 1
                if action == "echo":
                    data = ('{"error_code": "BAD_REQUEST", "message": "refused; request headers were: '
                            f'Authorization: {self.headers.get("Authorization")}"}}').encode()
                    rec.status = 400
                    self.send_response(400)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                if action == "stall":  # nothing forwarded, nothing answered: the client's read times out
                    time.sleep(proxy.stall_s)
                    self.close_connection = True
                    return
                if action == "trickle":  # nothing forwarded; headers so slow that a deadline fires inside them
                    self.close_connection = True
                    try:
                        self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                        self.wfile.flush()
                        for i in range(600):  # whole header lines: a cut between two looks like the end
                            time.sleep(1.0)
                            self.wfile.write(f"X-Slow-{i}: x\r\n".encode())
                            self.wfile.flush()
                    except OSError:
                        pass
                    return
                if action == "fail":
                    rec.status = proxy.status if proxy.chaos is None else 503
                    self.send_response(rec.status)
                    if proxy.retry_after is not None:
                        self.send_header("Retry-After", proxy.retry_after)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if action == "drop":
                    self.close_connection = True
                    return
                conn = http.client.HTTPConnection(proxy.up.hostname, proxy.up.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                if proxy.forwarded_host:
                    headers.update({"X-Forwarded-Host": proxy.url.split("//", 1)[1], "X-Forwarded-Proto": "http"})
                path = self.path
                if path.startswith("http"):  # absolute form: we are used as a forward proxy (HTTP_PROXY)
                    parts = urlsplit(path)
                    path = parts.path + (f"?{parts.query}" if parts.query else "")
                conn.request(self.command, path, body=body or None, headers=headers)
                r = conn.getresponse()
                data = r.read()
                conn.close()
                with proxy.lock:
                    proxy.forwarded += 1
                if action == "lose":  # the server did it; the client never hears
                    self.close_connection = True
                    return
                if action == "cut":  # the server did it; the answer ends after its status line
                    self.close_connection = True
                    self.wfile.write(f"HTTP/1.1 {r.status} {r.reason}\r\n".encode())
                    return
                rec.status = r.status
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, client_address: None  # a client that hung up: expected
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

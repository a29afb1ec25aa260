"""A small HTTP proxy in front of the real MLflow server (reverse, or forward via HTTP_PROXY) that answers
503 (or 429, 400) to the first N log-batch requests, then forwards everything. Counts what it saw."""
from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class FaultProxy:
    def __init__(self, upstream: str, fail_first: int, status: int = 503, match: str = "/runs/log-batch"):
        self.up = urlsplit(upstream)
        self.fail_left = fail_first
        self.status = status
        self.match = match
        self.failed = 0
        self.forwarded = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _any(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy.lock:
                    fail = proxy.match in self.path and proxy.fail_left > 0
                    if fail:
                        proxy.fail_left -= 1
                        proxy.failed += 1
                if fail:
                    self.send_response(proxy.status)
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                conn = http.client.HTTPConnection(proxy.up.hostname, proxy.up.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                path = self.path
                if path.startswith("http"):  # absolute form: we are used as a forward proxy (HTTP_PROXY)
                    parts = urlsplit(path)
                    path = parts.path + (f"?{parts.query}" if parts.query else "")
                conn.request(self.command, path, body=body or None, headers=headers)
                r = conn.getresponse()
                data = r.read()
                with proxy.lock:
                    proxy.forwarded += 1
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FaultProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

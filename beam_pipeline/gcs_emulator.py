"""A GCS emulator on loopback for the tests and the benchmarks (never used by the job): gcp-storage-emulator behind
an HTTP proxy that behaves more like real GCS.

gcp-storage-emulator accepts any request, so a missing ``userProject`` would go unnoticed. The proxy answers
requests for a requester-pays bucket that lack ``userProject`` with GCS's own 400 error, forwards everything else,
records every request (and each object read's Range header), can answer with injected errors (a status, or a status
and GCS's message: 429 and 503 exercise retries, 400 and 403 refusals), can serve chosen objects' reads with a
Content-Encoding (as GCS serves an object stored gzip-encoded to a client that accepts gzip), and can hold every
object read (``alt=media``) for ``delay_s`` before answering, as a real bucket's time to first byte (reads are held
concurrently, each on its own thread, as on GCS).
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

REQUESTER_PAYS_MESSAGE = "Bucket is a requester pays bucket but no user project provided."
_BUCKET = re.compile(r"/b/([^/?]+)")


class RequesterPaysProxy:
    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.requester_pays: set[str] = set()
        self.requests: list[tuple[str, str, dict]] = []  # (method, path, query)
        # path substring -> answers before forwarding: a status (message "injected failure") or (status, message)
        self.inject: dict[str, list[int | tuple[int, str]]] = {}
        self.media_reads: list[tuple[str, str]] = []  # (path, Range header or "") of every object read
        self.content_encoding: dict[str, str] = {}  # path substring -> Content-Encoding its object reads get
        self.delay_s = 0.0  # held before forwarding an object read (GET ...?alt=media)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> "RequesterPaysProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _answer(self, status: int, body: bytes, headers=()):
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _error(self, status: int, message: str):
                body = {"error": {"code": status, "message": message,
                                  "errors": [{"message": message, "domain": "global", "reason": "required"}]}}
                self._answer(status, json.dumps(body).encode(), [("Content-Type", "application/json")])

            def _forward(self):
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                proxy.requests.append((self.command, url.path, query))
                media = self.command == "GET" and query.get("alt") == ["media"]
                if media:
                    proxy.media_reads.append((url.path, self.headers.get("Range", "")))
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                for fragment, answers in proxy.inject.items():
                    if fragment in url.path and answers:
                        answer = answers.pop(0)
                        self._error(*(answer if isinstance(answer, tuple) else (answer, "injected failure")))
                        return
                bucket = _BUCKET.search(url.path)
                if bucket and bucket.group(1) in proxy.requester_pays and "userProject" not in query:
                    self._error(400, REQUESTER_PAYS_MESSAGE)
                    return
                if media and proxy.delay_s > 0:
                    time.sleep(proxy.delay_s)  # simulated storage latency, not synchronisation
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                upstream.request(self.command, self.path, body=body or None, headers=headers)
                response = upstream.getresponse()
                extra = [(name, encoding) for fragment, encoding in proxy.content_encoding.items()
                         if media and response.status < 300 and fragment in url.path
                         for name in ("Content-Encoding", "X-Goog-Stored-Content-Encoding")]
                self._answer(response.status, response.read(), response.getheaders() + extra)
                upstream.close()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward

        return Handler


def start() -> tuple[object, RequesterPaysProxy]:
    """gcp-storage-emulator (in memory) on a free loopback port and the proxy in front of it, both started; stop
    them with ``proxy.stop()`` then ``server.stop()``. Clients talk to the proxy (``client_environment``)."""
    from gcp_storage_emulator.server import create_server

    server = create_server("127.0.0.1", 0, in_memory=True)
    server.start()
    return server, RequesterPaysProxy(server._api._httpd.server_address[1]).start()


def client_environment(proxy_port: int) -> dict[str, str]:
    """Environment that points google-cloud-storage (and Beam's GCS layer) at the proxy, with anonymous
    credentials, and sends any metadata-server probe to a closed loopback port: nothing leaves the machine."""
    return {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{proxy_port}", "GOOGLE_CLOUD_PROJECT": "test-project",
            "NO_GCE_CHECK": "true", "GCE_METADATA_HOST": "127.0.0.1:1", "GCE_METADATA_IP": "127.0.0.1:1"}

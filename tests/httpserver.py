"""A local HTTP server for client tests: 127.0.0.1, an ephemeral port, served from a thread."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that keeps test output clean and can write a whole reply at once."""

    def log_message(self, *args: Any) -> None:
        pass

    def reply(self, status: int, body: Any, content_type: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        """Send ``body`` (bytes and str as they are, anything else as JSON) with its length."""
        if isinstance(body, str):
            body = body.encode()
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (time-out tests)
            pass

    def json_body(self) -> Any:
        """The request's JSON body ({} when it has none)."""
        return json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")


class LocalServer:
    """Serves ``handler`` on 127.0.0.1 (ephemeral port) until :meth:`close`.

    ``base`` is ``http://127.0.0.1:PORT``; ``requests`` and ``lock`` are for fakes that record
    what they were asked. Usable as a context manager.
    """

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.requests: list[Any] = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "LocalServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (for server-down tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

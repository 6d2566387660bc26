"""An HTTP server on 127.0.0.1 for the tests, serving from a thread inside a `with` block."""

from __future__ import annotations

import http.server
import threading


class LocalServer(http.server.ThreadingHTTPServer):
    """`handler` answers the requests; the port is any free one."""

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler]):
        super().__init__(("127.0.0.1", 0), handler)

    def __enter__(self):
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

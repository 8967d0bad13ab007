"""A real HTTP server that counts the requests a remediation step sends it.

Used as the target of ``http.request`` steps in end-to-end tests, so "ran once"
is counted at the receiving end, not inferred from the receiver's own records.
"""

from __future__ import annotations

import textwrap
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self


class CountingServer:
    """Counts requests per path on a loopback port, in a background thread."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                with server._lock:
                    server.hits[self.path] += 1
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                del args

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._httpd.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def snapshot(self) -> Counter[str]:
        """A copy of the counts."""
        with self._lock:
            return Counter(self.hits)


def hook_rules(hook_url: str, alertname: str) -> str:
    """A rule file whose one remediation calls the counting server per fingerprint."""
    return textwrap.dedent(
        f"""
        playbooks:
          hook:
            remediation:
              - type: http.request
                url: "{hook_url}/run/{{alert.fingerprint}}"
            guards:
              cooldown: 0s
              budget: {{max: 100000, window: 1h}}
        rules:
          - name: hook
            match: ['alertname="{alertname}"']
            playbook: hook
        """
    )


def hook_env(
    hook_port: int, store: str, token: str, mode: str = "execute"
) -> dict[str, str]:
    """Receiver settings for ``hook_rules``: hook allowed, budgets out of the way."""
    return {
        "RECEIVER_AUTH_TOKENS": token,
        "RECEIVER_MODE": mode,
        "RECEIVER_STORE": store,
        "RECEIVER_HTTP_ALLOWLIST": f"127.0.0.1:{hook_port}",
        "RECEIVER_GLOBAL_BUDGET_MAX": "100000",
        "RECEIVER_LOG_LEVEL": "warning",
    }

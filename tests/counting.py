"""A real HTTP server that counts the requests a remediation step sends it.

Used as the target of ``http.request`` steps in end-to-end tests, so "ran once"
is counted at the receiving end, not inferred from the receiver's own records.
"""

from __future__ import annotations

import secrets
import textwrap
from collections import Counter

from fakes import RecordingServer, Reply, Request


class CountingServer(RecordingServer):
    """Answers every POST under its own URL with 200 and counts them per path.

    ``url`` ends in a prefix of this instance's own (``/t-<random>``): a
    request a process left over from an earlier test sends to a reused port
    is answered 404 and never counted (``strangers`` lists them).
    ``GET <url>/seen/<name>`` answers 200 once ``POST <url>/run/<name>``
    arrived, else 404: the truth a verification (and a crash re-check) can ask.
    """

    def __init__(self) -> None:
        super().__init__()
        self.prefix = f"/t-{secrets.token_hex(6)}"
        self.url = f"{self.url}{self.prefix}"
        self.script("POST", f"{self.prefix}/.*", Reply(200, b"ok"))

        def seen(request: Request) -> Reply:
            name = request.path.removeprefix(f"{self.prefix}/seen/")
            run = f"{self.prefix}/run/{name}"
            return Reply(200, b"seen") if self.seen("POST", run) else Reply(404)

        self.route("GET", f"{self.prefix}/seen/[^/]+", seen)

    def mine(self) -> list[Request]:
        """The POSTs sent to this instance's URL, as they arrived."""
        return self.seen("POST", f"{self.prefix}/.*")

    def snapshot(self) -> Counter[str]:
        """How many POSTs each path (without the prefix) received so far."""
        return Counter(r.path.removeprefix(self.prefix) for r in self.mine())

    def strangers(self) -> list[Request]:
        """Requests that were not sent to this instance's URL."""
        with self._lock:
            return [r for r in self.requests if not r.path.startswith(self.prefix)]


def hook_rules(hook_url: str, alertname: str, *, verify: bool = False) -> str:
    """A rule file whose one remediation calls the counting server per fingerprint.

    With ``verify`` the step checks ``/seen/<fingerprint>`` after it ran (briefly).
    """
    check = (
        f"""
                verify:
                  type: http.get
                  url: "{hook_url}/seen/{{alert.fingerprint}}"
                  timeout: 1s
                  interval: 200ms"""
        if verify
        else ""
    )
    return textwrap.dedent(
        f"""
        playbooks:
          hook:
            remediation:
              - type: http.request
                url: "{hook_url}/run/{{alert.fingerprint}}"{check}
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

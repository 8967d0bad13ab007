"""A real HTTP server that counts the requests a remediation step sends it.

Used as the target of ``http.request`` steps in end-to-end tests, so "ran once"
is counted at the receiving end, not inferred from the receiver's own records.
"""

from __future__ import annotations

import textwrap
from collections import Counter

from fakes import RecordingServer, Reply, Request


class CountingServer(RecordingServer):
    """Answers every POST with 200 and counts them per path.

    ``GET /seen/<name>`` answers 200 once ``POST /run/<name>`` arrived, else 404:
    the truth a verification (and a crash re-check) can ask.
    """

    def __init__(self) -> None:
        super().__init__()
        self.script("POST", ".*", Reply(200, b"ok"))

        def seen(request: Request) -> Reply:
            run = "/run/" + request.path.removeprefix("/seen/")
            return Reply(200, b"seen") if self.seen("POST", run) else Reply(404)

        self.route("GET", "/seen/[^/]+", seen)

    def snapshot(self) -> Counter[str]:
        """How many POSTs each path received so far."""
        return Counter(r.path for r in self.seen("POST", ".*"))


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

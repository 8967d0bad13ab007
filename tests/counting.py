"""A real HTTP server that counts the requests a remediation step sends it.

Used as the target of ``http.request`` steps in end-to-end tests, so "ran once"
is counted at the receiving end, not inferred from the receiver's own records.
"""

from __future__ import annotations

import textwrap
from collections import Counter

from fakes import RecordingServer, Reply


class CountingServer(RecordingServer):
    """Answers every POST with 200 and counts them per path."""

    def __init__(self) -> None:
        super().__init__()
        self.script("POST", ".*", Reply(200, b"ok"))

    def snapshot(self) -> Counter[str]:
        """How many POSTs each path received so far."""
        return Counter(r.path for r in self.seen("POST", ".*"))


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

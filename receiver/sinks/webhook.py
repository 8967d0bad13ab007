"""The ``webhook`` sink: the decision trace as JSON to each configured URL.

The body is ``AlertTrace.to_json()`` (the same record ``GET /api/v1/decisions``
returns), with ``X-Receiver-Payload-Id`` and ``X-Receiver-Fingerprint`` headers.
One delivery per decision (not per occurrence): it is an audit feed. URLs may carry
tokens, so outcomes name only the host. Built by ``receiver.sinks.build_sinks``.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from receiver.model import AlertTrace
from receiver.sinks.delivery import Dedupe, Deliverer, SinkError, SinkOutcome


def _host(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


class WebhookSink:
    """POSTs each decision trace to every configured URL."""

    name = "webhook"
    dedupe: Dedupe = "decision"

    def __init__(self, deliverer: Deliverer, *, urls: list[str]) -> None:
        self._d = deliverer
        self._urls = list(urls)

    async def send(self, trace: AlertTrace) -> SinkOutcome:
        """Deliver to every URL; the outcome fails if any delivery failed."""
        body = trace.to_json()
        headers = {
            "User-Agent": "alert-receiver",
            "X-Receiver-Payload-Id": trace.payload_id,
            "X-Receiver-Fingerprint": trace.alert.fingerprint,
        }
        done: list[str] = []
        failed: list[str] = []
        attempts = 0
        for url in self._urls:
            host = _host(url)
            try:
                response, tries = await self._d.send(
                    "POST", url, what=f"webhook to {host}", json=body, headers=headers
                )
            except SinkError as exc:
                attempts += exc.attempts
                failed.append(str(exc))
                continue
            attempts += tries
            if 200 <= response.status_code < 300:
                done.append(host)
            else:
                failed.append(
                    f"webhook to {host}: HTTP {response.status_code}: "
                    f"{self._d.excerpt(response, 100)}"
                )
        if failed:
            raise SinkError(
                f"{len(done)} of {len(self._urls)} delivered; " + "; ".join(failed),
                attempts,
            )
        return SinkOutcome(
            self.name, "sent", f"delivered to {', '.join(done)}", attempts
        )

    async def aclose(self) -> None:
        """Close the deliverer's client (shared sinks may close it twice: harmless)."""
        await self._d.aclose()

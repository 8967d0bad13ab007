"""Ask Alertmanager's API whether an alert still fires, right before remediating.

Alertmanager sends the resolved notification only at the next group interval
(minutes, by default), so the journal can still say "firing" for an alert that
already recovered. When ``alertmanager_url`` is set, the runner asks
``GET /api/v2/alerts`` (filtered by the alert's labels) as the last check before
it acts. An unreachable Alertmanager is "unknown", never a reason to act or not.
"""

from __future__ import annotations

import httpx

from receiver.model import Alert


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


class AlertmanagerApi:
    """A small client for one Alertmanager's v2 API."""

    def __init__(self, client: httpx.AsyncClient, base_url: str) -> None:
        self._client = client
        self.base_url = base_url.rstrip("/")

    async def still_firing(self, alert: Alert) -> bool | None:
        """Whether Alertmanager still has the alert firing.

        True when it lists the fingerprint active (or silenced or inhibited),
        False when it no longer does, None when it could not be asked.
        """
        params: list[tuple[str, str | int | float | bool | None]] = [
            ("filter", f"{name}={_quote(value)}")
            for name, value in sorted(alert.labels.items())
        ]
        params += [("silenced", "true"), ("inhibited", "true"), ("active", "true")]
        try:
            response = await self._client.get(
                f"{self.base_url}/api/v2/alerts", params=params
            )
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        try:
            listed = response.json()
        except ValueError:
            return None
        for item in listed if isinstance(listed, list) else []:
            if item.get("fingerprint") == alert.fingerprint:
                state = (item.get("status") or {}).get("state")
                return state in ("active", "suppressed", "unprocessed")
        return False

    async def aclose(self) -> None:
        """Close the client."""
        await self._client.aclose()

"""Ask Alertmanager's API about an alert right before remediating.

Alertmanager sends the resolved notification only at the next group interval
(minutes, by default), so the journal can still say "firing" for an alert that
already recovered; and a human's silence ("hands off") never reaches a webhook
at all. When ``alertmanager_url`` is set, the runner asks ``GET /api/v2/alerts``
(filtered by the alert's labels) as the last check before it acts: gone means
resolved; ``status.silencedBy`` and ``status.inhibitedBy`` mean hands off, and
each silence is looked up (``GET /api/v2/silence/{id}``) for its author and
comment. An unreachable Alertmanager is "unknown", never a reason to act or not.
"""

from __future__ import annotations

from urllib.parse import quote

import httpx

from receiver.model import Alert, Silence, SourceView

# A comment longer than this is cut in the skip reason.
COMMENT_MAX = 300


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


class AlertmanagerApi:
    """A small client for one Alertmanager's v2 API."""

    def __init__(self, client: httpx.AsyncClient, base_url: str) -> None:
        self._client = client
        self.base_url = base_url.rstrip("/")

    async def still_firing(self, alert: Alert) -> bool | None:
        """Whether Alertmanager still has the alert firing (None: unknown)."""
        return (await self.look(alert)).firing

    async def look(self, alert: Alert) -> SourceView:
        """What Alertmanager says about the alert now.

        ``firing`` is True when it lists the fingerprint active, suppressed or
        unprocessed, False when it no longer does, None when it could not be
        asked; silences and inhibitions come with it.
        """
        params: list[tuple[str, str | int | float | bool | None]] = [
            ("filter", f"{name}={_quote(value)}")
            for name, value in sorted(alert.labels.items())
        ]
        params += [("silenced", "true"), ("inhibited", "true"), ("active", "true")]
        listed = await self._get("/api/v2/alerts", params)
        if not isinstance(listed, list):
            return SourceView(firing=None)
        for item in listed:
            if not isinstance(item, dict) or item.get("fingerprint") != (
                alert.fingerprint
            ):
                continue
            status = item.get("status") or {}
            state = status.get("state")
            silenced = [str(s) for s in status.get("silencedBy") or []]
            inhibited = tuple(str(i) for i in status.get("inhibitedBy") or [])
            return SourceView(
                firing=state in ("active", "suppressed", "unprocessed"),
                silences=tuple([await self._silence(i) for i in silenced]),
                inhibited_by=inhibited,
            )
        return SourceView(firing=False)

    async def _silence(self, silence_id: str) -> Silence:
        found = await self._get(f"/api/v2/silence/{quote(silence_id, safe='')}", [])
        if not isinstance(found, dict):
            return Silence(silence_id)
        comment = " ".join(str(found.get("comment") or "").split())
        if len(comment) > COMMENT_MAX:
            comment = comment[: COMMENT_MAX - 1] + "…"
        return Silence(silence_id, str(found.get("createdBy") or ""), comment)

    async def _get(
        self, path: str, params: list[tuple[str, str | int | float | bool | None]]
    ) -> object:
        try:
            response = await self._client.get(f"{self.base_url}{path}", params=params)
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        try:
            return response.json()
        except ValueError:
            return None

    async def aclose(self) -> None:
        """Close the client."""
        await self._client.aclose()

"""The one secret scrubber: masks every configured secret value in a text.

Used by the log processor (``receiver.logs``), the sinks (their delivery errors
and the error texts they record) and, through ``receiver.sinks.scrubber``, the
runner's step reasons. Longer secrets are masked first, so a secret that
contains another is never left half shown.
"""

from __future__ import annotations

from collections.abc import Iterable

MASK = "***"


class Scrubber:
    """Replaces each of ``secrets`` (empty ones ignored) by ``***`` in a text."""

    def __init__(self, secrets: Iterable[str]) -> None:
        """Keep the secrets, longest first."""
        self._secrets = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))

    def __bool__(self) -> bool:
        """Whether there is any secret to mask."""
        return bool(self._secrets)

    def __call__(self, text: str) -> str:
        """``text`` with every secret masked."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

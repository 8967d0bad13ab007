"""The one secret scrubber: masks every configured secret value in a text.

Used by the log processor (``receiver.logs``), the sinks (their delivery errors
and the error texts they record) and, through ``receiver.sinks.scrubber``, the
runner's step reasons. Longer secrets are masked first, so a secret that
contains another is never left half shown.

A secret is also masked in the forms a server or library echoes it in: JSON
escaped (``/`` after a backslash, non-ASCII and ``<>&`` as unicode escapes)
and percent-encoded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

MASK = "***"


def _json_forms(secret: str) -> set[str]:
    """``secret`` as JSON encoders write it inside a string."""
    plain = json.dumps(secret, ensure_ascii=False)[1:-1]
    ascii_only = json.dumps(secret)[1:-1]
    forms = {plain, ascii_only}
    for form in (plain, ascii_only):
        slashed = form.replace("/", "\\/")
        # Go and others escape <, > and &.
        html = (
            slashed.replace("<", "\\u003c")
            .replace(">", "\\u003e")
            .replace("&", "\\u0026")
        )
        forms |= {slashed, html, html.replace("\\/", "/")}
    return forms


def variants(secret: str) -> set[str]:
    """``secret`` and the encodings it is echoed in."""
    forms = {secret, quote(secret, safe=""), quote(secret), quote_plus(secret)}
    for form in tuple(forms):
        forms |= _json_forms(form)
    return forms


class Scrubber:
    """Replaces each of ``secrets`` (empty ones ignored) by ``***`` in a text."""

    def __init__(self, secrets: Iterable[str]) -> None:
        """Keep the secrets and their encoded forms, longest first."""
        forms = {form for s in secrets if s for form in variants(s)}
        self._secrets = tuple(sorted(forms, key=len, reverse=True))

    def __bool__(self) -> bool:
        """Whether there is any secret to mask."""
        return bool(self._secrets)

    def __call__(self, text: str) -> str:
        """``text`` with every secret masked."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

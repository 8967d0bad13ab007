"""Credential checks for the edge, all in constant time.

Alertmanager and the API: any configured bearer token, or the configured basic
credentials. PagerDuty V3: ``X-PagerDuty-Signature`` with one or more
``v1=<hex HMAC-SHA256 of the raw body>``, valid if any matches any secret
(entries of other versions are ignored, as PagerDuty documents).
Events v2: the ``routing_key`` must be configured. An unconfigured mechanism is
open only while the receiver listens on loopback (``Settings.check_safe``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re

from pydantic import SecretStr

from receiver.errors import AuthError, ForbiddenError, InputError

_SIG_V1 = re.compile(r"^v1=([0-9a-fA-F]{64})$")
_SIG_ANY = re.compile(r"^[A-Za-z0-9]+=\S+$")


def _v1_signatures(header: str) -> list[bytes]:
    """The ``v1`` entries of a signature header, lower-case hex.

    PagerDuty: "select only signatures which are version v1"; entries of later
    versions (``v2=...``) sit next to them and are ignored.
    """
    given = []
    for raw in header.split(","):
        part = raw.strip()
        found = _SIG_V1.match(part)
        if found is not None:
            given.append(found.group(1).lower().encode())
        elif part.startswith("v1=") or not _SIG_ANY.match(part):
            raise InputError(
                "malformed X-PagerDuty-Signature: expected comma-separated "
                "<version>=<signature> entries, e.g. v1=<64 hex digits>"
            )
    if not given:
        raise InputError(
            "X-PagerDuty-Signature has no v1=<64 hex digits> entry; this "
            "receiver verifies v1 signatures"
        )
    return given


class Authenticator:
    """Holds the configured secrets and checks requests against them."""

    def __init__(
        self,
        tokens: list[SecretStr],
        basic: SecretStr | None,
        pagerduty_secrets: list[SecretStr],
        routing_keys: list[SecretStr],
        *,
        open_when_unset: bool,
    ) -> None:
        self._tokens = [t.get_secret_value().encode() for t in tokens]
        self._basic = basic.get_secret_value().encode() if basic else None
        self._pd = [s.get_secret_value().encode() for s in pagerduty_secrets]
        self._keys = [k.get_secret_value().encode() for k in routing_keys]
        self._open = open_when_unset

    def check_header(self, authorization: str | None) -> None:
        """Bearer or basic credentials for Alertmanager webhooks and the API."""
        if not self._tokens and self._basic is None:
            if self._open:
                return
            raise ForbiddenError(
                "this endpoint is disabled: no credentials are configured; set "
                "RECEIVER_AUTH_TOKENS or RECEIVER_BASIC_AUTH"
            )
        if not authorization:
            raise AuthError(
                "missing Authorization header; send 'Bearer <token>' (Alertmanager "
                "http_config.authorization) or basic credentials (basic_auth)"
            )
        scheme, _, value = authorization.partition(" ")
        value = value.strip()
        ok = False
        if scheme.lower() == "bearer":
            given = value.encode()
            # Compare against every token so timing does not tell which matched.
            for token in self._tokens:
                ok |= hmac.compare_digest(given, token)
        elif scheme.lower() == "basic" and self._basic is not None:
            try:
                given = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise AuthError("malformed basic credentials") from None
            ok = hmac.compare_digest(given, self._basic)
        else:
            raise AuthError(
                f"unsupported Authorization scheme {scheme!r}; use Bearer or Basic"
            )
        if not ok:
            raise ForbiddenError("credentials not accepted")

    def check_signature(self, header: str | None, body: bytes) -> None:
        """Verify a PagerDuty V3 signature header against every secret."""
        if not self._pd:
            if self._open:
                return
            raise ForbiddenError(
                "PagerDuty webhooks are disabled: set RECEIVER_PAGERDUTY_SECRETS "
                "to the subscription's signing secret"
            )
        if not header:
            raise InputError(
                "missing X-PagerDuty-Signature header; PagerDuty V3 webhooks are "
                "signed, check the subscription"
            )
        given = _v1_signatures(header)
        ok = False
        for secret in self._pd:
            expected = hmac.new(secret, body, hashlib.sha256).hexdigest().encode()
            for sig in given:
                ok |= hmac.compare_digest(sig, expected)
        if not ok:
            raise ForbiddenError(
                "X-PagerDuty-Signature does not match any configured secret"
            )

    def check_routing_key(self, key: str) -> None:
        """Accept only configured Events API v2 routing keys."""
        if not self._keys:
            if self._open:
                return
            raise ForbiddenError("Events API v2 is disabled: set RECEIVER_ROUTING_KEYS")
        given = key.encode()
        ok = False
        for known in self._keys:
            ok |= hmac.compare_digest(given, known)
        if not ok:
            raise ForbiddenError(
                "routing_key is not configured on this receiver; add it to "
                "RECEIVER_ROUTING_KEYS"
            )

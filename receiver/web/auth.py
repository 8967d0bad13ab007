"""Credential checks for the edge, all in constant time, most before any body.

Who may do what is a *scope* carried by the credential:

==========  =====================================================================
scope       lets the caller
==========  =====================================================================
webhook     POST /webhooks/alertmanager
read        GET /api/v1/*, and dry-run replays (they change nothing)
replay      POST /api/v1/replay with ``"execute": true``
approve     POST /api/v1/approvals/{id}, POST /api/v1/incidents/{id}/{action}
admin       POST /-/reload, the admin endpoints (pause, reset): ``require_scope``
==========  =====================================================================

``auth_tokens`` and ``basic_auth`` carry webhook and read (so an Alertmanager
token can never approve or execute); ``read_tokens`` read; ``replay_tokens``,
``approve_tokens`` and ``admin_tokens`` carry their scope plus read.
``approver_tokens`` are personal: each carries read and approve *and names its
person* (``person``), which is how the API and the console know who approves.

PagerDuty V3: ``X-PagerDuty-Signature`` with one or more ``v1=<hex HMAC-SHA256
of the raw body>`` (entries of other versions are ignored, as PagerDuty
documents); its presence and format are checked before the body is read, the
HMAC after. Events v2: the ``routing_key`` in the body must be configured.

With no credential configured at all, a receiver on loopback is open (local
trials); beyond loopback it refuses to start (``Settings.check_safe``). On
loopback, a webhook mechanism or the read scope with no credential of its own is
open too; replay, approve and admin never are once any credential exists.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, get_args

from aiohttp import web
from pydantic import SecretStr

from receiver.errors import AuthError, ForbiddenError, InputError
from receiver.settings import AuthSettings

Scope = Literal["webhook", "read", "replay", "approve", "admin"]
SCOPES: tuple[Scope, ...] = get_args(Scope)
# Scopes a caller gets on loopback when no credential carries them; the others
# stay closed as soon as any credential is configured.
_OPEN_ON_LOOPBACK: frozenset[Scope] = frozenset({"webhook", "read"})
_SETTING = {
    "webhook": "RECEIVER_AUTH_TOKENS (or RECEIVER_BASIC_AUTH)",
    "read": "RECEIVER_READ_TOKENS (or RECEIVER_AUTH_TOKENS)",
    "replay": "RECEIVER_REPLAY_TOKENS",
    "approve": "RECEIVER_APPROVE_TOKENS",
    "admin": "RECEIVER_ADMIN_TOKENS",
}


@dataclass(frozen=True)
class Credential:
    """One accepted secret and the scopes it grants."""

    secret: bytes
    scopes: frozenset[Scope]
    person: str = ""  # whose own credential this is (approver_tokens)


def scoped(secrets: Iterable[SecretStr], *scopes: Scope) -> list[Credential]:
    """Credentials for ``secrets``, each granting ``scopes``."""
    return [
        Credential(s.get_secret_value().encode(), frozenset(scopes)) for s in secrets
    ]


_SIG_V1 = re.compile(r"^v1=([0-9a-fA-F]{64})$")
_SIG_ANY = re.compile(r"^[A-Za-z0-9]+=\S+$")


def _v1_signatures(header: str) -> list[bytes]:
    """The ``v1`` entries of a signature header, lower-case hex.

    PagerDuty: "select only signatures which are version v1"; entries of later
    versions (``v2=...``) sit next to them and are ignored.
    """
    given = []
    for raw in header.split(",")[:16]:
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
        tokens: list[Credential],
        basic: Credential | None,
        pagerduty_secrets: list[SecretStr],
        routing_keys: list[SecretStr],
        *,
        loopback: bool,
    ) -> None:
        self._tokens = tokens
        self._basic = basic
        self._pd = [s.get_secret_value().encode() for s in pagerduty_secrets]
        self._keys = [k.get_secret_value().encode() for k in routing_keys]
        self._loopback = loopback
        self._no_credentials = not (tokens or basic or self._pd or self._keys)
        # The scopes some credential carries (asked on every request).
        self._scopes = frozenset(
            scope
            for credential in (*tokens, *([basic] if basic is not None else []))
            for scope in credential.scopes
        )

    @classmethod
    def from_settings(cls, auth: AuthSettings, *, loopback: bool) -> Authenticator:
        """The authenticator ``auth`` describes (scopes as in the docstring).

        ``loopback``: the service listens on loopback only.
        """
        tokens = [
            *scoped(auth.tokens, "webhook", "read"),
            *scoped(auth.read_tokens, "read"),
            *scoped(auth.replay_tokens, "read", "replay"),
            *scoped(auth.approve_tokens, "read", "approve"),
            *scoped(auth.admin_tokens, "read", "admin"),
            *(
                Credential(
                    token.get_secret_value().encode(),
                    frozenset({"read", "approve"}),
                    person,
                )
                for person, token in sorted(auth.approver_tokens.items())
            ),
        ]
        basic = (
            scoped([auth.basic], "webhook", "read")[0]
            if auth.basic is not None
            else None
        )
        return cls(
            tokens,
            basic,
            auth.pagerduty_secrets,
            auth.routing_keys,
            loopback=loopback,
        )

    def _open(self, scope: Scope | None) -> bool:
        """Whether a mechanism without credentials of its own is open."""
        if not self._loopback:
            return False
        return self._no_credentials or scope is None or scope in _OPEN_ON_LOOPBACK

    def _configured(self, scope: Scope) -> bool:
        return scope in self._scopes

    def require(self, authorization: str | None, scope: Scope) -> None:
        """Bearer or basic credentials that carry ``scope``.

        Raises:
            AuthError: 401 when credentials are missing or malformed.
            ForbiddenError: 403 when they match nothing or lack ``scope``.
        """
        if not self._configured(scope):
            if self._open(scope):
                return
            raise ForbiddenError(
                f"this endpoint needs a credential with the {scope!r} scope and "
                f"none is configured; set {_SETTING[scope]}"
            )
        granted = self._granted(authorization)
        if scope not in granted:
            raise ForbiddenError(
                f"this credential lacks the {scope!r} scope (it has "
                f"{', '.join(sorted(granted))}); use a token from {_SETTING[scope]}"
            )

    def person(self, authorization: str | None) -> str:
        """The person whose own token the header carries, else ``""``.

        Only personal tokens (``approver_tokens``) name a person; a shared
        token, and the user name typed beside it, say nothing verified.
        """
        try:
            return self._match(authorization)[1]
        except AuthError:
            return ""

    def _granted(self, authorization: str | None) -> frozenset[Scope]:
        """The scopes of the credentials in an Authorization header."""
        return self._match(authorization)[0]

    def _match(self, authorization: str | None) -> tuple[frozenset[Scope], str]:
        """The scopes of the credentials in an Authorization header, and whose."""
        if not authorization:
            raise AuthError(
                "missing Authorization header; send 'Bearer <token>' (Alertmanager "
                "http_config.authorization) or basic credentials (basic_auth)"
            )
        if not authorization.isascii():
            raise AuthError(
                "the Authorization header holds non-ASCII bytes; send "
                "'Bearer <token>' or 'Basic <base64>'"
            )
        scheme, _, value = authorization.partition(" ")
        value = value.strip()
        granted: frozenset[Scope] = frozenset()
        person = ""
        matched = False
        if scheme.lower() == "bearer":
            given = value.encode()
            # Compare against every token so timing does not tell which matched.
            for token in self._tokens:
                ok = hmac.compare_digest(given, token.secret)
                matched |= ok
                granted |= token.scopes if ok else frozenset()
                person = token.person if ok and token.person else person
        elif scheme.lower() == "basic" and (self._basic is not None or self._tokens):
            try:
                given = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise AuthError("malformed basic credentials") from None
            if self._basic is not None:
                matched = hmac.compare_digest(given, self._basic.secret)
                granted = self._basic.scopes if matched else frozenset()
            # A browser can only send basic credentials: any user name with a
            # bearer token as the password carries that token's scopes.
            _, sep, password = given.partition(b":")
            for token in self._tokens:
                ok = bool(sep) and hmac.compare_digest(password, token.secret)
                matched |= ok
                granted |= token.scopes if ok else frozenset()
                person = token.person if ok and token.person else person
        else:
            # Never echo the header: without a separating space its "scheme"
            # is the credential itself (a bare token, or "Bearer<TAB>token").
            raise AuthError(
                "unsupported Authorization header; send 'Bearer <token>' or "
                "'Basic <base64 of user:password>' (the scheme, one space, the "
                "credential)"
            )
        if not matched:
            raise ForbiddenError("credentials not accepted")
        return granted, person

    def signature_parts(self, header: str | None) -> list[bytes]:
        """Check a PagerDuty V3 signature header's presence and format, bodiless.

        Returns the given signatures (empty when the mechanism is open).
        """
        if not self._pd:
            if self._open(None):
                return []
            raise ForbiddenError(
                "PagerDuty webhooks are disabled: set RECEIVER_PAGERDUTY_SECRETS "
                "to the subscription's signing secret"
            )
        if not header:
            raise InputError(
                "missing X-PagerDuty-Signature header; PagerDuty V3 webhooks are "
                "signed, check the subscription"
            )
        return _v1_signatures(header)

    def check_signature(self, given: list[bytes], body: bytes) -> None:
        """Verify signatures from ``signature_parts`` against every secret."""
        if not self._pd:
            return  # open (signature_parts refused otherwise)
        ok = False
        for secret in self._pd:
            expected = hmac.new(secret, body, hashlib.sha256).hexdigest().encode()
            for sig in given:
                ok |= hmac.compare_digest(sig, expected)
        if not ok:
            raise ForbiddenError(
                "X-PagerDuty-Signature does not match any configured secret"
            )

    def routing_keys_open(self) -> None:
        """Refuse Events v2 before reading a body when no key could match."""
        if not self._keys and not self._open(None):
            raise ForbiddenError("Events API v2 is disabled: set RECEIVER_ROUTING_KEYS")

    def check_routing_key(self, key: str) -> None:
        """Accept only configured Events API v2 routing keys."""
        if not self._keys:
            self.routing_keys_open()
            return
        given = key.encode("utf-8", "surrogatepass")
        ok = False
        for known in self._keys:
            ok |= hmac.compare_digest(given, known)
        if not ok:
            raise ForbiddenError(
                "routing_key is not configured on this receiver; add it to "
                "RECEIVER_ROUTING_KEYS"
            )


AUTHENTICATOR = web.AppKey("authenticator", Authenticator)


def require_scope(request: web.Request, scope: Scope) -> None:
    """Refuse ``request`` unless its credentials carry ``scope``.

    For handlers outside this module (the admin endpoints use
    ``require_scope(request, "admin")``); raises ``AuthError``/``ForbiddenError``,
    which the edge answers as problem+json.
    """
    request.app[AUTHENTICATOR].require(request.headers.get("Authorization"), scope)

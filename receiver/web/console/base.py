"""The console's shared state and identity: who is signed in, form tokens, home."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from receiver.engine.guards import GuardDefaults
from receiver.engine.worker import Processor
from receiver.errors import AuthError, ClientGoneError, RequestTimeoutError
from receiver.incidents.service import IncidentService
from receiver.store.base import Store
from receiver.web.admin import Admin
from receiver.web.approvals import ApprovalDesk, identify
from receiver.web.auth import Authenticator, Scope
from receiver.web.console.render import (
    _JS,
    BACKTEST_PAYLOADS,
    BACKTEST_SECONDS,
    FORM_TIMEOUT,
    _e,
    _page,
    log,
)
from receiver.web.problems import problem
from receiver.web.reload import Reloader


class ConsoleBase:
    """State and identity every ``/ui/`` page shares."""

    def __init__(
        self,
        *,
        store: Store,
        auth: Authenticator,
        desk: ApprovalDesk,
        processor: Processor,
        admin: Admin,
        clock: Callable[[], datetime],
        defaults: GuardDefaults,
        reloader: Reloader | None = None,
        secrets: Iterable[str] = (),
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._auth = auth
        self._desk = desk
        self._processor = processor
        self._admin = admin
        self._clock = clock
        self._defaults = defaults
        self._reloader = reloader
        self.timer = timer
        # One backtest at a time per replica; the bounds are attributes so a
        # deployment (or a test) can tighten them.
        self.busy = asyncio.Lock()
        self.backtest_payloads = BACKTEST_PAYLOADS
        self.backtest_seconds = BACKTEST_SECONDS
        # Set once the incident service is built (after the console's routes).
        self.incidents: IncidentService | None = None
        # Every replica derives the same form key from the configured secrets,
        # so a page served by one can be submitted to another.
        known = sorted(secrets)
        self._key = (
            hashlib.sha256(b"receiver-console\0" + "\0".join(known).encode()).digest()
            if known
            else os.urandom(32)
        )

    # ------------------------------------------------------------ identity

    def _who(
        self, request: web.Request, scope: Scope = "read", doing: str = ""
    ) -> str | web.Response:
        """The signed-in identity with ``scope``, or the 401/403 answer.

        ``doing``: what the refusal page says needs the scope (else the
        scope's usual action).

        (Answered here, not raised: the problem middleware drops the headers
        of a raised HTTP error, and the prompt needs ``WWW-Authenticate``.)
        """
        header = request.headers.get("Authorization")
        try:
            self._auth.require(header, scope)
        except AuthError as exc:
            if exc.status == 403 and scope != "read":
                log.warning(
                    "console_refused",
                    path=request.path,
                    scope=scope,
                    by=identify(self._auth, header).name,
                )
                return _page(
                    "Not allowed",
                    f"<p role=alert>{_e(self._refused(scope, str(exc), doing))}</p>"
                    '<p><a href="/ui/">Back to the console</a></p>',
                    status=403,
                )
            return problem(
                exc.status,
                str(exc),
                slug="unauthorized" if exc.status == 401 else "forbidden",
                headers={"WWW-Authenticate": 'Basic realm="receiver", charset="UTF-8"'},
            )
        return identify(self._auth, header).name

    @staticmethod
    def _refused(scope: Scope, detail: str, doing: str = "") -> str:
        what = doing or {
            "admin": "Resetting breakers, pausing remediations and backtesting "
            "rules changes",
            "approve": "Approving and rejecting remediations",
            "replay": "Running replays",
        }.get(scope, "This")
        return (
            f"Refused: {what} needs the {scope} scope, and you are signed in "
            f"without it ({detail}). Sign in again with a token that has it."
        )

    def _token(self, request: web.Request) -> str:
        """The form token of the credential the request is signed in with.

        Bound to the whole credential (the Authorization header the browser
        repeats), which names the identity too, never to the name alone: a user
        name is anyone's to type at the prompt, so a token bound to it could be
        read off a page by any holder of a read token and forge another
        person's form.
        """
        header = request.headers.get("Authorization") or ""
        credential = hashlib.sha256(header.encode("utf-8", "surrogatepass")).digest()
        return hmac.new(self._key, b"form\0" + credential, hashlib.sha256).hexdigest()

    def _check_form(self, request: web.Request, who: str, token: str) -> None:
        """Refuse a form another site made the browser send (403)."""
        site = request.headers.get("Sec-Fetch-Site", "")
        if site in ("cross-site", "same-site"):
            log.warning("console_cross_site", path=request.path, by=who, site=site)
            raise web.HTTPForbidden(
                text=f"the form was sent from another site ({site}); use the "
                "console's own page"
            )
        expected = self._token(request).encode()
        if not hmac.compare_digest(token.encode("utf-8", "surrogatepass"), expected):
            raise web.HTTPForbidden(
                text="the form is stale or not from this console; reload the page"
            )

    async def _form(self, request: web.Request, who: str) -> Mapping[str, str]:
        try:
            async with asyncio.timeout(FORM_TIMEOUT):
                form = await request.post()
        except TimeoutError:
            raise RequestTimeoutError(
                f"the form did not arrive within {FORM_TIMEOUT:g} s"
            ) from None
        except ConnectionError:
            raise ClientGoneError(
                "the client disconnected while sending the form"
            ) from None
        except (RequestPayloadError, HttpProcessingError, ValueError, LookupError):
            # Not decodable (Content-Encoding), not UTF-8, an unknown charset,
            # a multipart body without its boundary.
            raise web.HTTPBadRequest(
                text="the form could not be read; send it from the console's page "
                "(application/x-www-form-urlencoded, UTF-8)"
            ) from None
        token = form.get("token", "")
        self._check_form(request, who, token if isinstance(token, str) else "")
        return {k: str(v) for k, v in form.items() if isinstance(v, str)}

    def _hidden(self, request: web.Request) -> str:
        return f'<input type=hidden name=token value="{self._token(request)}">'

    @staticmethod
    def _notice(request: web.Request) -> str:
        notice = request.query.get("notice", "")
        if not notice:
            return ""
        return f"<p role=status><strong>{_e(notice[:300])}</strong></p>"

    # --------------------------------------------------------------- pages

    async def home(self, request: web.Request) -> web.Response:
        """GET /ui/: the incidents page."""
        who = self._who(request)
        if isinstance(who, web.Response):
            return who
        raise web.HTTPFound("/ui/incidents")

    async def script(self, _request: web.Request) -> web.Response:
        """GET /ui/static/console.js: the clocks' countdown."""
        return web.Response(
            text=_JS,
            content_type="text/javascript",
            headers={"Cache-Control": "max-age=300"},
        )

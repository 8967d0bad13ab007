"""One approval policy for every way a person says yes or no: Slack, API, console.

``ApprovalDesk.decide`` is the only code that decides a pending approval:

1. The approval exists, is pending and has not expired (an expired one is
   marked ``expired``).
2. The approver is who the credential says: Slack's signed user mapped through
   ``slack_approvers``, or the person of an ``approver_tokens`` token (API and
   console). A shared approve token says nothing verified about who holds it,
   so it may decide only for playbooks without an ``approvers:`` policy, and
   never a step that needs two approvers. Slack needs the policy (a Slack user
   without one would be anyone in the workspace).
3. The playbook's ``approvers`` admit the person: named, in a group, or on call
   now for a PagerDuty schedule (asked through the REST API at the press).
4. A destructive step (or any step of a ``two_person`` playbook) needs two
   different approvers: the first is recorded, the second decides.
5. The store moves the approval out of ``pending`` once, the decision is
   audited in the decision log (``approval.<id>.<n>`` records), and an approved
   payload is journalled again so the worker runs the approved step once.

Built in ``create_app`` and handed to the Slack, API and console handlers.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import httpx
import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from receiver.engine.worker import Processor
from receiver.errors import (
    ClientGoneError,
    ForbiddenError,
    InputError,
    NotFoundError,
    RequestTimeoutError,
    UnsupportedMediaError,
)
from receiver.model import iso
from receiver.rulebook.schema import Approvers
from receiver.sources import parse_json
from receiver.store.base import Approval, DecisionQuery, JournalEntry, Store, new_id
from receiver.web.auth import Authenticator

log = structlog.get_logger("receiver.approvals")

APPROVER_MARK_FOR = timedelta(days=7)  # longer than any approval lives
Via = Literal["slack", "api", "console"]
Outcome = Literal["decided", "recorded", "refused", "missing", "conflict", "expired"]


MAX_BODY = 16 * 1024  # {"decision": "approve"} and little else
BODY_TIMEOUT = 10.0  # seconds for that body to arrive


async def read_body(request: web.Request, cap: int) -> bytes:
    """The whole body (at most ``cap`` bytes), read within ``BODY_TIMEOUT``.

    For the small JSON and form bodies of the API and the console. Whatever a
    client can do to a body is a 4xx: too large (400, as these endpoints
    always said), too slow (408), not decodable under its
    ``Content-Encoding`` or a broken chunked encoding (400), hung up (499,
    which nobody reads).
    """
    body = bytearray()
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            while chunk := await request.content.read(cap + 1 - len(body)):
                body += chunk
                if len(body) > cap:
                    raise InputError(
                        f"body over {cap} bytes; send the few fields this "
                        "endpoint takes"
                    )
    except TimeoutError:
        raise RequestTimeoutError(
            f"the body did not arrive within {BODY_TIMEOUT:g} s"
        ) from None
    except ConnectionError:
        raise ClientGoneError(
            f"the client disconnected after {len(body)} bytes of its body"
        ) from None
    except (RequestPayloadError, HttpProcessingError, ValueError) as exc:
        raise InputError(
            f"the body could not be read ({_reason(exc)}); check Content-Encoding "
            "and Transfer-Encoding"
        ) from None
    return bytes(body)


def _reason(exc: BaseException) -> str:
    cause = exc.__cause__ if isinstance(exc, RequestPayloadError) else exc
    text = cause.message if isinstance(cause, HttpProcessingError) else str(cause)
    return " ".join(str(text).split())[:200] or type(exc).__name__


class NotOnCallError(Exception):
    """The PagerDuty on-call look-up failed (not: the person is not on call)."""


@dataclass(frozen=True)
class Approver:
    """Who pressed: the name recorded, and whether a credential proves it."""

    name: str
    verified: bool


def identify(auth: Authenticator, authorization: str | None) -> Approver:
    """Who an (already accepted) Authorization header says is asking.

    A personal approver token names its person (verified). Otherwise the name
    is what the basic-auth prompt was given, or ``api`` for a bearer token:
    shown and recorded, but proving nothing.
    """
    person = auth.person(authorization)
    if person:
        return Approver(person, verified=True)
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() == "basic":
        try:
            user = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, ValueError):
            return Approver("basic", verified=False)
        return Approver(user.partition(":")[0][:100] or "basic", verified=False)
    return Approver("api" if authorization else "local", verified=False)


@dataclass(frozen=True)
class Answer:
    """What the person is told, what happened, and the journal entry to watch.

    ``final`` is true when this call decided the approval.
    """

    text: str
    outcome: Outcome = "refused"
    entry: JournalEntry | None = None
    approval: Approval | None = None

    @property
    def final(self) -> bool:
        """Whether this call decided the approval."""
        return self.outcome == "decided"


class OnCall:
    """Who is on call now for a PagerDuty schedule (REST API)."""

    def __init__(
        self, client: httpx.AsyncClient, base_url: str, token: str | None
    ) -> None:
        self._client = client
        self._base = base_url.rstrip("/")
        self._token = token

    async def people(self, schedule: str, now: datetime) -> set[str]:
        """Lower-cased emails and names of the schedule's users on call at ``now``."""
        if not self._token:
            msg = "RECEIVER_PAGERDUTY_API_TOKEN is not set"
            raise NotOnCallError(msg)
        try:
            response = await self._client.get(
                f"{self._base}/schedules/{schedule}/users",
                params={
                    "since": iso(now),
                    "until": iso(now + timedelta(seconds=1)),
                },
                headers={
                    "Authorization": f"Token token={self._token}",
                    "Accept": "application/vnd.pagerduty+json;version=2",
                },
            )
        except httpx.HTTPError as exc:
            msg = f"{type(exc).__name__}"
            raise NotOnCallError(msg) from exc
        if response.status_code != 200:
            msg = f"HTTP {response.status_code}"
            raise NotOnCallError(msg)
        try:
            users = response.json().get("users", [])
        except (ValueError, AttributeError) as exc:
            msg = "the answer was not JSON with users"
            raise NotOnCallError(msg) from exc
        found: set[str] = set()
        for user in users if isinstance(users, list) else []:
            if isinstance(user, dict):
                found |= {
                    str(user[k]).lower() for k in ("email", "name") if user.get(k)
                }
        return found


async def admitted(  # noqa: PLR0911 (one answer per reason)
    approvers: Approvers | None,
    person: str,
    *,
    on_call: Callable[[str], Awaitable[set[str]]],
    playbook: str,
) -> str:
    """``""`` when ``person`` may approve for ``playbook``, else why not."""
    if approvers is None:
        return (
            f"playbook {playbook} names no approvers, so it cannot be approved "
            "from Slack; add approvers to the playbook or use the API"
        )
    if person in approvers.people:
        return ""
    if any(person in members for members in approvers.groups.values()):
        return ""
    schedule = approvers.pagerduty_schedule
    if schedule:
        name = approvers.schedule_name or schedule
        try:
            now_on_call = await on_call(schedule)
        except NotOnCallError as exc:
            return f"could not ask PagerDuty who is on call for {name}: {exc}"
        if person.lower() in now_on_call:
            return ""
        return f"you are not on call for {name}"
    return f"you are not an approver for playbook {playbook}"


class ApprovalDesk:
    """Decides approvals under the playbooks' policy, for every channel."""

    def __init__(
        self,
        *,
        store: Store,
        processor: Processor,
        clock: Callable[[], datetime],
        on_call: OnCall | None = None,
        on_journaled: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._processor = processor
        self._clock = clock
        self._on_call = on_call
        # Wakes a worker process (its doorbell) after an approval journals.
        self._on_journaled = on_journaled

    async def get(self, approval_id: str) -> Approval | None:
        """The approval as stored now."""
        return await self._store.get_approval(approval_id)

    def policy(self, playbook: str) -> Approvers | None:
        """The ``approvers`` of ``playbook`` in the loaded rules, if any."""
        found = self._processor.rulebook.playbooks.get(playbook)
        return found.approvers if found is not None else None

    async def _people_on_call(self, schedule: str, now: datetime) -> set[str]:
        if self._on_call is None:
            msg = "no PagerDuty API client is configured"
            raise NotOnCallError(msg)
        return await self._on_call.people(schedule, now)

    async def decide(  # noqa: PLR0911 (one answer per reason)
        self,
        approval_id: str,
        action: Literal["approve", "reject"],
        who: Approver,
        *,
        via: Via,
    ) -> Answer:
        """Apply one press or request by ``who``; the answer says what happened."""
        approval = await self._store.get_approval(approval_id)
        if approval is None:
            return Answer(f"there is no approval {approval_id[:80]!r}", "missing")
        if approval.status != "pending":
            by = f" by {approval.decided_by}" if approval.decided_by else ""
            return Answer(
                f"approval {approval.id} is already {approval.status}{by}",
                "conflict",
                approval=approval,
            )
        now = self._clock()
        if now >= approval.expires_at:
            return await self._expire(approval, now)
        playbook = str(approval.request.get("playbook", ""))
        policy = self.policy(playbook)
        two = bool(approval.request.get("destructive")) or bool(
            policy and policy.two_person
        )
        refusal = await self._refusal(policy, who, playbook, now, via=via, two=two)
        if refusal:
            log.info(
                "approval_refused",
                approval=approval.id,
                by=who.name,
                via=via,
                why=refusal,
            )
            return Answer(refusal)
        # Asking PagerDuty who is on call takes a round trip: the approval may
        # have expired meanwhile, and is then never decided after its time.
        now = self._clock()
        if now >= approval.expires_at:
            return await self._expire(approval, now)
        if action == "reject":
            return await self._final(approval, "rejected", who.name, via)
        if not two:
            return await self._final(approval, "approved", who.name, via)
        mark = f"approval.{approval.id}"
        if await self._store.seen(f"{mark}.by.{who.name}", APPROVER_MARK_FOR, now):
            return Answer(
                f"you already approved {approval.id}; this step needs a second, "
                "different approver"
            )
        if not await self._store.seen(f"{mark}.first", APPROVER_MARK_FOR, now):
            await self._audit(approval, "first_approval", who.name, via, now)
            return Answer(
                f"first approval of {approval.id} by {who.name} recorded; this step "
                "needs a second, different approver",
                "recorded",
                approval=approval,
            )
        first = await self._first_approver(approval)
        return await self._final(
            approval, "approved", f"{first} and {who.name}" if first else who.name, via
        )

    async def _expire(self, approval: Approval, now: datetime) -> Answer:
        await self._store.decide_approval(approval.id, "expired", "receiver", now)
        return Answer(
            f"approval {approval.id} expired at {iso(approval.expires_at)}",
            "expired",
        )

    async def _refusal(
        self,
        policy: Approvers | None,
        who: Approver,
        playbook: str,
        now: datetime,
        *,
        via: Via,
        two: bool,
    ) -> str:
        """Why ``who`` may not decide here, or ``""``."""
        if policy is None and via != "slack" and not two:
            return ""  # no policy: the approve scope is the policy
        if not who.verified:
            why = (
                "this step needs two different approvers"
                if two
                else f"playbook {playbook} names its approvers"
            )
            return (
                f"{why}, so the receiver must know who you are: sign in with your "
                "own approver token (RECEIVER_APPROVER_TOKENS); a shared approve "
                "token does not say who holds it"
            )
        if policy is None and via != "slack":
            return ""
        return await admitted(
            policy,
            who.name,
            on_call=lambda schedule: self._people_on_call(schedule, now),
            playbook=playbook,
        )

    async def _final(
        self,
        approval: Approval,
        status: Literal["approved", "rejected"],
        by: str,
        via: Via,
    ) -> Answer:
        """Decide once; approved, journal the payload again."""
        now = self._clock()
        decided = await self._store.decide_approval(approval.id, status, by, now)
        if decided is None:
            current = await self._store.get_approval(approval.id)
            state = current.status if current else "gone"
            who = f" by {current.decided_by}" if current and current.decided_by else ""
            return Answer(
                f"approval {approval.id} is already {state}{who}",
                "conflict",
                approval=current,
            )
        log.info("approval_decided", approval=approval.id, status=status, by=by)
        await self._audit(approval, status, by, via, now)
        what = f"{approval.request.get('step', '')} on {approval.request.get('target')}"
        if status != "approved":
            return Answer(f"{what}: rejected by {by}", "decided", approval=decided)
        entry = await self._rejournal(decided, now)
        return Answer(
            f"{what}: approved by {by}; running it now",
            "decided",
            entry=entry,
            approval=decided,
        )

    async def _rejournal(
        self, approval: Approval, now: datetime
    ) -> JournalEntry | None:
        """Journal the payload again: the approved step passes its guard once."""
        original = await self._store.payload(
            str(approval.request.get("payload_id", ""))
        )
        if original is None:
            return None
        entry = JournalEntry(
            id=new_id(),
            source=original.source,
            received_at=now,
            body=original.body,
            headers={"x-receiver-approval": approval.id},
        )
        # No alert states: they were recorded when the payload first came, and
        # what was recorded since (a resolve) stands. An Events v2 trigger has
        # no start of its own: recorded again after its resolve, it would read
        # as a new occurrence, firing from now.
        await self._store.append(entry, [])
        if self._on_journaled is not None:
            self._on_journaled()
        return entry

    async def _audit(
        self, approval: Approval, event: str, by: str, via: Via, now: datetime
    ) -> None:
        # One first approval ever per approval (the ``seen`` mark), so its
        # record has a name the second approver's press can read back.
        suffix = "first" if event == "first_approval" else new_id()
        await self._store.record(
            [
                {
                    "payload_id": f"approval.{approval.id}.{suffix}",
                    "fingerprint": str(approval.request.get("fingerprint", "")),
                    "decided_at": iso(now),
                    "event": event,
                    "approval": approval.id,
                    "by": by,
                    "via": via,
                    "matches": [],
                    "notes": [f"approval {approval.id}: {event} by {by} ({via})"],
                }
            ]
        )

    async def _first_approver(self, approval: Approval) -> str:
        query = DecisionQuery(payload_id=f"approval.{approval.id}.first")
        for record in await self._store.decisions(query):
            return str(record.get("by", ""))
        return ""


class ApprovalAPI:
    """``POST /api/v1/approvals/{id}``: the desk behind the approve scope."""

    def __init__(self, desk: ApprovalDesk, auth: Authenticator) -> None:
        self._desk = desk
        self._auth = auth

    async def decide(self, request: web.Request) -> web.Response:
        """Approve or reject as the credential's identity (never a field)."""
        header = request.headers.get("Authorization")
        self._auth.require(header, "approve")
        if request.content_type != "application/json":
            raise UnsupportedMediaError(
                "Content-Type must be application/json, "
                f"got {request.content_type[:60] or 'none'!r}"
            )
        body = await read_body(request, MAX_BODY)
        data = parse_json(body) if body.strip() else None
        decision = data.get("decision") if isinstance(data, dict) else None
        if decision not in ("approve", "reject"):
            raise InputError('send {"decision": "approve"} or {"decision": "reject"}')
        if isinstance(data, dict) and "by" in data:
            raise InputError(
                '"by" is not accepted: the approver is who the credential says '
                "(a personal token from RECEIVER_APPROVER_TOKENS names its person)",
                errors=[{"pointer": "/by", "detail": "remove it"}],
            )
        approval_id = request.match_info["id"]
        who = identify(self._auth, header)
        answer = await self._desk.decide(approval_id, decision, who, via="api")
        if answer.outcome == "missing":
            raise NotFoundError(f"{answer.text}; GET /api/v1/approvals lists them")
        if answer.outcome == "refused":
            raise ForbiddenError(answer.text)
        if answer.outcome in ("conflict", "expired"):
            raise web.HTTPConflict(text=answer.text)
        approval = answer.approval or await self._desk.get(approval_id)
        body_out = approval.to_json() if approval is not None else {}
        body_out["message"] = answer.text
        return web.json_response(
            body_out, status=200 if answer.outcome == "decided" else 202
        )

"""``POST /slack/interactions``: Approve / Reject buttons pressed in Slack.

The Slack sink's message for a step awaiting approval carries the buttons
(``render.approval_actions``). When one is pressed, Slack posts here:

1. The request is Slack's: ``X-Slack-Signature`` is ``v0=`` + HMAC-SHA256 of
   ``v0:{X-Slack-Request-Timestamp}:{raw body}`` under the signing secret
   (constant-time compare), the timestamp is within five minutes, and the same
   signed request is never handled twice (the store's ``seen``).
2. The Slack user maps to an approver (``slack_approvers``), and the playbook's
   ``approvers`` policy admits that person: named, in a group, or on call now for
   a PagerDuty schedule (asked through the REST API at the press). Destructive
   steps (or ``two_person`` playbooks) need two different approvers.
3. The approval is decided once (the store moves it out of ``pending`` once) and
   the payload is journalled again, so the worker runs the approved step once.
4. The original message is updated through ``response_url``: who approved and,
   once the worker decided, what ran and its outcome. A refusal says why.

Built in ``create_app``; ``attach`` registers the route and the cleanup.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import parse_qs

import httpx
import structlog
from aiohttp import web

from receiver.engine.worker import Processor
from receiver.errors import AuthError, ForbiddenError, InputError
from receiver.model import iso
from receiver.rulebook.schema import Approvers
from receiver.settings import PagerDutySettings, SlackSettings
from receiver.store.base import (
    AlertState,
    Approval,
    DecisionQuery,
    JournalEntry,
    Store,
    new_id,
)

log = structlog.get_logger("receiver.slack")

MAX_BODY = 64 * 1024  # Slack's interaction payloads are a few kilobytes
MAX_SKEW = timedelta(minutes=5)
SEEN_FOR = timedelta(minutes=15)  # longer than the skew Slack may replay within
APPROVER_MARK_FOR = timedelta(days=7)  # longer than any approval lives


class NotOnCallError(Exception):
    """The PagerDuty on-call look-up failed (not: the person is not on call)."""


@dataclass(frozen=True)
class Press:
    """One button press, parsed."""

    action: str
    approval_id: str
    user_id: str
    user_name: str
    response_url: str
    message: Mapping[str, Any]


def verify_signature(
    secret: str, *, timestamp: str, signature: str, body: bytes, now: datetime
) -> None:
    """Raise ``AuthError`` unless Slack signed this body recently."""
    if not timestamp or not signature:
        raise AuthError(
            "missing X-Slack-Request-Timestamp or X-Slack-Signature; "
            "only Slack's signed interaction requests are accepted"
        )
    try:
        sent = int(timestamp)
    except ValueError:
        raise AuthError("X-Slack-Request-Timestamp must be Unix seconds") from None
    if abs(now.timestamp() - sent) > MAX_SKEW.total_seconds():
        raise AuthError(
            "stale Slack request: its timestamp is more than 5 minutes from now "
            "(check the clock of this host)"
        )
    base = b"v0:" + timestamp.encode() + b":" + body
    expected = "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        raise AuthError(
            "bad Slack signature: check RECEIVER_SLACK_SIGNING_SECRET against the "
            "Slack app's signing secret"
        )


def parse_press(body: bytes) -> Press:
    """The button press in a form-encoded ``payload=<json>`` body."""
    try:
        form = parse_qs(body.decode(), strict_parsing=True)
        payload = json.loads(form["payload"][0])
    except (UnicodeDecodeError, ValueError, KeyError) as exc:
        raise InputError(
            "send Slack's form-encoded interaction: payload=<JSON>"
        ) from exc
    if not isinstance(payload, dict) or payload.get("type") != "block_actions":
        raise InputError('only "block_actions" interactions are handled')
    actions = payload.get("actions")
    user = payload.get("user")
    if not isinstance(actions, list) or not actions or not isinstance(user, dict):
        raise InputError("a block_actions payload needs actions and a user")
    action = actions[0]
    if not isinstance(action, dict) or action.get("action_id") not in (
        "approve",
        "reject",
    ):
        raise InputError('the action must be the "approve" or "reject" button')
    message = payload.get("message")
    return Press(
        action=str(action["action_id"]),
        approval_id=str(action.get("value", ""))[:100],
        user_id=str(user.get("id", ""))[:100],
        user_name=str(user.get("username") or user.get("name") or "")[:100],
        response_url=str(payload.get("response_url", "")),
        message=message if isinstance(message, dict) else {},
    )


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


@dataclass(frozen=True)
class Answer:
    """What the person is told; whether the approval was decided; what to watch."""

    text: str
    final: bool = False
    entry: JournalEntry | None = None


async def apply_decision(
    store: Store,
    processor: Processor,
    approval: Approval,
    status: Literal["approved", "rejected"],
    *,
    by: str,
    now: datetime,
) -> Answer:
    """Decide a pending approval once; approved, journal its payload again.

    The answer says what to tell the person, whether this call decided it, and
    the new journal entry (if approved).
    """
    decided = await store.decide_approval(approval.id, status, by, now)
    if decided is None:
        current = await store.get_approval(approval.id)
        state = current.status if current else "gone"
        who = f" by {current.decided_by}" if current and current.decided_by else ""
        return Answer(f"approval {approval.id} is already {state}{who}")
    log.info("approval_decided", approval=approval.id, status=status, by=by)
    what = f"{approval.request.get('step', '')} on {approval.request.get('target')}"
    if status != "approved":
        return Answer(f"{what}: rejected by {by}", final=True)
    entry = await _rejournal(store, processor, decided, now)
    return Answer(f"{what}: approved by {by}; running it now", final=True, entry=entry)


async def _rejournal(
    store: Store, processor: Processor, approval: Approval, now: datetime
) -> JournalEntry | None:
    """Journal the payload again: the approved step passes its guard once."""
    original = await store.payload(str(approval.request.get("payload_id", "")))
    if original is None:
        return None
    alerts = processor.alerts(original.source, original.body, now)
    entry = JournalEntry(
        id=new_id(),
        source=original.source,
        received_at=now,
        body=original.body,
        headers={"x-receiver-approval": approval.id},
    )
    states = []
    for alert in alerts:
        if not alert.actionable:
            continue
        start = alert.starts_at
        if start is None:
            # Events v2 carry no start: a trigger starts now unless firing.
            known = await store.alert_state(alert.fingerprint)
            start = now
            if known is not None and (
                known.status == "firing" or alert.status == "resolved"
            ):
                start = known.starts_at or now
        states.append(AlertState(alert.fingerprint, alert.status, start, now))
    await store.append(entry, states)
    return entry


class SlackInteractions:
    """The ``/slack/interactions`` handler and its background message updates."""

    def __init__(
        self,
        *,
        slack: SlackSettings,
        pagerduty: PagerDutySettings,
        store: Store,
        processor: Processor,
        clock: Callable[[], datetime],
        client: httpx.AsyncClient | None = None,
        outcome_wait: timedelta = timedelta(minutes=2),
        poll_every: float = 0.2,
    ) -> None:
        secret = slack.signing_secret
        self._secret = secret.get_secret_value() if secret else ""
        self._users = dict(slack.approvers)
        self._store = store
        self._processor = processor
        self._clock = clock
        self._client = client or httpx.AsyncClient(
            timeout=pagerduty.oncall_timeout.total_seconds()
        )
        token = pagerduty.api_token
        self._oncall = OnCall(
            self._client,
            pagerduty.api_url,
            token.get_secret_value() if token else None,
        )
        self._outcome_wait = outcome_wait
        self._poll_every = poll_every
        self._tasks: set[asyncio.Task[None]] = set()

    def attach(self, app: web.Application) -> None:
        """Register the route, and finish message updates at shutdown."""
        app.router.add_post("/slack/interactions", self.interactions)
        app.on_cleanup.append(self._cleanup)

    async def _cleanup(self, _app: web.Application) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._client.aclose()

    async def idle(self) -> None:
        """Wait for every message update started so far (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # ---------------------------------------------------------------- edge

    async def interactions(self, request: web.Request) -> web.Response:
        """POST /slack/interactions: verify, authorise, decide, update the message."""
        if not self._secret:
            raise ForbiddenError(
                "Slack interactions are not enabled: set RECEIVER_SLACK_SIGNING_SECRET"
            )
        body = await request.content.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            raise InputError(f"body over {MAX_BODY} bytes; not a Slack interaction")
        signature = request.headers.get("X-Slack-Signature", "")
        verify_signature(
            self._secret,
            timestamp=request.headers.get("X-Slack-Request-Timestamp", ""),
            signature=signature,
            body=body,
            now=self._clock(),
        )
        if await self._store.seen(f"slack.interaction.{signature}", SEEN_FOR):
            log.warning("slack_interaction_replayed")
            raise web.HTTPConflict(
                text="this signed Slack request was already handled; "
                "a replay is never applied twice"
            )
        press = parse_press(body)
        answer = await self._decide(press)
        log.info(
            "slack_interaction_handled",
            approval=press.approval_id,
            action=press.action,
            slack_user=press.user_id,
            decided=answer.final,
        )
        self._update(press, answer)
        return web.json_response(
            {
                "response_type": "ephemeral",
                "replace_original": False,
                "text": answer.text,
                "decided": answer.final,
            }
        )

    # ------------------------------------------------------------- decision

    async def _decide(self, press: Press) -> Answer:  # noqa: PLR0911 (one per reason)
        """The answer for the person, and the re-journalled entry if one was."""
        person = self._users.get(press.user_id)
        if not person:
            return Answer(
                f"your Slack user {press.user_id} is not mapped to an approver; "
                "ask an admin to add it to RECEIVER_SLACK_APPROVERS"
            )
        approval = await self._store.get_approval(press.approval_id)
        if approval is None:
            return Answer(f"there is no approval {press.approval_id!r}")
        if approval.status != "pending":
            by = f" by {approval.decided_by}" if approval.decided_by else ""
            return Answer(f"approval {approval.id} is already {approval.status}{by}")
        now = self._clock()
        if now >= approval.expires_at:
            await self._store.decide_approval(approval.id, "expired", "receiver", now)
            return Answer(
                f"approval {approval.id} expired at {iso(approval.expires_at)}"
            )
        playbook = str(approval.request.get("playbook", ""))
        policy = self._policy(playbook)
        refusal = await admitted(
            policy,
            person,
            on_call=lambda schedule: self._oncall.people(schedule, now),
            playbook=playbook,
        )
        if refusal:
            log.info(
                "slack_approval_refused", approval=approval.id, by=person, why=refusal
            )
            return Answer(refusal)
        if press.action == "reject":
            return await self._final(approval, "rejected", person)
        two = bool(approval.request.get("destructive")) or bool(
            policy and policy.two_person
        )
        if not two:
            return await self._final(approval, "approved", person)
        mark = f"slack.approval.{approval.id}"
        if await self._store.seen(f"{mark}.by.{person}", APPROVER_MARK_FOR):
            return Answer(
                f"you already approved {approval.id}; this step needs a second, "
                "different approver"
            )
        if not await self._store.seen(f"{mark}.first", APPROVER_MARK_FOR):
            await self._audit(approval, "first_approval", person, now)
            return Answer(
                f"first approval of {approval.id} by {person} recorded; this step "
                "needs a second, different approver"
            )
        first = await self._first_approver(approval)
        return await self._final(
            approval, "approved", f"{first} and {person}" if first else person
        )

    def _policy(self, playbook: str) -> Approvers | None:
        found = self._processor.rulebook.playbooks.get(playbook)
        return found.approvers if found is not None else None

    async def _final(self, approval: Approval, status: Any, by: str) -> Answer:
        answer = await apply_decision(
            self._store, self._processor, approval, status, by=by, now=self._clock()
        )
        if answer.final:
            await self._audit(approval, status, by, self._clock())
        return answer

    async def _audit(
        self, approval: Approval, event: str, by: str, now: datetime
    ) -> None:
        # One first approval ever per approval (the ``seen`` mark), so its
        # record has a name the second approver's press can read back.
        suffix = "first" if event == "first_approval" else new_id()
        await self._store.record(
            [
                {
                    "payload_id": f"slack.approval.{approval.id}.{suffix}",
                    "fingerprint": str(approval.request.get("fingerprint", "")),
                    "decided_at": iso(now),
                    "event": event,
                    "approval": approval.id,
                    "by": by,
                    "matches": [],
                    "notes": [f"approval {approval.id}: {event} by {by} (Slack)"],
                }
            ]
        )

    async def _first_approver(self, approval: Approval) -> str:
        query = DecisionQuery(payload_id=f"slack.approval.{approval.id}.first")
        for record in await self._store.decisions(query):
            return str(record.get("by", ""))
        return ""

    # ------------------------------------------------------------ the message

    def _update(self, press: Press, answer: Answer) -> None:
        if not press.response_url.startswith(("https://", "http://")):
            return
        task = asyncio.create_task(self._post_updates(press, answer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post_updates(self, press: Press, answer: Answer) -> None:
        if not answer.final:
            await self._post(
                press.response_url,
                {
                    "response_type": "ephemeral",
                    "replace_original": False,
                    "text": answer.text,
                },
            )
            return
        await self._post(press.response_url, self._replaced(press, answer.text))
        if answer.entry is None:
            return
        outcome = await self._outcome(press.approval_id, answer.entry)
        who = answer.text.split(";", 1)[0]
        await self._post(press.response_url, self._replaced(press, f"{who}; {outcome}"))

    def _replaced(self, press: Press, text: str) -> dict[str, Any]:
        """The original message with this approval's buttons replaced by ``text``."""
        blocks = [
            b
            for b in press.message.get("blocks", [])
            if isinstance(b, dict)
            and b.get("block_id") != f"approval:{press.approval_id}"
        ]
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": text[:2900]}}
        )
        return {
            "replace_original": True,
            "text": str(press.message.get("text", text))[:3000],
            "blocks": blocks[:50],
        }

    async def _outcome(self, approval_id: str, entry: JournalEntry) -> str:
        """What the worker decided for the approved step, once it has."""
        approval = await self._store.get_approval(approval_id)
        request = approval.request if approval else {}
        waited = 0.0
        while waited <= self._outcome_wait.total_seconds():
            records = await self._store.decisions(
                DecisionQuery(payload_id=entry.id, limit=50)
            )
            for record in records:
                found = _step_outcome(record, request)
                if found:
                    return found
            await asyncio.sleep(self._poll_every)
            waited += self._poll_every
        return (
            f"outcome not decided yet; see GET /api/v1/decisions?payload_id={entry.id}"
        )

    async def _post(self, url: str, body: Mapping[str, Any]) -> None:
        try:
            response = await self._client.post(url, json=body)
        except httpx.HTTPError as exc:
            log.warning("slack_response_failed", error=type(exc).__name__)
            return
        if response.status_code != 200:
            log.warning("slack_response_failed", status=response.status_code)


def _step_outcome(record: Mapping[str, Any], request: Mapping[str, Any]) -> str:
    for match in record.get("matches", []):
        if match.get("rule") != request.get("rule"):
            continue
        for step in match.get("steps", []):
            if step.get("type") == request.get("step") and step.get(
                "target"
            ) == request.get("target"):
                return f"ran: {step.get('decision')}: {step.get('reason', '')}"[:1500]
    return ""


def slack_paths() -> dict[str, Any]:
    """The OpenAPI path of this module's route."""
    problem = {
        "description": "Rejected; the body says what to fix.",
        "content": {
            "application/problem+json": {
                "schema": {"$ref": "#/components/schemas/Problem"}
            }
        },
    }
    return {
        "/slack/interactions": {
            "post": {
                "summary": "Approve / Reject buttons pressed in Slack (signed by "
                "Slack: X-Slack-Signature, X-Slack-Request-Timestamp). Answers 200 "
                "with the text shown to the person, also when refused.",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/x-www-form-urlencoded": {
                            "schema": {
                                "type": "object",
                                "properties": {"payload": {"type": "string"}},
                                "required": ["payload"],
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "Handled; the text says what happened.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "400": problem,
                    "401": problem,
                    "403": problem,
                    "409": problem,
                },
            }
        }
    }

"""The incidents API: list, read, report, and what people add to an incident.

``GET /api/v1/incidents`` (filters ``state``, ``severity``, ``since``; ``limit``
and ``cursor`` for pages), ``GET /api/v1/incidents/{id}``,
``GET /api/v1/incidents/{id}/report`` (``text/markdown``), and ``POST`` on
``.../timeline`` (a comment), ``.../acknowledge``, ``.../mitigate``,
``.../status`` (a published status update: restarts the update cadence) and
``.../resolve`` (a person resolves it: the way to close an incident that lost
track of an alert storm and so cannot resolve by itself). Every
call needs the API credentials; what people add is recorded under the identity
the credential proves (a personal approver token names its person), never a
name the body gives: a ``"by"`` field is refused. Registered by ``register``,
called from ``create_app``.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from receiver.errors import InputError, UnsupportedMediaError
from receiver.incidents.model import State
from receiver.incidents.service import ConflictError, IncidentService, NotFoundError
from receiver.model import Severity
from receiver.sources.wire import to_utc
from receiver.store.incidents_base import IncidentQuery
from receiver.web.approvals import identify, read_body
from receiver.web.auth import Authenticator
from receiver.web.problems import known_params, problem
from receiver.web.routing import Routes

log = structlog.get_logger("receiver.web")

if TYPE_CHECKING:
    from receiver.model import JSONObject, JSONValue
    from receiver.web.openapi_schemas import Operations

MAX_BODY = 16 * 1024
# The longest "text" a person may add (the console's forms take as much).
MAX_TEXT = 4000
# A cursor is a sequence number; past this many digits it was never issued.
_CURSOR_DIGITS = 18


class Note(BaseModel):
    """A body for the POST endpoints: what (optional for acknowledge).

    Who is the credential's identity, never a field.
    """

    model_config = ConfigDict(extra="forbid")
    text: str = Field(default="", max_length=MAX_TEXT)


class IncidentHandlers:
    """Handlers over the incident service."""

    def __init__(self, service: IncidentService, auth: Authenticator) -> None:
        self._service = service
        self._auth = auth

    async def _note(self, request: web.Request, *, text_required: bool) -> Note:
        ctype = request.content_type
        if request.can_read_body and ctype != "application/json":
            raise UnsupportedMediaError(
                f"Content-Type must be application/json, got {ctype or 'none'!r}"
            )
        raw = await read_body(request, MAX_BODY) if request.can_read_body else b"{}"
        try:
            data: object = json.loads(raw or b"{}")
        except ValueError as exc:
            raise InputError(f'send {{"text": "<what>"}}: not JSON: {exc}') from exc
        if isinstance(data, dict) and "by" in data:
            raise InputError(
                '"by" is not accepted: the actor is who the credential says (a '
                "personal token from RECEIVER_APPROVER_TOKENS names its person)",
                errors=[{"pointer": "/by", "detail": "remove it"}],
            )
        try:
            note = Note.model_validate(data)
        except ValidationError as exc:
            detail = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
                for e in exc.errors(include_url=False)
            )
            raise InputError(f'send {{"text": "<what>"}}: {detail}') from exc
        if text_required and not note.text.strip():
            raise InputError('"text" is required: say what to add to the timeline')
        return note

    @staticmethod
    def _missing(incident_id: str) -> web.Response:
        return problem(
            404,
            f"no incident {incident_id!r}; GET /api/v1/incidents lists them",
            slug="incident-not-found",
        )

    async def list(self, request: web.Request) -> web.Response:
        """GET /api/v1/incidents."""
        self._auth.require(request.headers.get("Authorization"), "read")
        known_params(request, "state", "severity", "since", "limit", "cursor")
        q = request.query
        state = q.get("state")
        severity = q.get("severity")
        if state is not None and state not in {s.value for s in State}:
            raise InputError(
                f"state must be one of {', '.join(s.value for s in State)}"
            )
        if severity is not None and severity not in {s.value for s in Severity}:
            raise InputError("severity must be one of P0, P1, P2, P3")
        try:
            limit = int(q.get("limit", "50"))
            cursor = _cursor(q["cursor"]) if "cursor" in q else None
            # Aware UTC between 1970 and 2200 (a time without an offset is UTC),
            # as the stores compare it: never an overflow past year 9999.
            since = to_utc(datetime.fromisoformat(q["since"])) if "since" in q else None
        except ValueError as exc:
            raise InputError(
                f"bad query parameter: {exc}; limit and cursor are integers, "
                "since an ISO 8601 time"
            ) from exc
        if since is not None and since.year < 1970:
            raise InputError("since must be an ISO 8601 time between 1970 and 2200")
        if not 1 <= limit <= 500:
            raise InputError("limit must be between 1 and 500")
        incidents, next_cursor = await self._service.page(
            IncidentQuery(state, severity, since, limit, cursor)
        )
        body: JSONObject = {
            "incidents": [
                {
                    k: v
                    for k, v in i.to_json().items()
                    if k not in ("timeline", "ledger", "evidence", "unlisted")
                }
                | {"unlisted_count": len(i.unlisted)}
                for i in incidents
            ],
            "count": len(incidents),
            "next_cursor": str(next_cursor) if next_cursor is not None else None,
        }
        return web.json_response(body)

    async def get(self, request: web.Request) -> web.Response:
        """GET /api/v1/incidents/{id}."""
        self._auth.require(request.headers.get("Authorization"), "read")
        incident_id = request.match_info["id"]
        incident = await self._service.get(incident_id)
        if incident is None:
            return self._missing(incident_id)
        body = incident.to_json()
        evidence: list[JSONValue] = []
        for e in incident.evidence:
            item = e.to_json()
            del item["content"]
            item["content_chars"] = len(e.content)
            evidence.append(item)
        body["evidence"] = evidence
        return web.json_response(body)

    async def evidence(self, request: web.Request) -> web.Response:
        """GET /api/v1/incidents/{id}/evidence: what was kept, with its hashes."""
        self._auth.require(request.headers.get("Authorization"), "read")
        incident_id = request.match_info["id"]
        incident = await self._service.get(incident_id)
        if incident is None:
            return self._missing(incident_id)
        return web.json_response(
            {
                "incident_id": incident.id,
                "evidence": [e.to_json() for e in incident.evidence],
            }
        )

    async def report(self, request: web.Request) -> web.Response:
        """GET /api/v1/incidents/{id}/report: the Markdown report."""
        self._auth.require(request.headers.get("Authorization"), "read")
        incident_id = request.match_info["id"]
        try:
            text = await self._service.report(incident_id)
        except NotFoundError:
            return self._missing(incident_id)
        return web.Response(text=text, content_type="text/markdown", charset="utf-8")

    async def _act(self, request: web.Request, action: str) -> web.Response:
        header = request.headers.get("Authorization")
        self._auth.require(header, "approve")
        incident_id = request.match_info["id"]
        note = await self._note(request, text_required=action in ("comment", "status"))
        by = identify(self._auth, header).name
        service = self._service
        # acknowledge, mitigate, resolve: whether it was so before this call.
        already: tuple[str, bool] | None = None
        try:
            if action == "acknowledge":
                incident, before = await service.acknowledge_again(incident_id, by=by)
                already = ("already_acknowledged", before)
            elif action == "mitigate":
                incident, mitigated = await service.mitigate_first(
                    incident_id, by=by, text=note.text
                )
                already = ("already_mitigated", not mitigated)
            elif action == "status":
                incident = await service.status_update(
                    incident_id, by=by, text=note.text
                )
            elif action == "resolve":
                incident, resolved = await service.resolve_open(
                    incident_id, by=by, text=note.text
                )
                already = ("already_resolved", not resolved)
            else:
                incident = await service.comment(incident_id, by=by, text=note.text)
        except NotFoundError:
            return self._missing(incident_id)
        except ConflictError as exc:
            return problem(409, f"{exc}; try again", slug="incident-conflict")
        body = incident.to_json()
        if already is not None:
            # Still a 200: a client retrying its call must not see an error.
            body[already[0]] = already[1]
        # Who did what through the API, as the console's actions are logged.
        log.info(
            _DONE[action],
            incident=incident_id,
            by=by,
            **({"changed": not already[1]} if already is not None else {}),
        )
        return web.json_response(body)

    async def comment(self, request: web.Request) -> web.Response:
        """POST /api/v1/incidents/{id}/timeline: a person's comment."""
        return await self._act(request, "comment")

    async def acknowledge(self, request: web.Request) -> web.Response:
        """POST /api/v1/incidents/{id}/acknowledge: stops the acknowledge clock.

        ``"already_acknowledged": true``: it was acknowledged or resolved
        before (this call only added a line to the timeline).
        """
        return await self._act(request, "acknowledge")

    async def mitigate(self, request: web.Request) -> web.Response:
        """POST /api/v1/incidents/{id}/mitigate: stops the mitigate clock.

        ``"already_mitigated": true``: it was mitigated or resolved before,
        and nothing changed.
        """
        return await self._act(request, "mitigate")

    async def status(self, request: web.Request) -> web.Response:
        """POST /api/v1/incidents/{id}/status: a published update; cadence restarts."""
        return await self._act(request, "status")

    async def resolve(self, request: web.Request) -> web.Response:
        """POST /api/v1/incidents/{id}/resolve: a person resolves it.

        Idempotent: resolved already, it answers 200 with the incident as it
        was and ``"already_resolved": true`` (nothing changed).
        """
        return await self._act(request, "resolve")


# The log event of each action.
_DONE = {
    "acknowledge": "api_incident_acknowledged",
    "mitigate": "api_incident_mitigated",
    "status": "api_incident_status_published",
    "resolve": "api_incident_resolved",
    "comment": "api_incident_commented",
}


def _cursor(text: str) -> int:
    """A cursor as issued (``next_cursor``: a non-negative integer), else ValueError."""
    if not (text.isascii() and text.isdigit()) or len(text) > _CURSOR_DIGITS:
        msg = f"cursor {text[:40]!r} is not a next_cursor this receiver issued"
        raise ValueError(msg)
    return int(text)


def register(app: web.Application, handlers: IncidentHandlers) -> None:
    """Add the incident routes."""
    r = Routes(app.router)
    r.add_get("/api/v1/incidents", handlers.list)
    r.add_get("/api/v1/incidents/{id}", handlers.get)
    r.add_get("/api/v1/incidents/{id}/report", handlers.report)
    r.add_get("/api/v1/incidents/{id}/evidence", handlers.evidence)
    r.add_post("/api/v1/incidents/{id}/timeline", handlers.comment)
    r.add_post("/api/v1/incidents/{id}/acknowledge", handlers.acknowledge)
    r.add_post("/api/v1/incidents/{id}/mitigate", handlers.mitigate)
    r.add_post("/api/v1/incidents/{id}/status", handlers.status)
    r.add_post("/api/v1/incidents/{id}/resolve", handlers.resolve)


def incident_paths() -> Operations:
    """The OpenAPI paths of the incident routes (merged into ``/openapi.json``)."""
    problem_ref: JSONObject = {
        "description": "Rejected; the body says what to fix.",
        "content": {
            "application/problem+json": {
                "schema": {"$ref": "#/components/schemas/Problem"}
            }
        },
    }
    errors: JSONObject = {str(c): problem_ref for c in (400, 401, 403, 404)}
    ok: JSONObject = {
        "description": "OK",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
    security: list[dict[str, list[str]]] = [{"bearer": []}, {"basic": []}]
    path_id: list[JSONValue] = [
        {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    ]
    body: JSONObject = {
        "required": False,
        "content": {"application/json": {"schema": Note.model_json_schema()}},
    }

    def post(summary: str) -> dict[str, dict[str, JSONValue]]:
        return {
            "post": {
                "summary": summary,
                "security": security,
                "parameters": path_id,
                "requestBody": body,
                "responses": {"200": ok, "409": problem_ref, **errors},
            }
        }

    query: list[JSONValue] = [
        {"name": name, "in": "query", "required": False, "schema": {"type": kind}}
        for name, kind in (
            ("state", "string"),
            ("severity", "string"),
            ("since", "string"),
            ("limit", "integer"),
            ("cursor", "string"),
        )
    ]
    return {
        "/api/v1/incidents": {
            "get": {
                "summary": "Incidents, newest first (filters: state, severity, "
                "since; cursor pagination)",
                "security": security,
                "parameters": query,
                "responses": {"200": ok, **errors},
            }
        },
        "/api/v1/incidents/{id}": {
            "get": {
                "summary": "One incident with its timeline and automation ledger",
                "security": security,
                "parameters": path_id,
                "responses": {"200": ok, **errors},
            }
        },
        "/api/v1/incidents/{id}/report": {
            "get": {
                "summary": "Incident Report and Post-Mortem (Markdown)",
                "security": security,
                "parameters": path_id,
                "responses": {
                    "200": {
                        "description": "text/markdown",
                        "content": {"text/markdown": {"schema": {"type": "string"}}},
                    },
                    **errors,
                },
            }
        },
        "/api/v1/incidents/{id}/evidence": {
            "get": {
                "summary": "Evidence kept (diagnostic results and their sha256)",
                "security": security,
                "parameters": path_id,
                "responses": {"200": ok, **errors},
            }
        },
        "/api/v1/incidents/{id}/timeline": post(
            'Add a comment: {"text"}, as the credential\'s identity'
        ),
        "/api/v1/incidents/{id}/acknowledge": post(
            'Acknowledge (stops the clock); "already_acknowledged": true if it was '
            "acknowledged or resolved (only a line is added)"
        ),
        "/api/v1/incidents/{id}/mitigate": post(
            'Mark mitigated (optional {"text"}); "already_mitigated": true if it '
            "was mitigated or resolved (nothing changed)"
        ),
        "/api/v1/incidents/{id}/status": post(
            "A status update was published (the update cadence restarts)"
        ),
        "/api/v1/incidents/{id}/resolve": post(
            'Resolve it (optional {"text"}: why), as the credential\'s identity; '
            '"already_resolved": true if it was (nothing changed)'
        ),
    }

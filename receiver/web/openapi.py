"""The OpenAPI 3.1 description served at ``/openapi.json``.

Request schemas come from the same pydantic models that validate the payloads,
so the document cannot drift from what the edge accepts; response schemas are
written here and checked against the running service by Schemathesis
(``tests/test_openapi_conformance.py``). Every operation has an ``operationId``
and lists every status it can answer, each rejection as problem+json.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from typing import TYPE_CHECKING

from receiver import __version__
from receiver.sources.alertmanager import AmWebhook
from receiver.sources.events_v2 import EnqueueRequest
from receiver.sources.pagerduty import Webhook
from receiver.web.admin import admin_paths
from receiver.web.change_events import ChangeEvent
from receiver.web.console import console_paths
from receiver.web.incidents import incident_paths
from receiver.web.openapi_schemas import (
    REF,
    STRING,
    Operations,
    obj,
    ref,
    response_schemas,
)
from receiver.web.slack import slack_paths

if TYPE_CHECKING:
    from receiver.model import JSONObject, JSONValue

MAX_LIMIT = 1000

_TITLES = {
    400: "Malformed request, schema error, or bad query parameter.",
    401: "Credentials missing or malformed.",
    403: "Credentials not accepted, or lacking the scope this operation needs.",
    404: "No such payload, approval or endpoint.",
    405: "Method not allowed; the Allow header lists the allowed ones.",
    408: "The request body did not arrive within the body timeout.",
    413: "Body over the cap, or an alert over a per-alert cap.",
    415: "Content-Type is not JSON.",
    417: "An Expect header other than 100-continue; send the request without it.",
    409: "Already decided (or expired); the detail says by whom.",
    422: "The rule files do not load; the current rules stay loaded.",
    429: "Too many unauthenticated bodies being read; retry after Retry-After.",
    503: "The journal cannot take the payload (or the service is shedding load); "
    "retry after Retry-After.",
}
_RETRY: JSONObject = {"Retry-After": {"schema": {"type": "string"}}}
_ALLOW: JSONObject = {"Allow": {"schema": {"type": "string"}, "required": True}}


def _problem(code: int) -> JSONObject:
    out: JSONObject = {
        "description": _TITLES[code],
        "content": {"application/problem+json": {"schema": ref("Problem")}},
    }
    if code in (429, 503):
        out["headers"] = _RETRY
    if code == 405:
        out["headers"] = _ALLOW
    return out


_EVENTS_ERROR: JSONObject = {
    "description": "Rejected, in PagerDuty's Events API shape: "
    '{"status": "invalid event", "message", "errors": [...]}.',
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/EventsError"}}
    },
}


def _errors(*codes: int) -> JSONObject:
    # 405 applies to every path (a method it does not serve).
    return {str(c): _problem(c) for c in sorted({*codes, 405})}


def _events_errors(*codes: int) -> JSONObject:
    # The Events API endpoints answer in PagerDuty's shape; 405 comes from the
    # router, as problem+json like everywhere else.
    return {**{str(c): _EVENTS_ERROR for c in codes}, "405": _problem(405)}


def _json(description: str, schema: JSONValue) -> JSONObject:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }


def _query(name: str, description: str, **schema: JSONValue) -> JSONObject:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "string", **schema},
    }


LIMIT: JSONObject = {
    "name": "limit",
    "in": "query",
    "required": False,
    "description": f"Page size, 1 to {MAX_LIMIT} (400 outside).",
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 100},
}
CURSOR = _query(
    "cursor",
    "next_cursor of the previous page; omit for the newest page. A cursor this "
    "receiver did not issue is a 400.",
)


def _path_id(what: str) -> JSONObject:
    return {
        "name": "id",
        "in": "path",
        "required": True,
        "description": f"The {what} id.",
        "schema": {"type": "string"},
    }


_ADMIN_IDS = {
    ("/api/v1/pause", "get"): ("getPause", "read"),
    ("/api/v1/pause", "post"): ("setPause", "admin"),
    ("/api/v1/pause", "delete"): ("deletePause", "admin"),
    ("/api/v1/parked", "get"): ("listParked", "read"),
    ("/api/v1/parked/{id}/retry", "post"): ("retryParked", "admin"),
    ("/api/v1/sinks/parked", "get"): ("listParkedDeliveries", "read"),
    ("/api/v1/sinks/parked/{id}/retry", "post"): ("retryParkedDelivery", "admin"),
}


_INCIDENT_IDS = {
    ("/api/v1/incidents", "get"): ("listIncidents", "read"),
    ("/api/v1/incidents/{id}", "get"): ("getIncident", "read"),
    ("/api/v1/incidents/{id}/report", "get"): ("getIncidentReport", "read"),
    ("/api/v1/incidents/{id}/evidence", "get"): ("getIncidentEvidence", "read"),
    ("/api/v1/incidents/{id}/timeline", "post"): ("commentIncident", "approve"),
    ("/api/v1/incidents/{id}/acknowledge", "post"): ("acknowledgeIncident", "approve"),
    ("/api/v1/incidents/{id}/mitigate", "post"): ("mitigateIncident", "approve"),
    ("/api/v1/incidents/{id}/status", "post"): ("publishIncidentStatus", "approve"),
}


def _with_ids(
    paths: Operations, ids: Mapping[tuple[str, str], tuple[str, str]]
) -> Operations:
    """A route module's paths, with operation ids, scopes and 405."""
    for path, operations in paths.items():
        for method, operation in operations.items():
            operation_id, scope = ids.get((path, method), ("", ""))
            if operation_id:
                operation.setdefault("operationId", operation_id)
                operation["summary"] = f"{operation.get('summary', '')}; scope {scope}"
            responses = operation["responses"]
            if isinstance(responses, dict):
                responses.setdefault("405", _problem(405))
    return paths


@cache
def spec() -> JSONObject:
    """Build the OpenAPI document."""
    schemas: dict[str, JSONObject] = {
        "AlertmanagerWebhook": AmWebhook.model_json_schema(ref_template=REF),
        "PagerDutyWebhook": Webhook.model_json_schema(ref_template=REF),
        "EventsV2Request": EnqueueRequest.model_json_schema(
            by_alias=True, ref_template=REF
        ),
        **response_schemas(),
        "ChangeEvent": ChangeEvent.model_json_schema(ref_template=REF),
        "EventsError": obj(
            {
                "status": STRING,
                "message": STRING,
                "errors": {"type": "array", "items": STRING},
            },
            ("status", "message", "errors"),
        ),
    }
    components: JSONObject = dict(schemas)
    for schema in schemas.values():
        defs = schema.pop("$defs", None)
        if isinstance(defs, Mapping):
            for sub, body in defs.items():
                components.setdefault(sub, body)
    bearer: list[dict[str, list[str]]] = [{"bearer": []}, {"basic": []}]
    token: list[dict[str, list[str]]] = [{"bearer": []}]

    def request_body(name: str) -> JSONObject:
        return {
            "required": True,
            "content": {"application/json": {"schema": ref(name)}},
        }

    webhook_errors = _errors(400, 408, 413, 415, 503)
    paths: Operations = {
        **_with_ids(incident_paths(), _INCIDENT_IDS),
        "/webhooks/alertmanager": {
            "post": {
                "operationId": "postAlertmanagerWebhook",
                "summary": "Alertmanager webhook (version 4); scope webhook",
                "security": bearer,
                "requestBody": request_body("AlertmanagerWebhook"),
                "responses": {
                    "202": _json("Accepted: in the journal.", ref("Accepted")),
                    **webhook_errors,
                    **_errors(401, 403),
                },
            }
        },
        "/webhooks/pagerduty": {
            "post": {
                "operationId": "postPagerDutyWebhook",
                "summary": "PagerDuty V3 webhook, signed",
                "security": [{"pagerdutySignature": []}],
                "requestBody": request_body("PagerDutyWebhook"),
                "responses": {
                    "202": _json(
                        "Accepted (as an alert or a recorded event), or a "
                        "known duplicate/echo (not journaled).",
                        ref("PagerDutyAccepted"),
                    ),
                    **webhook_errors,
                    **_errors(403, 429),
                },
            }
        },
        "/v2/enqueue": {
            "post": {
                "operationId": "postEventsV2",
                "summary": "PagerDuty Events API v2 request (routing key in body)",
                "requestBody": request_body("EventsV2Request"),
                "responses": {
                    "202": _json(
                        "Processed, as PagerDuty answers.", ref("EventsAccepted")
                    ),
                    **_events_errors(400, 403, 408, 413, 415, 429, 503),
                },
            }
        },
        "/v2/change/enqueue": {
            "post": {
                "operationId": "postChangeEvent",
                "summary": "PagerDuty Change Events API request (stored for "
                "the changes.recent diagnostic; routing key in body)",
                "requestBody": request_body("ChangeEvent"),
                "responses": {
                    "202": _json(
                        "Stored, as PagerDuty answers.", ref("ChangeAccepted")
                    ),
                    **_events_errors(400, 403, 408, 413, 415, 429, 503),
                },
            }
        },
        "/-/reload": {
            "post": {
                "operationId": "reloadRules",
                "summary": "Load the rule files again (also on SIGHUP); a bad "
                "file keeps the current rules (422); scope admin",
                "security": token,
                "responses": {
                    "200": _json("Reloaded.", ref("Reloaded")),
                    **_errors(401, 403, 422),
                },
            }
        },
        "/api/v1/decisions": {
            "get": {
                "operationId": "listDecisions",
                "summary": "Decision records, newest first, one page; scope read",
                "security": bearer,
                "parameters": [
                    _query("fingerprint", "Only this alert fingerprint."),
                    _query("rule", "Only records where this rule matched."),
                    _query("playbook", "Only records that ran this playbook."),
                    _query(
                        "decision",
                        "Only records with a step of this decision: executed, "
                        "skipped, dry_run, failed or awaiting_approval (another "
                        "value, or a query parameter not listed here, is a 400).",
                    ),
                    _query("payload_id", "Only records of this payload."),
                    _query(
                        "since",
                        "Only records decided at or after this RFC 3339 time.",
                        format="date-time",
                    ),
                    LIMIT,
                    CURSOR,
                ],
                "responses": {
                    "200": _json("One page.", ref("DecisionPage")),
                    **_errors(400, 401, 403),
                },
            }
        },
        "/api/v1/payloads": {
            "get": {
                "operationId": "listPayloads",
                "summary": "Stored payloads, newest first, one page; scope read",
                "security": bearer,
                "parameters": [LIMIT, CURSOR],
                "responses": {
                    "200": _json("One page.", ref("PayloadPage")),
                    **_errors(400, 401, 403),
                },
            }
        },
        "/api/v1/payloads/{id}": {
            "get": {
                "operationId": "getPayload",
                "summary": "One stored payload (credentials never stored)",
                "security": bearer,
                "parameters": [_path_id("payload")],
                "responses": {
                    "200": _json("The payload.", ref("Payload")),
                    **_errors(401, 403, 404),
                },
            }
        },
        "/api/v1/replay": {
            "post": {
                "operationId": "replay",
                "summary": "Decide a stored or inline payload: dry-run (scope "
                "read) or, with execute, journaled again (scope replay)",
                "security": token,
                "requestBody": request_body("ReplayRequest"),
                "responses": {
                    "200": _json("The decision traces.", ref("ReplayTraces")),
                    "202": _json("Journaled to run.", ref("ReplayAccepted")),
                    **_errors(400, 401, 403, 404, 408, 413, 415, 503),
                },
            }
        },
        "/api/v1/approvals": {
            "get": {
                "operationId": "listApprovals",
                "summary": "Remediations waiting for (or given) approval, newest "
                "first, one page; scope read",
                "security": bearer,
                "parameters": [
                    {
                        "name": "status",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "enum": ["pending", "approved", "rejected", "expired"]
                        },
                    },
                    LIMIT,
                    CURSOR,
                ],
                "responses": {
                    "200": _json("One page.", ref("ApprovalPage")),
                    **_errors(400, 401, 403),
                },
            }
        },
        "/api/v1/approvals/{id}": {
            "post": {
                "operationId": "decideApproval",
                "summary": "Approve or reject as the credential's person; "
                "scope approve. The playbook's approvers apply (403 says "
                "why not); a step needing two people answers 202 for the "
                "first approval; 409 when already decided or expired.",
                "security": token,
                "parameters": [_path_id("approval")],
                "requestBody": request_body("ApprovalDecision"),
                "responses": {
                    "200": _json("The decided approval.", ref("ApprovalAnswer")),
                    "202": _json(
                        "First of two approvals recorded.", ref("ApprovalAnswer")
                    ),
                    **_errors(400, 401, 403, 404, 408, 409, 413, 415, 503),
                },
            }
        },
        **_with_ids(admin_paths(), _ADMIN_IDS),
        **slack_paths(),
        **console_paths(),
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Process alive",
                "security": [],
                "responses": {
                    "200": _json("Alive.", ref("Health")),
                    **_errors(),
                },
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Rules loaded and store reachable",
                "security": [],
                "responses": {
                    "200": _json("Ready.", ref("Ready")),
                    "503": _json("Not ready.", ref("Ready")),
                    **{k: v for k, v in _errors().items() if k != "503"},
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition.",
                        "content": {"text/plain": {"schema": STRING}},
                    },
                    **_errors(),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": {
                    "200": _json("OpenAPI 3.1.", {"type": "object"}),
                    **_errors(),
                },
            }
        },
    }
    _finish(paths)
    document: JSONObject = {
        "openapi": "3.1.0",
        "info": {
            "title": "alert-automation receiver",
            "version": __version__,
            "description": "Alertmanager and PagerDuty in; rules, severity, "
            "playbooks and a decision trace out. Credentials carry scopes: "
            "webhook, read, replay, approve, admin (see the README).",
        },
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "basic": {"type": "http", "scheme": "basic"},
                "pagerdutySignature": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-PagerDuty-Signature",
                },
            },
        },
        "paths": paths,
    }
    return document


def _finish(paths: Operations) -> None:
    """Every operation gets an id, the router's 405 and the edge's 417."""
    used = {
        str(o["operationId"])
        for operations in paths.values()
        for o in operations.values()
        if "operationId" in o
    }
    for path, operations in paths.items():
        for method, operation in operations.items():
            if "operationId" not in operation:
                base = candidate = _operation_id(method, path)
                while candidate in used:
                    candidate += "Again" if candidate == base else "X"
                used.add(candidate)
                operation["operationId"] = candidate
            responses = operation["responses"]
            if isinstance(responses, dict):
                responses.setdefault("405", _problem(405))
                responses.setdefault("417", _problem(417))
                _problems_answered(responses)


def _problems_answered(responses: dict[str, JSONValue]) -> None:
    """An error raised anywhere is answered problem+json by the edge."""
    for code, response in responses.items():
        content = response.get("content") if isinstance(response, Mapping) else None
        if code.isdigit() and int(code) >= 400 and isinstance(content, dict):
            content.setdefault("application/problem+json", {"schema": ref("Problem")})


def _operation_id(method: str, path: str) -> str:
    words = [
        w for w in re.split(r"[^A-Za-z0-9]+", path) if w and w not in ("api", "v1")
    ]
    return method.lower() + "".join(w[:1].upper() + w[1:] for w in words)

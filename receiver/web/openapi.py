"""The OpenAPI 3.1 description served at ``/openapi.json``.

Request schemas come from the same pydantic models that validate the payloads,
so the document cannot drift from what the edge accepts.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from receiver import __version__
from receiver.sources.alertmanager import AmWebhook
from receiver.sources.events_v2 import EnqueueRequest
from receiver.sources.pagerduty import Webhook
from receiver.web.admin import admin_paths
from receiver.web.console import console_paths
from receiver.web.incidents import incident_paths
from receiver.web.slack import slack_paths

_PROBLEM = {
    "description": "Rejected; the body says what to fix.",
    "content": {
        "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
    },
}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): _PROBLEM for c in codes}


def _accepted(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    props = {"status": {"type": "string"}, "id": {"type": "string"}}
    props.update(extra or {})
    return {
        "description": "Accepted: the payload is in the journal.",
        "content": {
            "application/json": {"schema": {"type": "object", "properties": props}}
        },
    }


@cache
def spec() -> dict[str, Any]:
    """Build the OpenAPI document."""
    schemas: dict[str, Any] = {
        "AlertmanagerWebhook": AmWebhook.model_json_schema(
            ref_template="#/components/schemas/{model}"
        ),
        "PagerDutyWebhook": Webhook.model_json_schema(
            ref_template="#/components/schemas/{model}"
        ),
        "EventsV2Request": EnqueueRequest.model_json_schema(
            by_alias=True, ref_template="#/components/schemas/{model}"
        ),
        "Problem": {
            "type": "object",
            "required": ["type", "title", "status", "detail"],
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
                "errors": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "pointer": {"type": "string"},
                            "detail": {"type": "string"},
                        },
                    },
                },
            },
        },
    }
    for name in list(schemas):
        for sub, body in schemas[name].pop("$defs", {}).items():
            schemas.setdefault(sub, body)
    bearer: list[dict[str, list[str]]] = [{"bearer": []}, {"basic": []}]

    def request_body(ref: str) -> dict[str, Any]:
        return {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}
            },
        }

    json_ok = {
        "description": "OK",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "alert-automation receiver",
            "version": __version__,
            "description": "Alertmanager and PagerDuty in; rules, severity, "
            "playbooks and a decision trace out.",
        },
        "components": {
            "schemas": schemas,
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
        "paths": {
            **incident_paths(),
            "/webhooks/alertmanager": {
                "post": {
                    "summary": "Alertmanager webhook (version 4)",
                    "security": bearer,
                    "requestBody": request_body("AlertmanagerWebhook"),
                    "responses": {
                        "202": _accepted({"alerts": {"type": "integer"}}),
                        **_errors(400, 401, 403, 413, 415, 503),
                    },
                }
            },
            "/webhooks/pagerduty": {
                "post": {
                    "summary": "PagerDuty V3 webhook, signed",
                    "security": [{"pagerdutySignature": []}],
                    "requestBody": request_body("PagerDutyWebhook"),
                    "responses": {
                        "202": _accepted({"event_type": {"type": "string"}}),
                        **_errors(400, 403, 413, 415, 503),
                    },
                }
            },
            "/v2/enqueue": {
                "post": {
                    "summary": "PagerDuty Events API v2 request",
                    "requestBody": request_body("EventsV2Request"),
                    "responses": {
                        "202": _accepted({"dedup_key": {"type": "string"}}),
                        **_errors(400, 403, 413, 415, 503),
                    },
                }
            },
            "/api/v1/decisions": {
                "get": {
                    "summary": "Decision traces, newest first",
                    "security": bearer,
                    "parameters": [
                        {"name": n, "in": "query", "schema": {"type": t}}
                        for n, t in (
                            ("fingerprint", "string"),
                            ("rule", "string"),
                            ("playbook", "string"),
                            ("decision", "string"),
                            ("payload_id", "string"),
                            ("since", "string"),
                            ("limit", "integer"),
                        )
                    ],
                    "responses": {"200": json_ok, **_errors(400, 401, 403)},
                }
            },
            "/api/v1/payloads": {
                "get": {
                    "summary": "Stored payloads, newest first",
                    "security": bearer,
                    "responses": {"200": json_ok, **_errors(401, 403)},
                }
            },
            "/api/v1/payloads/{id}": {
                "get": {
                    "summary": "One stored payload (headers redacted)",
                    "security": bearer,
                    "parameters": [
                        {
                            "name": "id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {"200": json_ok, **_errors(401, 403, 404)},
                }
            },
            "/api/v1/replay": {
                "post": {
                    "summary": "Decide a stored or inline payload (dry-run)",
                    "security": bearer,
                    "responses": {"200": json_ok, **_errors(400, 401, 403)},
                }
            },
            "/api/v1/approvals": {
                "get": {
                    "summary": "Remediations waiting for (or given) human approval",
                    "security": bearer,
                    "parameters": [
                        {"name": "status", "in": "query", "schema": {"type": "string"}}
                    ],
                    "responses": {"200": json_ok, **_errors(401, 403)},
                }
            },
            "/api/v1/approvals/{id}": {
                "post": {
                    "summary": 'Approve or reject: {"decision": "approve"|"reject", '
                    '"by": "<who>"}',
                    "security": bearer,
                    "parameters": [
                        {
                            "name": "id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {"200": json_ok, **_errors(400, 401, 403, 404)},
                }
            },
            **admin_paths(),
            **slack_paths(),
            **console_paths(),
            "/healthz": {
                "get": {"summary": "Process alive", "responses": {"200": json_ok}}
            },
            "/readyz": {
                "get": {
                    "summary": "Rules loaded and store reachable",
                    "responses": {"200": json_ok, "503": json_ok},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "text/plain exposition"}},
                }
            },
            "/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": json_ok}}
            },
        },
    }

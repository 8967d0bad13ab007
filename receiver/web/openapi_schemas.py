"""The hand-written schemas of the response bodies in ``/openapi.json``.

Request schemas come from the pydantic models that validate payloads; responses
are written here, in the JSON Schema the document uses, and checked against the
running service by Schemathesis. ``openapi.spec`` merges them in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

    from receiver.model import JSONObject, JSONValue

# path -> method -> operation, as the route modules describe them
Operations = dict[str, dict[str, dict[str, "JSONValue"]]]

REF = "#/components/schemas/{model}"

STRING: JSONObject = {"type": "string"}
INTEGER: JSONObject = {"type": "integer"}
NULLABLE_STRING: JSONObject = {"type": ["string", "null"]}
STRING_MAP: JSONObject = {"type": "object", "additionalProperties": {"type": "string"}}


def ref(name: str) -> JSONObject:
    """A reference to the component schema called ``name``."""
    return {"$ref": REF.format(model=name)}


def obj(
    properties: Mapping[str, JSONValue], required: tuple[str, ...] = ()
) -> JSONObject:
    """An object schema with these properties, the ``required`` ones listed."""
    out: JSONObject = {"type": "object", "properties": properties}
    if required:
        out["required"] = list(required)
    return out


def response_schemas() -> dict[str, JSONObject]:
    """The response bodies' schemas, by component name."""
    step = obj(
        {
            "kind": {"enum": ["diagnostic", "remediation"]},
            "type": STRING,
            "target": STRING,
            "decision": STRING,
            "reason": STRING,
            "name": STRING,
            "request": {"type": "object"},
            "result": {"type": "object"},
        },
        ("kind", "type", "target", "decision", "reason"),
    )
    match = obj(
        {
            "rule": STRING,
            "severity": STRING,
            "playbook": STRING,
            "steps": {"type": "array", "items": ref("Step")},
            "severity_info": {"type": "object"},
            "description": STRING,
            "runbook_url": STRING,
            "escalate_to": STRING,
            "notes": {"type": "array", "items": STRING},
        },
        ("rule", "severity", "playbook", "steps"),
    )
    trace = obj(
        {
            "fingerprint": STRING,
            "status": {"enum": ["firing", "resolved"]},
            "labels": STRING_MAP,
            "annotations": STRING_MAP,
            "source": STRING,
            "startsAt": NULLABLE_STRING,
            "refs": STRING_MAP,
            "actionable": {"type": "boolean"},
            "payload_id": STRING,
            "decided_at": NULLABLE_STRING,
            "mode": STRING,
            "notes": {"type": "array", "items": STRING},
            "matches": {"type": "array", "items": ref("Match")},
        },
        ("fingerprint", "status", "labels", "matches"),
    )
    # What the decision log holds: alert traces (long label values by
    # reference, ``values_by_reference``) and the outcome records of sinks.
    record = obj(
        {
            "fingerprint": STRING,
            "payload_id": STRING,
            "decided_at": NULLABLE_STRING,
            "labels": STRING_MAP,
            "matches": {"type": "array", "items": ref("Match")},
            "values_by_reference": {"type": "boolean"},
        }
    )
    page: JSONObject = {"count": INTEGER, "next_cursor": NULLABLE_STRING}
    payload_summary = obj(
        {
            "id": STRING,
            "source": {"enum": ["alertmanager", "pagerduty", "events_v2"]},
            "received_at": STRING,
            "headers": STRING_MAP,
        },
        ("id", "source", "received_at", "headers"),
    )
    payload: JSONObject = {
        "allOf": [
            ref("PayloadSummary"),
            obj({"payload": {}}, ("payload",)),
        ]
    }
    approval_properties: JSONObject = {
        "id": STRING,
        "key": STRING,
        "status": {"enum": ["pending", "approved", "rejected", "expired"]},
        "created_at": STRING,
        "expires_at": STRING,
        "decided_by": STRING,
        "decided_at": NULLABLE_STRING,
        "request": {"type": "object"},
    }
    approval = obj(
        approval_properties,
        ("id", "key", "status", "created_at", "expires_at", "request"),
    )
    return {
        "Problem": obj(
            {
                "type": STRING,
                "title": STRING,
                "status": INTEGER,
                "detail": STRING,
                "errors": {
                    "type": "array",
                    "items": obj(
                        {"pointer": STRING, "detail": STRING}, ("pointer", "detail")
                    ),
                },
            },
            ("type", "title", "status", "detail"),
        ),
        "Step": step,
        "Match": match,
        "AlertTrace": trace,
        "DecisionRecord": record,
        "DecisionPage": obj(
            {"decisions": {"type": "array", "items": ref("DecisionRecord")}, **page},
            ("decisions", "count", "next_cursor"),
        ),
        "PayloadSummary": payload_summary,
        "Payload": payload,
        "PayloadPage": obj(
            {"payloads": {"type": "array", "items": ref("PayloadSummary")}, **page},
            ("payloads", "count", "next_cursor"),
        ),
        "Approval": approval,
        "ApprovalPage": obj(
            {"approvals": {"type": "array", "items": ref("Approval")}, **page},
            ("approvals", "count", "next_cursor"),
        ),
        "Accepted": obj(
            {"status": {"const": "accepted"}, "id": STRING, "alerts": INTEGER},
            ("status", "id", "alerts"),
        ),
        "PagerDutyAccepted": obj(
            {
                "status": {"enum": ["accepted", "duplicate", "ignored"]},
                "id": {
                    "type": "string",
                    "description": "The journal id; absent when nothing was "
                    "journaled (a duplicate delivery, our own note echoed).",
                },
                "alerts": INTEGER,
                "event_type": STRING,
                "recorded_as": {"enum": ["alert", "event"]},
                "reason": STRING,
            },
            ("status", "alerts", "event_type"),
        ),
        "EventsAccepted": obj(
            {
                "status": {"const": "success"},
                "message": STRING,
                "dedup_key": STRING,
                "id": {
                    "type": "string",
                    "description": "The journal id; absent for a duplicate of "
                    "the open alert (nothing journaled).",
                },
            },
            ("status", "message", "dedup_key"),
        ),
        "ReplayRequest": {
            "type": "object",
            "description": 'A stored payload ({"payload_id": ...}) or an inline '
            'one ({"payload": {...}}); "execute": true needs the replay scope, '
            "the service in execute mode, and, inline, an Alertmanager payload.",
            "properties": {
                "payload_id": STRING,
                "payload": {"type": "object"},
                "execute": {"type": "boolean", "default": False},
            },
        },
        "ReplayTraces": obj(
            {"alerts": {"type": "array", "items": ref("AlertTrace")}}, ("alerts",)
        ),
        "ReplayAccepted": obj(
            {
                "status": {"const": "accepted"},
                "id": STRING,
                "execute": {"const": True},
            },
            ("status", "id", "execute"),
        ),
        "ApprovalDecision": obj(
            {"decision": {"enum": ["approve", "reject"]}},
            ("decision",),
        ),
        "ApprovalAnswer": {
            **approval,
            "properties": {
                **approval_properties,
                "message": {
                    "type": "string",
                    "description": "What happened, in words.",
                },
            },
        },
        "ChangeAccepted": obj(
            {"status": {"const": "success"}, "message": STRING, "id": STRING},
            ("status", "message", "id"),
        ),
        "Reloaded": obj(
            {"status": {"const": "success"}, "rules": INTEGER, "playbooks": INTEGER},
            ("status", "rules", "playbooks"),
        ),
        "Health": obj({"status": STRING}, ("status",)),
        "Ready": obj(
            {
                "status": STRING,
                "rules": INTEGER,
                "store": STRING,
                "worker": STRING,
                # Redis stores: whether Redis may evict the receiver's keys
                # (null when it would not say); never makes it not ready.
                "store_eviction": obj(
                    {
                        "possible": {"type": ["boolean", "null"]},
                        "maxmemory_policy": NULLABLE_STRING,
                        "maxmemory": {"type": ["integer", "null"]},
                    },
                    ("possible", "maxmemory_policy", "maxmemory"),
                ),
            },
            ("status",),
        ),
    }

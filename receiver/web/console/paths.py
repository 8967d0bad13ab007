"""The console's routes as OpenAPI paths."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from receiver.model import JSONObject, JSONValue
    from receiver.web.openapi_schemas import Operations


def console_paths() -> Operations:
    """The OpenAPI paths of the console's pages (HTML, basic-auth prompt)."""
    page: JSONObject = {
        "description": "An HTML page",
        "content": {"text/html": {"schema": {"type": "string"}}},
    }
    security: list[JSONValue] = [{"basic": []}, {"bearer": []}]
    path_id: list[JSONValue] = [
        {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    ]

    def get(
        summary: str, *codes: int, **extra: JSONValue
    ) -> dict[str, dict[str, JSONValue]]:
        answers: JSONObject = {
            str(c): page for c in sorted({200, 401, 403, 503, *codes})
        }
        return {
            "get": {
                "summary": summary,
                "security": security,
                "responses": answers,
                **extra,
            }
        }

    def form(
        summary: str, *codes: int, **extra: JSONValue
    ) -> dict[str, dict[str, JSONValue]]:
        answers: JSONObject = {
            str(c): page for c in sorted({303, 400, 401, 403, 503, *codes})
        }
        return {
            "post": {
                "summary": summary,
                "security": security,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/x-www-form-urlencoded": {
                            "schema": {"type": "object"}
                        }
                    },
                },
                "responses": answers,
                **extra,
            }
        }

    return {
        "/ui": get("Console home"),
        "/ui/": get("Console home"),
        "/ui/static/console.js": {
            "get": {
                "summary": "The console's script (clocks)",
                "security": [],
                "responses": {
                    "200": {
                        "description": "JavaScript",
                        "content": {"text/javascript": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/ui/incidents": get("Incidents and their clocks"),
        "/ui/incidents/{id}": get(
            "One incident: clocks, timeline, traces, notes", 404, parameters=path_id
        ),
        "/ui/incidents/{id}/acknowledge": form(
            "Acknowledge an incident as the signed-in person (approve scope)",
            404,
            409,
            parameters=path_id,
        ),
        "/ui/incidents/{id}/mitigate": form(
            "Mark an incident mitigated as the signed-in person (approve scope)",
            404,
            409,
            parameters=path_id,
        ),
        "/ui/incidents/{id}/resolve": form(
            "Resolve an open incident as the signed-in person (approve scope)",
            404,
            409,
            parameters=path_id,
        ),
        "/ui/incidents/{id}/comment": form(
            "Comment on an incident's timeline as the signed-in person (approve scope)",
            404,
            409,
            parameters=path_id,
        ),
        "/ui/approvals": get("Pending approvals"),
        "/ui/approvals/{id}": form(
            "Approve or reject as the signed-in person", parameters=path_id
        ),
        "/ui/guards": get("Pause, breakers, budgets, locks, parked"),
        "/ui/guards/reset": form("Reset a circuit breaker (admin scope; audited)"),
        "/ui/guards/pause": form("Pause or resume remediations (admin; audited)"),
        "/ui/guards/retry-delivery": form(
            "Send a parked sink delivery again (admin scope; logged)"
        ),
        "/ui/guards/retry-entry": form(
            "Put a parked journal entry back in the queue (admin scope; logged)"
        ),
        "/ui/rules": get("Loaded rules and the dry-run form"),
        "/ui/rules/dry-run": form(
            "Decide a stored payload against the rules (dry-run)", 200, 404, 422
        ),
        "/ui/backtest": {
            **get("The backtest form for candidate rules (admin scope)"),
            "post": {
                "summary": "Backtest candidate rules against the loaded ones "
                "(admin scope; dry-run; audited)",
                "security": security,
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {"schema": {"type": "object"}},
                        "application/x-www-form-urlencoded": {
                            "schema": {"type": "object"}
                        },
                    },
                },
                "responses": {str(c): page for c in (200, 400, 401, 403, 413, 429)},
            },
        },
    }

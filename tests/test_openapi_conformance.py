"""The running service conforms to its own /openapi.json (Schemathesis).

A real ``receiver serve`` with every credential configured; each operation gets a
bounded number of generated requests (schema examples, coverage of boundaries,
then random ones), with a token that carries every scope. Checks: no 5xx, every
status documented, content types and headers as documented, response bodies
valid against their schemas. A hostile request may be refused, never crash.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from peers import run_receiver
from schemathesis import GenerationMode, checks
from schemathesis.core import NOT_SET

from receiver.web.openapi import spec

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "conformance-token-8f1e"
PD_SECRET = "conformance-pd-secret"
ROUTING_KEY = "conformance-routing-key"
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("conformance")
    env = {
        "RECEIVER_STORE": f"sqlite:///{tmp}/state.db",
        "RECEIVER_AUTH_TOKENS": TOKEN,
        "RECEIVER_READ_TOKENS": TOKEN,
        "RECEIVER_REPLAY_TOKENS": TOKEN,
        "RECEIVER_APPROVE_TOKENS": TOKEN,
        "RECEIVER_ADMIN_TOKENS": TOKEN,
        "RECEIVER_PAGERDUTY_SECRETS": PD_SECRET,
        "RECEIVER_ROUTING_KEYS": ROUTING_KEY,
        "RECEIVER_MAX_BODY_BYTES": "65536",
    }
    with run_receiver(tmp, rules=ROOT / "rules", env=env) as peer:
        yield peer.url


@pytest.fixture(scope="module")
def api_schema(served: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{served}/openapi.json")


# The same document the service serves, read in process to list the operations.
# Negative requests only where there is something to get wrong.
OPERATIONS = [
    pytest.param(path, method.upper(), mode, id=f"{method} {path} {mode.value}")
    for path, methods in spec()["paths"].items()
    for method, operation in methods.items()
    for mode in GenerationMode
    if mode is GenerationMode.POSITIVE
    or operation.get("parameters")
    or operation.get("requestBody")
]


def call(case: schemathesis.Case, base_url: str, *, positive: bool) -> None:
    """Send one generated request with credentials and validate the answer.

    Valid (positive) webhook bodies are given real credentials, so accepted
    answers are checked too; invalid ones are sent as generated.
    """
    headers = {"Authorization": f"Bearer {TOKEN}"}
    if not positive:
        case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS)
        return
    # A real routing key half the time, so accepted answers are checked too.
    if (
        case.operation.path == "/v2/enqueue"
        and isinstance(case.body, dict)
        and len(json.dumps(case.body, default=str)) % 2
    ):
        case.body["routing_key"] = ROUTING_KEY
    if case.operation.path == "/webhooks/pagerduty" and isinstance(case.body, dict):
        body = json.dumps(case.body).encode()
        signature = hmac.new(PD_SECRET.encode(), body, hashlib.sha256).hexdigest()
        headers["X-PagerDuty-Signature"] = f"v1={signature}"
        headers["Content-Type"] = "application/json"
        case.body = NOT_SET
        response = case.call(base_url=base_url, headers=headers, data=body)
        case.validate_response(response, checks=CHECKS[:-1])
        return
    case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS)


@pytest.mark.e2e
@pytest.mark.parametrize(("path", "method", "mode"), OPERATIONS)
def test_service_conforms_to_its_openapi(
    api_schema: schemathesis.BaseSchema, served: str, path: str, method: str, mode
) -> None:
    """Generated requests get documented answers: no 5xx, no schema violation."""
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def run(case: schemathesis.Case) -> None:
        call(case, served, positive=mode is GenerationMode.POSITIVE)

    run()

"""``http.get``: probe an endpoint for its status, latency, body and a JSON value.

Only allowlisted hosts are called (see ``executor``); transient failures are
retried with bounded, jittered backoff.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field
from typing_extensions import override

from receiver.model import Alert, JSONObject, StepResult
from receiver.rulebook.steps.base import StepModel, Url
from receiver.steps.defs import Probe

if TYPE_CHECKING:
    from receiver.steps.http.executor import HttpExecutor


class HttpGet(StepModel):
    """Probe an endpoint: status, latency, a capped body excerpt, a JSON value."""

    family: ClassVar[str] = "http"
    type: Literal["http.get"] = "http.get"
    url: Url
    json_path: str | None = Field(default=None, description="e.g. overall_healthy")
    expect_status: int = 200
    max_body_bytes: int = Field(default=2048, ge=0, le=65536)

    @override
    def target(self) -> str:
        return self.url

    @override
    def describe(self) -> JSONObject:
        return {"verb": "GET", "url": self.url, "action": f"GET {self.url}"}


async def run(http: HttpExecutor, step: HttpGet, alert: Alert) -> StepResult:
    """GET the URL; ok when the status is the one expected."""
    del alert
    return await http.get(
        step.url, step.expect_status, step.json_path, step.max_body_bytes
    )


STEPS = (Probe(HttpGet, run),)

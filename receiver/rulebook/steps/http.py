"""``http.*`` step models: probe an endpoint, call an allowlisted webhook."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field
from typing_extensions import override

from receiver.rulebook.steps.base import StepModel, Url
from receiver.rulebook.steps.verify import Remediation


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
    def describe(self) -> dict[str, Any]:
        return {"verb": "GET", "url": self.url, "action": f"GET {self.url}"}


class HttpRequest(Remediation):
    """Call a remediation webhook on an allowlisted host."""

    family: ClassVar[str] = "http"
    type: Literal["http.request"] = "http.request"
    method: Literal["POST", "PUT", "PATCH", "DELETE"] = "POST"
    url: Url
    json_body: dict[str, Any] | None = Field(default=None, alias="json")
    headers: dict[str, str] = Field(default_factory=dict)
    expect_status: list[int] = Field(default_factory=lambda: [200, 201, 202, 204])
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @override
    def target(self) -> str:
        return self.url

    @override
    def describe(self) -> dict[str, Any]:
        return {
            "verb": self.method,
            "url": self.url,
            "body": self.json_body,
            "action": f"{self.method} {self.url}",
        }


STEPS: tuple[type[StepModel], ...] = (HttpGet, HttpRequest)

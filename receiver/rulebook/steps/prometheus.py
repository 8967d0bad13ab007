"""``prometheus.*`` step models: instant PromQL queries templated with alert labels."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field
from typing_extensions import override

from receiver.rulebook.steps.base import Condition, PromQL, StepModel


class PrometheusQuery(StepModel):
    """Instant PromQL query, templated with alert labels."""

    family: ClassVar[str] = "prometheus"
    type: Literal["prometheus.query"] = "prometheus.query"
    query: PromQL
    target_name: str = Field(default="default", alias="prometheus")
    condition: Condition | None = Field(
        default=None,
        description="Threshold to report against, e.g. '< 0.001'.",
    )
    max_series: int = Field(default=20, ge=1, le=500)
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @override
    def target(self) -> str:
        return f"prometheus:{self.target_name}"

    @override
    def describe(self) -> dict[str, Any]:
        cond = f" (expect {self.condition.strip()})" if self.condition else ""
        return {
            "verb": "query",
            "prometheus": self.target_name,
            "query": self.query,
            "action": f"query {self.query}{cond}",
        }


STEPS: tuple[type[StepModel], ...] = (PrometheusQuery,)

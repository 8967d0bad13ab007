"""``prometheus.query``: an instant PromQL query, templated with alert labels.

Results are capped at ``max_series`` with their labels and values; with a
``condition``, the result says whether every series meets it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import ConfigDict, Field
from typing_extensions import override

from receiver.model import Alert, JSONObject, StepResult
from receiver.rulebook.steps.base import Condition, PromQL, StepModel
from receiver.steps.defs import Probe
from receiver.steps.prometheus.executor import fmt_labels, holds, parse_condition

if TYPE_CHECKING:
    from receiver.steps.prometheus.executor import PrometheusExecutor


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
    def describe(self) -> JSONObject:
        cond = f" (expect {self.condition.strip()})" if self.condition else ""
        return {
            "verb": "query",
            "prometheus": self.target_name,
            "query": self.query,
            "action": f"query {self.query}{cond}",
        }


async def run(
    prometheus: PrometheusExecutor, step: PrometheusQuery, alert: Alert
) -> StepResult:
    """Run the query; report the series and whether the condition is met."""
    del alert
    series = await prometheus.query(step.target_name, step.query)
    shown = series[: step.max_series]
    values = (
        ", ".join(f"{fmt_labels(s.labels)}{s.value:.6g}" for s in shown[:5])
        or "no data"
    )
    reason = f"{len(series)} series: {values}"
    result: JSONObject = {
        "series": [s.as_json() for s in shown],
        "total_series": len(series),
    }
    if step.condition:
        cond = parse_condition(step.condition)
        met = bool(series) and all(holds(s.value, cond) for s in series)
        result["condition"] = step.condition.strip()
        result["condition_met"] = met
        reason += f" (expect {step.condition.strip()}: {'met' if met else 'not met'})"
    return StepResult(ok=True, reason=reason, result=result)


STEPS = (Probe(PrometheusQuery, run),)

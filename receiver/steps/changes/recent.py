"""``changes.recent``: the change events deploy tools sent, for a service or namespace.

The result lists the newest first, capped at the step's ``limit``, next to
what the other diagnostics (rollout history) say.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field
from typing_extensions import override

from receiver.model import Alert, JSONObject, JSONValue, StepResult, freeze, iso
from receiver.rulebook.steps.base import Duration, K8sName, Namespace, StepModel
from receiver.rulebook.templates import format_duration
from receiver.steps.changes.executor import SCAN
from receiver.steps.defs import Probe

if TYPE_CHECKING:
    from receiver.steps.changes.executor import ChangesExecutor


class ChangesRecent(StepModel):
    """List the change events (``/v2/change/enqueue``) of a service or namespace.

    A change names a service when its ``custom_details.service`` (or ``app``) or
    its ``source`` equals ``service``, and a namespace when its
    ``custom_details.namespace`` equals ``namespace``; given both, both must hold.
    """

    family: ClassVar[str] = "changes"
    type: Literal["changes.recent"] = "changes.recent"
    # Compared with what deploy tools send, never sent anywhere; a workload
    # name's grammar keeps alert values to the names services have.
    service: K8sName | None = None
    namespace: Namespace | None = None
    window: Duration = Field(
        default=timedelta(hours=2), description="How far back to look."
    )
    limit: int = Field(default=20, ge=1, le=200)

    @override
    def target(self) -> str:
        parts = [f"service {self.service}"] if self.service else []
        parts += [f"namespace {self.namespace}"] if self.namespace else []
        return " in ".join(parts) or "all services"

    @override
    def describe(self) -> JSONObject:
        return {
            "verb": "list",
            "resource": "change events",
            "service": self.service,
            "namespace": self.namespace,
            "window": format_duration(self.window),
            "action": f"list change events of {self.target()} within "
            f"{format_duration(self.window)}",
        }


def names(change: Mapping[str, JSONValue], step: ChangesRecent) -> bool:
    """Whether a stored change event is about the step's service and namespace."""
    details = change.get("custom_details") or {}
    if not isinstance(details, Mapping):
        details = {}
    if step.service is not None and step.service not in (
        details.get("service"),
        details.get("app"),
        change.get("source"),
    ):
        return False
    return step.namespace is None or details.get("namespace") == step.namespace


async def run(
    changes: ChangesExecutor, step: ChangesRecent, alert: Alert
) -> StepResult:
    """List the matching change events within the step's window."""
    del alert
    since = changes.clock() - step.window
    cutoff = iso(since) or ""
    found = []
    for record in await changes.read(since, SCAN):
        change = record.get("change")
        if not isinstance(change, Mapping):
            continue
        if str(change.get("timestamp", "")) >= cutoff and names(change, step):
            found.append(dict(change))
    found.sort(key=lambda c: str(c.get("timestamp", "")), reverse=True)
    shown = found[: step.limit]
    listed = "; ".join(
        f"{c.get('timestamp', '?')} {c.get('summary', '')}"
        + (f" ({c['source']})" if c.get("source") else "")
        for c in shown[:5]
    )
    reason = (
        f"{len(found)} change events for {step.target()} in the last "
        f"{step.describe()['window']}" + (f": {listed}" if listed else "")
    )
    return StepResult(
        ok=True,
        reason=reason,
        result=freeze({"changes": shown, "total": len(found)}),
    )


STEPS = (Probe(ChangesRecent, run),)

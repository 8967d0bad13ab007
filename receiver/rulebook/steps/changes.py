"""``changes.*`` step models: the change events deploy tools sent this receiver."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar, Literal

from pydantic import Field
from typing_extensions import override

from receiver.rulebook.steps.base import Duration, K8sName, Namespace, StepModel
from receiver.rulebook.templates import format_duration


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
    def describe(self) -> dict[str, Any]:
        return {
            "verb": "list",
            "resource": "change events",
            "service": self.service,
            "namespace": self.namespace,
            "window": format_duration(self.window),
            "action": f"list change events of {self.target()} within "
            f"{format_duration(self.window)}",
        }


STEPS: tuple[type[StepModel], ...] = (ChangesRecent,)

"""Typed views of the Kubernetes objects ``k8s.*`` steps read, and ``parse_object``.

Small pydantic models over the fields the steps read, with ``extra="allow"``,
so an object read through them keeps every field the server sent;
``parse_object`` turns a malformed answer into a step error instead of a
``KeyError`` deep inside. A field whose content a step copies back to the
server unchanged (a rollback's pod template) is kept as the raw JSON
(``dict[str, object]``), never re-serialised from a model. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from receiver.errors import PermanentStepError


class KubeModel(BaseModel):
    """A view of an API object: the fields we read, everything else kept."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)


class OwnerReference(KubeModel):
    """``metadata.ownerReferences[]``."""

    kind: str = ""
    name: str = ""
    uid: str = ""
    controller: bool = False


class ObjectMeta(KubeModel):
    """``metadata``: identity, version and the labels and annotations read."""

    name: str = ""
    uid: str = ""
    resource_version: str | None = Field(default=None, alias="resourceVersion")
    generation: int = 0
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    creation_timestamp: str | None = Field(default=None, alias="creationTimestamp")
    deletion_timestamp: str | None = Field(default=None, alias="deletionTimestamp")
    owner_references: list[OwnerReference] = Field(
        default_factory=list, alias="ownerReferences"
    )


class Limits(KubeModel):
    """``resources`` of a container: only the limits are read."""

    limits: dict[str, str | int | float] = Field(default_factory=dict)


class Container(KubeModel):
    """``spec.containers[]`` of a pod (template)."""

    name: str = ""
    resources: Limits = Field(default_factory=Limits)


class PodSpec(KubeModel):
    """``spec`` of a pod (template)."""

    containers: list[Container] = Field(default_factory=list)


class PodTemplate(KubeModel):
    """``spec.template`` of a workload."""

    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: PodSpec = Field(default_factory=PodSpec)


class WorkloadSpec(KubeModel):
    """``spec`` of a Deployment, StatefulSet or DaemonSet."""

    replicas: int | None = None
    paused: bool = False
    selector: dict[str, object] | None = None
    template: PodTemplate = Field(default_factory=PodTemplate)


class WorkloadStatus(KubeModel):
    """``status`` of a Deployment, StatefulSet or DaemonSet: the counts read."""

    observed_generation: int | None = Field(default=None, alias="observedGeneration")
    replicas: int | None = None
    updated_replicas: int | None = Field(default=None, alias="updatedReplicas")
    ready_replicas: int | None = Field(default=None, alias="readyReplicas")
    available_replicas: int | None = Field(default=None, alias="availableReplicas")
    unavailable_replicas: int | None = Field(default=None, alias="unavailableReplicas")
    current_revision: str | None = Field(default=None, alias="currentRevision")
    update_revision: str | None = Field(default=None, alias="updateRevision")
    desired_number_scheduled: int | None = Field(
        default=None, alias="desiredNumberScheduled"
    )
    number_ready: int | None = Field(default=None, alias="numberReady")
    updated_number_scheduled: int | None = Field(
        default=None, alias="updatedNumberScheduled"
    )
    number_available: int | None = Field(default=None, alias="numberAvailable")
    number_misscheduled: int | None = Field(default=None, alias="numberMisscheduled")


class Workload(KubeModel):
    """A Deployment, StatefulSet or DaemonSet."""

    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: WorkloadSpec = Field(default_factory=WorkloadSpec)
    status: WorkloadStatus = Field(default_factory=WorkloadStatus)


class ReplicasSpec(KubeModel):
    """``spec`` of a scale subresource."""

    replicas: int | None = None


class Scale(KubeModel):
    """A workload's ``scale`` subresource."""

    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: ReplicasSpec = Field(default_factory=ReplicasSpec)


class ObjectReference(KubeModel):
    """``spec.scaleTargetRef`` of an HPA."""

    kind: str = ""
    name: str = ""


class HpaSpec(KubeModel):
    """``spec`` of a HorizontalPodAutoscaler."""

    min_replicas: int | None = Field(default=None, alias="minReplicas")
    max_replicas: int | None = Field(default=None, alias="maxReplicas")
    scale_target_ref: ObjectReference | None = Field(
        default=None, alias="scaleTargetRef"
    )


class HpaStatus(KubeModel):
    """``status`` of a HorizontalPodAutoscaler."""

    current_replicas: int | None = Field(default=None, alias="currentReplicas")
    desired_replicas: int | None = Field(default=None, alias="desiredReplicas")
    current_metrics: list[dict[str, object]] = Field(
        default_factory=list, alias="currentMetrics"
    )


class Hpa(KubeModel):
    """A HorizontalPodAutoscaler."""

    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: HpaSpec = Field(default_factory=HpaSpec)
    status: HpaStatus = Field(default_factory=HpaStatus)


class Versioned(KubeModel):
    """An API object, for its ``metadata`` (the version a write is fenced with)."""

    metadata: ObjectMeta = Field(default_factory=ObjectMeta)


class RevisionSpec(KubeModel):
    """``spec`` of a Deployment or ReplicaSet as a rollback reads it."""

    paused: bool = False
    # Raw: a rollback sends it back exactly as the server sent it.
    template: dict[str, object] | None = None


class Revision(KubeModel):
    """A Deployment or one of its ReplicaSets: a revision's pod template."""

    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: RevisionSpec = Field(default_factory=RevisionSpec)
    status: ReplicasSpec = Field(default_factory=ReplicasSpec)

    @property
    def template(self) -> dict[str, object]:
        """The pod template as the server sent it (empty when it has none)."""
        return self.spec.template or {}


class ContainerStatus(KubeModel):
    """``status.containerStatuses[]``: the restarts read."""

    restart_count: int | None = Field(default=0, alias="restartCount")


class PodStatus(KubeModel):
    """``status`` of a pod: its containers' statuses."""

    container_statuses: list[ContainerStatus] = Field(
        default_factory=list, alias="containerStatuses"
    )


class Pod(KubeModel):
    """A pod: identity, containers and their restarts."""

    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: PodSpec = Field(default_factory=PodSpec)
    status: PodStatus = Field(default_factory=PodStatus)

    @property
    def restarts(self) -> int:
        """Restarts of all its containers."""
        return sum(c.restart_count or 0 for c in self.status.container_statuses)


class InvolvedObject(KubeModel):
    """``involvedObject`` of an event (None where the server sent none)."""

    kind: str | None = None
    name: str | None = None


class Event(KubeModel):
    """An event: what it is about."""

    involved_object: InvolvedObject = Field(
        default_factory=InvolvedObject, alias="involvedObject"
    )


class ListMeta(KubeModel):
    """``metadata`` of a list: the token of the next page."""

    continue_: str | None = Field(default=None, alias="continue")


class ObjectList(KubeModel):
    """A list answer; only its ``metadata`` is read through the view."""

    metadata: ListMeta = Field(default_factory=ListMeta)


K = TypeVar("K", bound=KubeModel)


def parse_object(model: type[K], obj: Mapping[str, object], what: str) -> K:
    """``obj`` read through ``model``.

    Raises:
        PermanentStepError: the API answered with an object of another shape.
    """
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(map(str, first["loc"]))
        raise PermanentStepError(
            f"{what}: the API answered with an unexpected {where}: {first['msg']}"
        ) from exc

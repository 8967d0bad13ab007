"""Verify models: the checks a remediation's ``verify:`` polls after it acts.

Each names the ``family`` whose executor polls it and the Kubernetes access that
needs (``rbac``); ``VERIFIES`` lists them and the ``Verify`` union, which every
remediation's ``verify`` field takes, is generated from that list. ``Remediation``
is the base of every remediation step model.
"""

from __future__ import annotations

import typing
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal

from pydantic import Field

from receiver.model import StepKind
from receiver.rulebook.steps.base import (
    Condition,
    Duration,
    PromQL,
    Rbac,
    StepModel,
    Templated,
    Url,
)

# Reading the workload a remediation changed; after k8s.patch_hpa, the HPA
# first (its scale target is only known then).
_WORKLOAD_READS: Rbac = (
    ("apps", "deployments", ("get",)),
    ("apps", "statefulsets", ("get",)),
    ("apps", "daemonsets", ("get",)),
    ("autoscaling", "horizontalpodautoscalers", ("get",)),
)


class RolloutStatusVerify(Templated):
    """Wait until a rollout has caught up (observedGeneration, replicas ready)."""

    family: ClassVar[str] = "k8s"
    rbac: ClassVar[Rbac] = _WORKLOAD_READS
    type: Literal["k8s.rollout_status"] = "k8s.rollout_status"
    timeout: Duration = timedelta(minutes=5)


class PodsReadyVerify(Templated):
    """Wait until at least ``min_ready`` pods of the workload are ready."""

    family: ClassVar[str] = "k8s"
    rbac: ClassVar[Rbac] = (("", "pods", ("list",)), *_WORKLOAD_READS)
    type: Literal["k8s.pods_ready"] = "k8s.pods_ready"
    min_ready: int = Field(default=1, ge=1)
    timeout: Duration = timedelta(minutes=5)


class PrometheusVerify(Templated):
    """Poll a PromQL query until the condition holds or the timeout passes."""

    family: ClassVar[str] = "prometheus"
    type: Literal["prometheus.query"] = "prometheus.query"
    query: PromQL
    condition: Condition
    target: str = "default"
    timeout: Duration = timedelta(minutes=5)
    interval: Duration = timedelta(seconds=15)


class HttpVerify(Templated):
    """Poll an HTTP endpoint until it answers as expected."""

    family: ClassVar[str] = "http"
    type: Literal["http.get"] = "http.get"
    url: Url
    expect_status: int = 200
    json_path: str | None = None
    # Compared with the JSON value found; any JSON value (``object``: the
    # schema says nothing about it, as rules may name any).
    expect_value: object = None
    timeout: Duration = timedelta(minutes=5)
    interval: Duration = timedelta(seconds=15)


VERIFIES: tuple[type[Templated], ...] = (
    RolloutStatusVerify,
    PodsReadyVerify,
    PrometheusVerify,
    HttpVerify,
)

if TYPE_CHECKING:
    Verify = Templated
else:
    Verify = Annotated[typing.Union[VERIFIES], Field(discriminator="type")]  # noqa: UP007


class Remediation(StepModel):
    """The base of remediation steps: approval, destructiveness, a verify."""

    kind: ClassVar[StepKind] = StepKind.REMEDIATION
    approval: Literal["none", "required"] = "none"
    destructive: bool = Field(
        default=False,
        description="Needs two different approvers when approval is required.",
    )
    verify: Verify | None = None

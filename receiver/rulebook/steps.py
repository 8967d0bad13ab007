"""Typed step models: one pydantic model per step ``type``, validated when rules load.

Each model names its ``kind`` (diagnostic or remediation), which of its fields are
templates and the grammar their values must fit (a ``Slot`` in the field's
``Annotated`` type; ``template_fields`` lists them for docs and checks), and how
to describe the exact request it makes (``describe``), which is what dry-run
shows. A field without a slot takes no templates: a placeholder in it is a rule
error. Executors in ``receiver.steps`` run the rendered models; nothing here
does I/O.
"""

from __future__ import annotations

import functools
import re
import typing
from collections.abc import Mapping, Sequence
from datetime import timedelta
from fractions import Fraction
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from receiver.errors import QuantityError, SlotError
from receiver.model import Alert, StepKind
from receiver.rulebook.matchers import Matcher, MatchType
from receiver.rulebook.templates import (
    PLACEHOLDER,
    RenderError,
    Slot,
    SlotMarker,
    format_duration,
    parse_duration,
    render,
)

Duration = Annotated[timedelta, BeforeValidator(parse_duration)]

# Template fields: the slot names the grammar every substituted value must fit.
K8sName = Annotated[str, SlotMarker(Slot.K8S_NAME)]
Namespace = Annotated[str, SlotMarker(Slot.NAMESPACE)]
Selector = Annotated[str, SlotMarker(Slot.LABEL_SELECTOR)]
PromQL = Annotated[str, SlotMarker(Slot.PROMQL)]
RedisKey = Annotated[str, SlotMarker(Slot.REDIS_KEY)]
RedisKeyPart = Annotated[str, SlotMarker(Slot.REDIS_KEY_PART)]
Url = Annotated[str, SlotMarker(Slot.URL)]

WorkloadKind = Literal["Deployment", "StatefulSet", "DaemonSet"]
_RELATIVE = re.compile(r"(\+|x)?([0-9]+)")
# Kubernetes' quantity grammar (apimachinery resource.Quantity):
#   <quantity> ::= <sign>? <number> <suffix>
#   <number>   ::= <digits> | <digits>.<digits> | <digits>. | .<digits>
#   <suffix>   ::= Ki | Mi | Gi | Ti | Pi | Ei | n | u | m | "" | k | M | G | T | P | E
#                | (e | E) <sign>? <digits>
# A suffix is tried before an exponent, so "1E" is an exa and "1E3" is 1000.
_QUANTITY = re.compile(
    r"([+-]?)([0-9]+)?(?:\.([0-9]*))?"
    r"(?:(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)|[eE]([+-]?[0-9]+))?"
)
_BINARY_SI = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL_SI = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15}
_QUANTITY_UNITS: dict[str | None, Fraction] = {
    None: Fraction(1),
    "E": Fraction(10) ** 18,
    **{s: Fraction(2) ** e for s, e in _BINARY_SI.items()},
    **{s: Fraction(10) ** e for s, e in _DECIMAL_SI.items()},
}
_MAX_QUANTITY_CHARS = 64
_MAX_QUANTITY_EXPONENT = 64


def parse_quantity(text: str) -> Fraction:
    """The exact value of a Kubernetes quantity (``512Mi``, ``1e9``, ``500m``, ``.5``).

    A ``Fraction``, so milli- and nano-units compare exactly (``0.5`` ==
    ``500m``); memory in bytes is the value itself.

    Raises:
        QuantityError: not a quantity (a ``StepError`` and a ``ValueError``).
    """
    raw = str(text)
    found = _QUANTITY.fullmatch(raw) if len(raw) <= _MAX_QUANTITY_CHARS else None
    if found is None or (found.group(2) is None and not found.group(3)):
        raise QuantityError(
            f"invalid quantity {raw[:_MAX_QUANTITY_CHARS]!r}; use a Kubernetes "
            "quantity such as 512Mi, 4Gi, 1G, 1e9 or 500m"
        )
    sign, whole, fraction, suffix, exponent = found.groups()
    fraction = fraction or ""
    value = Fraction(int((whole or "0") + fraction), 10 ** len(fraction))
    if exponent is not None:
        power = int(exponent)
        if abs(power) > _MAX_QUANTITY_EXPONENT:
            raise QuantityError(
                f"quantity {raw!r} is out of range (exponent beyond "
                f"±{_MAX_QUANTITY_EXPONENT})"
            )
        value *= Fraction(10) ** power
    else:
        value *= _QUANTITY_UNITS[suffix]
    return -value if sign == "-" else value


def _check_quantity(text: str) -> str:
    if parse_quantity(text) <= 0:
        raise ValueError(f"quantity {text!r} must be above zero")
    return text


Quantity = Annotated[str, AfterValidator(_check_quantity)]


def _check_relative(text: str) -> str:
    if not _RELATIVE.fullmatch(str(text)):
        raise ValueError(
            f"invalid count {text!r}; use an absolute number (10), an increment "
            "(+2) or a factor (x2)"
        )
    return str(text)


RelativeCount = Annotated[str, BeforeValidator(str), AfterValidator(_check_relative)]


def _change(spec: str) -> str:
    if spec.startswith("+"):
        return f"up by {spec[1:]}"
    if spec.startswith("x"):
        return f"by a factor of {spec[1:]}"
    return f"to {spec}"


def apply_relative(spec: str, current: int) -> int:
    """Apply ``10``, ``+2`` or ``x2`` to a current count."""
    found = _RELATIVE.fullmatch(spec)
    if found is None:  # validated at load time
        raise ValueError(spec)
    op, number = found.group(1), int(found.group(2))
    if op == "+":
        return current + number
    if op == "x":
        return current * number
    return number


# (apiGroup, resource, verbs): what a step needs from the Kubernetes API; the
# README table and the Helm chart's RBAC are checked against these.
Rbac = tuple[tuple[str, str, tuple[str, ...]], ...]


def _placeholder_in(value: Any) -> str | None:
    """The first placeholder anywhere in a (nested) field value."""
    if isinstance(value, str):
        found = PLACEHOLDER.search(value)
        return found.group(0) if found else None
    items: list[Any] = []
    if isinstance(value, dict):
        items = [x for pair in value.items() for x in pair]
    elif isinstance(value, list | tuple):
        items = list(value)
    return next((p for p in map(_placeholder_in, items) if p is not None), None)


class _Templated(BaseModel):
    """Refuses placeholders in fields that declare no slot grammar."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*")
    @classmethod
    def _no_template_without_a_slot(cls, value: Any, info: ValidationInfo) -> Any:
        name = info.field_name
        if name is None or name in template_fields(cls):
            return value
        found = _placeholder_in(value)
        if found is not None:
            fields = ", ".join(template_fields(cls)) or "none"
            raise ValueError(
                f"this field takes no templates: it declares no slot grammar, so "
                f"{found} cannot be filled safely (fields of this step that take "
                f"templates: {fields})"
            )
        return value


class _Base(_Templated):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ClassVar[StepKind] = StepKind.DIAGNOSTIC
    family: ClassVar[str] = ""
    rbac: ClassVar[Rbac] = ()

    name: str = Field(default="", description="Optional label shown in traces.")
    timeout: Duration = Field(
        default=timedelta(seconds=30), description="Give up on the step after this."
    )

    def rendered(
        self, alert: Alert, one_of: Mapping[str, Sequence[str]] | None = None
    ) -> _Base:
        """A copy with every template field rendered for ``alert``.

        ``one_of`` narrows labels to listed values (the playbook's ``labels``).

        Raises:
            RenderError: a placeholder names a field the alert does not have.
            SlotError: a value is outside its field's grammar.
        """
        return render_model(self, alert, one_of)

    def target(self) -> str:
        """The object the step reads or changes, for traces."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """The exact request this step makes (verb, object, body)."""
        raise NotImplementedError

    def summary(self) -> str:
        """One line saying what the step does."""
        return str(self.describe().get("action", self.type_name()))

    @classmethod
    def type_name(cls) -> str:
        """The ``type`` discriminator value."""
        return str(cls.model_fields["type"].default)


def _find_slot(annotation: Any) -> tuple[Slot, bool] | None:
    """The slot of a template field, looking through Optional and list."""
    for meta in getattr(annotation, "__metadata__", ()):
        if isinstance(meta, SlotMarker):
            return meta.slot, False
    origin = typing.get_origin(annotation)
    for arg in typing.get_args(annotation):
        found = _find_slot(arg)
        if found is not None:
            return found[0], found[1] or origin is list
    return None


M = typing.TypeVar("M", bound=BaseModel)


def render_model(
    model: M, alert: Alert, one_of: Mapping[str, Sequence[str]] | None = None
) -> M:
    """A copy of ``model`` (a step or its ``verify``) with templates rendered.

    Raises:
        RenderError: a placeholder names a field the alert does not have.
        SlotError: a value is outside its field's grammar, naming the field.
    """
    update: dict[str, Any] = {}
    for field_name, (slot, many) in _slots(type(model)).items():
        value = getattr(model, field_name)
        if value is None:
            continue
        try:
            if many:
                update[field_name] = [render(v, alert, slot, one_of) for v in value]
            else:
                update[field_name] = render(value, alert, slot, one_of)
        except SlotError as exc:
            raise exc.in_field(field_name) from exc
        except RenderError as exc:
            raise RenderError(f"{field_name}: {exc}") from exc
    check = getattr(model, "verify", None)
    if isinstance(check, BaseModel):
        try:
            update["verify"] = render_model(check, alert, one_of)
        except SlotError as exc:
            raise exc.in_field(f"verify.{exc.field}") from exc
        except RenderError as exc:
            raise RenderError(f"verify.{exc}") from exc
    return model.model_copy(update=update)


def template_fields(cls: type[BaseModel]) -> dict[str, Slot]:
    """The fields of a step (or verify) model that take templates, with slots."""
    return {name: slot for name, (slot, _many) in _slots(cls).items()}


@functools.cache
def _slots(cls: type[BaseModel]) -> dict[str, tuple[Slot, bool]]:
    """Template fields of a step model: name -> (slot, is a list)."""
    out: dict[str, tuple[Slot, bool]] = {}
    for name, info in cls.model_fields.items():
        marker = next((m for m in info.metadata if isinstance(m, SlotMarker)), None)
        if marker is not None:
            out[name] = (marker.slot, False)
            continue
        found = _find_slot(info.annotation)
        if found is not None:
            out[name] = found
    return out


# ----------------------------------------------------------------- verification


class RolloutStatusVerify(_Templated):
    """Wait until a rollout has caught up (observedGeneration, replicas ready)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # Polls the workload; after k8s.patch_hpa, the HPA's scale target.
    rbac: ClassVar[Rbac] = (
        ("apps", "deployments", ("get",)),
        ("apps", "statefulsets", ("get",)),
        ("apps", "daemonsets", ("get",)),
        ("autoscaling", "horizontalpodautoscalers", ("get",)),
    )
    type: Literal["k8s.rollout_status"] = "k8s.rollout_status"
    timeout: Duration = timedelta(minutes=5)


class PodsReadyVerify(_Templated):
    """Wait until at least ``min_ready`` pods of the workload are ready."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    rbac: ClassVar[Rbac] = (
        ("", "pods", ("list",)),
        ("apps", "deployments", ("get",)),
        ("apps", "statefulsets", ("get",)),
        ("apps", "daemonsets", ("get",)),
        ("autoscaling", "horizontalpodautoscalers", ("get",)),
    )
    type: Literal["k8s.pods_ready"] = "k8s.pods_ready"
    min_ready: int = Field(default=1, ge=1)
    timeout: Duration = timedelta(minutes=5)


class PrometheusVerify(_Templated):
    """Poll a PromQL query until the condition holds or the timeout passes."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["prometheus.query"] = "prometheus.query"
    query: PromQL
    condition: str = Field(pattern=r"^\s*(<|<=|>|>=|==|!=)\s*-?[0-9.eE+-]+\s*$")
    target: str = "default"
    timeout: Duration = timedelta(minutes=5)
    interval: Duration = timedelta(seconds=15)


class HttpVerify(_Templated):
    """Poll an HTTP endpoint until it answers as expected."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["http.get"] = "http.get"
    url: Url
    expect_status: int = 200
    json_path: str | None = None
    expect_value: Any = None
    timeout: Duration = timedelta(minutes=5)
    interval: Duration = timedelta(seconds=15)


Verify = Annotated[
    RolloutStatusVerify | PodsReadyVerify | PrometheusVerify | HttpVerify,
    Field(discriminator="type"),
]


class _Remediation(_Base):
    kind: ClassVar[StepKind] = StepKind.REMEDIATION
    approval: Literal["none", "required"] = "none"
    destructive: bool = Field(
        default=False,
        description="Needs two different approvers when approval is required.",
    )
    verify: Verify | None = None


# ----------------------------------------------------------------- Kubernetes


class _K8s(_Base):
    family: ClassVar[str] = "k8s"
    namespace: Namespace = Field(description="Namespace; usually {labels.namespace}.")


class K8sPods(_K8s):
    """Pods of a workload or selector: phase, readiness, restarts, last exit."""

    rbac: ClassVar[Rbac] = (
        ("", "pods", ("list",)),
        ("apps", "deployments", ("get",)),
        ("apps", "statefulsets", ("get",)),
        ("apps", "daemonsets", ("get",)),
    )

    type: Literal["k8s.pods"] = "k8s.pods"
    workload: K8sName | None = None
    workload_kind: WorkloadKind = "Deployment"
    selector: Selector | None = None
    limit: int = Field(default=20, ge=1, le=200)

    def target(self) -> str:
        if self.workload:
            return f"{self.workload_kind.lower()}/{self.workload} -n {self.namespace}"
        return f"pods -l {self.selector or '<all>'} -n {self.namespace}"

    def describe(self) -> dict[str, Any]:
        return {
            "verb": "list",
            "resource": "pods",
            "namespace": self.namespace,
            "selector": self.selector or f"<selector of {self.target()}>",
            "limit": self.limit,
            "action": f"list pods of {self.target()}",
        }


class K8sEvents(_K8s):
    """Recent events for an object and its pods, newest first."""

    rbac: ClassVar[Rbac] = (
        ("", "events", ("list",)),
        ("events.k8s.io", "events", ("list",)),
    )

    type: Literal["k8s.events"] = "k8s.events"
    object_kind: str = "Deployment"
    object_name: K8sName | None = None
    limit: int = Field(default=20, ge=1, le=200)

    def target(self) -> str:
        if self.object_name:
            return f"{self.object_kind.lower()}/{self.object_name} -n {self.namespace}"
        return f"namespace {self.namespace}"

    def describe(self) -> dict[str, Any]:
        return {
            "verb": "list",
            "resource": "events",
            "namespace": self.namespace,
            "involvedObject": {"kind": self.object_kind, "name": self.object_name},
            "limit": self.limit,
            "action": f"list events of {self.target()}",
        }


class K8sLogs(_K8s):
    """Tail of a pod's logs, or of each pod of a workload, optionally filtered."""

    rbac: ClassVar[Rbac] = (
        ("", "pods", ("list", "get")),
        ("", "pods/log", ("get",)),
        ("apps", "deployments", ("get",)),
        ("apps", "statefulsets", ("get",)),
        ("apps", "daemonsets", ("get",)),
    )

    type: Literal["k8s.logs"] = "k8s.logs"
    pod: K8sName | None = None
    workload: K8sName | None = None
    workload_kind: WorkloadKind = "Deployment"
    container: K8sName | None = None
    tail_lines: int = Field(default=50, ge=1, le=2000)
    max_bytes: int = Field(default=16384, ge=256, le=1048576)
    max_pods: int = Field(default=3, ge=1, le=20)
    previous: bool = False
    since: Duration | None = None
    grep: str | None = Field(
        default=None, description="RE2 regex filter, e.g. auth|jwt"
    )

    @model_validator(mode="after")
    def _one_source(self) -> K8sLogs:
        if (self.pod is None) == (self.workload is None):
            raise ValueError("set exactly one of pod or workload")
        if self.grep is not None:
            Matcher.new("grep", MatchType.REGEX, self.grep)
        return self

    def target(self) -> str:
        obj = (
            f"pod/{self.pod}"
            if self.pod
            else f"{self.workload_kind.lower()}/{self.workload}"
        )
        return f"{obj} -n {self.namespace}"

    def describe(self) -> dict[str, Any]:
        flags = f"--tail={self.tail_lines}"
        if self.previous:
            flags += " --previous"
        if self.since:
            flags += f" --since={format_duration(self.since)}"
        if self.grep:
            flags += f", lines matching /{self.grep}/"
        return {
            "verb": "get",
            "resource": "pods/log",
            "namespace": self.namespace,
            "object": self.target(),
            "tail_lines": self.tail_lines,
            "max_bytes": self.max_bytes,
            "previous": self.previous,
            "grep": self.grep,
            "since": format_duration(self.since) if self.since else None,
            "action": f"read logs of {self.target()} ({flags})",
        }


class K8sRolloutHistory(_K8s):
    """Revisions of a Deployment with change-cause, image and creation time."""

    rbac: ClassVar[Rbac] = (
        ("apps", "deployments", ("get",)),
        ("apps", "replicasets", ("list",)),
    )

    type: Literal["k8s.rollout_history"] = "k8s.rollout_history"
    deployment: K8sName
    flag_within: Duration = timedelta(hours=2)
    limit: int = Field(default=10, ge=1, le=50)

    def target(self) -> str:
        return f"deployment/{self.deployment} -n {self.namespace}"

    def describe(self) -> dict[str, Any]:
        return {
            "verb": "list",
            "resource": "replicasets",
            "namespace": self.namespace,
            "owner": f"deployment/{self.deployment}",
            "action": f"read rollout history of {self.target()} "
            f"(flag rollouts within {format_duration(self.flag_within)})",
        }


class K8sDescribe(_K8s):
    """Workload status and conditions, or an HPA's current/desired/min/max."""

    rbac: ClassVar[Rbac] = (
        ("apps", "deployments", ("get",)),
        ("apps", "statefulsets", ("get",)),
        ("apps", "daemonsets", ("get",)),
        ("autoscaling", "horizontalpodautoscalers", ("get",)),
        ("", "pods", ("get",)),
    )

    type: Literal["k8s.describe"] = "k8s.describe"
    object_kind: Literal[
        "Deployment", "StatefulSet", "DaemonSet", "HorizontalPodAutoscaler", "Pod"
    ] = "Deployment"
    object_name: K8sName

    def target(self) -> str:
        return f"{self.object_kind.lower()}/{self.object_name} -n {self.namespace}"

    def describe(self) -> dict[str, Any]:
        return {
            "verb": "get",
            "resource": self.object_kind,
            "namespace": self.namespace,
            "name": self.object_name,
            "action": f"describe {self.target()}",
        }


class K8sRolloutRestart(_K8s, _Remediation):
    """Restart a workload by stamping the restartedAt template annotation."""

    rbac: ClassVar[Rbac] = (
        ("apps", "deployments", ("get", "patch")),
        ("apps", "statefulsets", ("get", "patch")),
        ("apps", "daemonsets", ("get", "patch")),
    )

    type: Literal["k8s.rollout_restart"] = "k8s.rollout_restart"
    workload_kind: WorkloadKind = "Deployment"
    workload: K8sName

    def target(self) -> str:
        return f"{self.workload_kind.lower()}/{self.workload} -n {self.namespace}"

    def describe(self) -> dict[str, Any]:
        return {
            "verb": "patch",
            "resource": self.workload_kind,
            "namespace": self.namespace,
            "name": self.workload,
            "body": {
                "spec": {
                    "template": {
                        "metadata": {
                            "annotations": {
                                "kubectl.kubernetes.io/restartedAt": "<now, RFC 3339>"
                            }
                        }
                    }
                }
            },
            "action": f"rollout restart {self.target()}",
        }


class K8sRolloutUndo(_K8s, _Remediation):
    """Roll a Deployment back to the previous (or a named) revision, as kubectl does."""

    rbac: ClassVar[Rbac] = (
        ("apps", "deployments", ("get", "patch")),
        ("apps", "replicasets", ("list",)),
    )

    type: Literal["k8s.rollout_undo"] = "k8s.rollout_undo"
    deployment: K8sName
    to_revision: int | None = Field(default=None, ge=1)
    only_if_rollout_within: Duration | None = None

    def target(self) -> str:
        return f"deployment/{self.deployment} -n {self.namespace}"

    def describe(self) -> dict[str, Any]:
        revision: int | str = self.to_revision or "previous"
        where = (
            f"revision {self.to_revision}"
            if self.to_revision
            else "the previous revision"
        )
        cond = ""
        if self.only_if_rollout_within:
            cond = (
                " only if the last rollout happened within "
                f"{format_duration(self.only_if_rollout_within)}"
            )
        return {
            "verb": "patch",
            "resource": "Deployment",
            "namespace": self.namespace,
            "name": self.deployment,
            "to_revision": revision,
            "body": {"spec": {"template": f"<pod template of revision {revision}>"}},
            "action": f"roll back {self.target()} to {where}{cond}",
        }


class K8sScale(_K8s, _Remediation):
    """Scale a workload to an absolute or relative count, clamped to min/max."""

    rbac: ClassVar[Rbac] = (
        ("apps", "deployments", ("get",)),
        ("apps", "statefulsets", ("get",)),
        ("apps", "deployments/scale", ("get", "patch")),
        ("apps", "statefulsets/scale", ("get", "patch")),
    )

    type: Literal["k8s.scale"] = "k8s.scale"
    workload_kind: Literal["Deployment", "StatefulSet"] = "Deployment"
    workload: K8sName
    replicas: RelativeCount
    min: int = Field(default=1, ge=0)
    max: int = Field(ge=1, description="Hard cap; scaling never goes above it.")

    @model_validator(mode="after")
    def _bounds(self) -> K8sScale:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self

    def target(self) -> str:
        return f"{self.workload_kind.lower()}/{self.workload} -n {self.namespace}"

    def describe(self) -> dict[str, Any]:
        return {
            "verb": "patch",
            "resource": f"{self.workload_kind}/scale",
            "namespace": self.namespace,
            "name": self.workload,
            "body": {
                "spec": {
                    "replicas": f"{self.replicas} (clamped to {self.min}..{self.max})"
                }
            },
            "action": f"scale {self.target()} {_change(self.replicas)} "
            f"(min {self.min}, max {self.max})",
        }


class K8sPatchHpa(_K8s, _Remediation):
    """Raise an HPA's maxReplicas, absolute or relative, up to a cap."""

    rbac: ClassVar[Rbac] = (
        ("autoscaling", "horizontalpodautoscalers", ("get", "patch")),
    )

    type: Literal["k8s.patch_hpa"] = "k8s.patch_hpa"
    hpa: K8sName
    max_replicas: RelativeCount
    cap: int = Field(ge=1, description="maxReplicas never goes above this.")

    def target(self) -> str:
        return f"hpa/{self.hpa} -n {self.namespace}"

    def describe(self) -> dict[str, Any]:
        return {
            "verb": "patch",
            "resource": "HorizontalPodAutoscaler",
            "namespace": self.namespace,
            "name": self.hpa,
            "body": {"spec": {"maxReplicas": f"{self.max_replicas} (cap {self.cap})"}},
            "action": f"raise maxReplicas of {self.target()} "
            f"{_change(self.max_replicas)} (cap {self.cap})",
        }


class K8sDeletePod(_K8s, _Remediation):
    """Delete controller-owned pods so they are recreated, within caps."""

    rbac: ClassVar[Rbac] = (("", "pods", ("list", "get", "delete")),)

    type: Literal["k8s.delete_pod"] = "k8s.delete_pod"
    pod: K8sName | None = None
    selector: Selector | None = None
    max_pods: int = Field(default=1, ge=1, le=10)
    min_ready: int = Field(default=1, ge=0)

    @model_validator(mode="after")
    def _one_source(self) -> K8sDeletePod:
        if (self.pod is None) == (self.selector is None):
            raise ValueError("set exactly one of pod or selector")
        return self

    def target(self) -> str:
        if self.pod:
            return f"pod/{self.pod} -n {self.namespace}"
        return f"pods -l {self.selector} -n {self.namespace}"

    def describe(self) -> dict[str, Any]:
        return {
            "verb": "delete",
            "resource": "pods",
            "namespace": self.namespace,
            "name": self.pod,
            "selector": self.selector,
            "max_pods": self.max_pods,
            "min_ready": self.min_ready,
            "action": f"delete {self.target()} (at most {self.max_pods}, keep "
            f">= {self.min_ready} ready, only controller-owned pods)",
        }


class K8sSetMemoryLimit(_K8s, _Remediation):
    """Raise a container's memory limit (the runbook's temporary OOM fix)."""

    rbac: ClassVar[Rbac] = (
        ("apps", "deployments", ("get", "patch")),
        ("apps", "statefulsets", ("get", "patch")),
        ("apps", "daemonsets", ("get", "patch")),
    )

    type: Literal["k8s.set_memory_limit"] = "k8s.set_memory_limit"
    approval: Literal["none", "required"] = "required"
    workload_kind: WorkloadKind = "Deployment"
    workload: K8sName
    container: K8sName
    memory: Quantity
    cap: Quantity

    @model_validator(mode="after")
    def _capped(self) -> K8sSetMemoryLimit:
        if parse_quantity(self.memory) > parse_quantity(self.cap):
            raise ValueError(f"memory {self.memory} is above cap {self.cap}")
        return self

    def target(self) -> str:
        return f"{self.workload_kind.lower()}/{self.workload} -n {self.namespace}"

    def describe(self) -> dict[str, Any]:
        return {
            "verb": "patch",
            "resource": self.workload_kind,
            "namespace": self.namespace,
            "name": self.workload,
            "body": {
                "spec": {
                    "template": {
                        "spec": {
                            "containers": [
                                {
                                    "name": self.container,
                                    "resources": {"limits": {"memory": self.memory}},
                                }
                            ]
                        }
                    }
                }
            },
            "action": f"set memory limit of container {self.container} in "
            f"{self.target()} to {self.memory} (cap {self.cap})",
        }


# ----------------------------------------------------------------- Redis


class _Redis(_Base):
    family: ClassVar[str] = "redis"
    target_name: str = Field(
        default="default",
        alias="redis",
        description="Name of a redis_targets entry in settings.",
    )
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RedisGet(_Redis):
    """Read keys (e.g. circuit-breaker state)."""

    type: Literal["redis.get"] = "redis.get"
    keys: list[RedisKey] = Field(min_length=1, max_length=100)

    def target(self) -> str:
        return f"redis:{self.target_name} {' '.join(self.keys)}"

    def describe(self) -> dict[str, Any]:
        return {
            "verb": "GET",
            "redis": self.target_name,
            "keys": list(self.keys),
            "action": f"GET {' '.join(self.keys)} on redis {self.target_name}",
        }


class RedisInfo(_Redis):
    """INFO stats with the cache hit rate, as the runbook computes it."""

    type: Literal["redis.info"] = "redis.info"
    section: Literal["stats", "memory", "clients", "server", "keyspace"] = "stats"

    def target(self) -> str:
        return f"redis:{self.target_name}"

    def describe(self) -> dict[str, Any]:
        return {
            "verb": "INFO",
            "redis": self.target_name,
            "section": self.section,
            "action": f"INFO {self.section} on redis {self.target_name}"
            + (
                " (hit rate = hits / (hits + misses))"
                if self.section == "stats"
                else ""
            ),
        }


class RedisDeleteKeys(_Redis, _Remediation):
    """Delete explicitly named keys."""

    type: Literal["redis.delete_keys"] = "redis.delete_keys"
    keys: list[RedisKey] = Field(min_length=1, max_length=100)

    def target(self) -> str:
        return f"redis:{self.target_name} {' '.join(self.keys)}"

    def describe(self) -> dict[str, Any]:
        return {
            "verb": "UNLINK",
            "redis": self.target_name,
            "keys": list(self.keys),
            "action": f"UNLINK {' '.join(self.keys)} on redis {self.target_name}",
        }


def _check_pattern(pattern: str) -> str:
    stripped = pattern.strip()
    if not stripped or stripped[0] in "*?[\\":
        raise ValueError(
            f"pattern {pattern!r} has no literal prefix; start it with a fixed "
            "prefix such as 'policy:decision:*' (a bare '*' would delete everything)"
        )
    return pattern


class RedisDeletePattern(_Redis, _Remediation):
    """Delete keys matching a prefixed pattern with SCAN + UNLINK, under a cap."""

    type: Literal["redis.delete_pattern"] = "redis.delete_pattern"
    pattern: Annotated[str, AfterValidator(_check_pattern), SlotMarker(Slot.REDIS_KEY)]
    max_keys: int = Field(default=1000, ge=1, le=100_000)
    scan_count: int = Field(default=500, ge=10, le=10_000)

    def target(self) -> str:
        return f"redis:{self.target_name} {self.pattern}"

    def describe(self) -> dict[str, Any]:
        return {
            "verb": "SCAN+UNLINK",
            "redis": self.target_name,
            "pattern": self.pattern,
            "max_keys": self.max_keys,
            "action": f"SCAN MATCH {self.pattern} COUNT {self.scan_count} and UNLINK "
            f"at most {self.max_keys} keys on redis {self.target_name}",
        }


class RedisResetCircuitBreaker(_Redis, _Remediation):
    """Delete ``circuit:<name>:state`` and ``circuit:<name>:failure``."""

    type: Literal["redis.reset_circuit_breaker"] = "redis.reset_circuit_breaker"
    breaker: RedisKeyPart = Field(description="Breaker name, e.g. {labels.siem}.")

    def keys(self) -> list[str]:
        """The two keys the runbook deletes."""
        return [f"circuit:{self.breaker}:state", f"circuit:{self.breaker}:failure"]

    def target(self) -> str:
        return f"redis:{self.target_name} circuit:{self.breaker}:*"

    def describe(self) -> dict[str, Any]:
        return {
            "verb": "UNLINK",
            "redis": self.target_name,
            "keys": self.keys(),
            "action": f"reset circuit breaker {self.breaker!r}: UNLINK "
            f"{' '.join(self.keys())} on redis {self.target_name}",
        }


# ----------------------------------------------------------------- HTTP


class HttpGet(_Base):
    """Probe an endpoint: status, latency, a capped body excerpt, a JSON value."""

    family: ClassVar[str] = "http"
    type: Literal["http.get"] = "http.get"
    url: Url
    json_path: str | None = Field(default=None, description="e.g. overall_healthy")
    expect_status: int = 200
    max_body_bytes: int = Field(default=2048, ge=0, le=65536)

    def target(self) -> str:
        return self.url

    def describe(self) -> dict[str, Any]:
        return {"verb": "GET", "url": self.url, "action": f"GET {self.url}"}


class HttpRequest(_Remediation):
    """Call a remediation webhook on an allowlisted host."""

    family: ClassVar[str] = "http"
    type: Literal["http.request"] = "http.request"
    method: Literal["POST", "PUT", "PATCH", "DELETE"] = "POST"
    url: Url
    json_body: dict[str, Any] | None = Field(default=None, alias="json")
    headers: dict[str, str] = Field(default_factory=dict)
    expect_status: list[int] = Field(default_factory=lambda: [200, 201, 202, 204])
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def target(self) -> str:
        return self.url

    def describe(self) -> dict[str, Any]:
        return {
            "verb": self.method,
            "url": self.url,
            "body": self.json_body,
            "action": f"{self.method} {self.url}",
        }


# ----------------------------------------------------------------- Prometheus


class PrometheusQuery(_Base):
    """Instant PromQL query, templated with alert labels."""

    family: ClassVar[str] = "prometheus"
    type: Literal["prometheus.query"] = "prometheus.query"
    query: PromQL
    target_name: str = Field(default="default", alias="prometheus")
    condition: str | None = Field(
        default=None,
        pattern=r"^\s*(<|<=|>|>=|==|!=)\s*-?[0-9.eE+-]+\s*$",
        description="Threshold to report against, e.g. '< 0.001'.",
    )
    max_series: int = Field(default=20, ge=1, le=500)
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def target(self) -> str:
        return f"prometheus:{self.target_name}"

    def describe(self) -> dict[str, Any]:
        cond = f" (expect {self.condition.strip()})" if self.condition else ""
        return {
            "verb": "query",
            "prometheus": self.target_name,
            "query": self.query,
            "action": f"query {self.query}{cond}",
        }


# ----------------------------------------------------------------- change events


class ChangesRecent(_Base):
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

    def target(self) -> str:
        parts = [f"service {self.service}"] if self.service else []
        parts += [f"namespace {self.namespace}"] if self.namespace else []
        return " in ".join(parts) or "all services"

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


Step = Annotated[
    K8sPods
    | K8sEvents
    | K8sLogs
    | K8sRolloutHistory
    | K8sDescribe
    | K8sRolloutRestart
    | K8sRolloutUndo
    | K8sScale
    | K8sPatchHpa
    | K8sDeletePod
    | K8sSetMemoryLimit
    | RedisGet
    | RedisInfo
    | RedisDeleteKeys
    | RedisDeletePattern
    | RedisResetCircuitBreaker
    | HttpGet
    | HttpRequest
    | PrometheusQuery
    | ChangesRecent,
    Field(discriminator="type"),
]

StepModel = _Base

STEP_TYPES: dict[str, type[_Base]] = {
    cls.type_name(): cls
    for cls in (
        K8sPods,
        K8sEvents,
        K8sLogs,
        K8sRolloutHistory,
        K8sDescribe,
        K8sRolloutRestart,
        K8sRolloutUndo,
        K8sScale,
        K8sPatchHpa,
        K8sDeletePod,
        K8sSetMemoryLimit,
        RedisGet,
        RedisInfo,
        RedisDeleteKeys,
        RedisDeletePattern,
        RedisResetCircuitBreaker,
        HttpGet,
        HttpRequest,
        PrometheusQuery,
        ChangesRecent,
    )
}

# Verifications that read Kubernetes, by type: they need RBAC of their own.
VERIFY_RBAC: dict[str, Rbac] = {
    "k8s.rollout_status": RolloutStatusVerify.rbac,
    "k8s.pods_ready": PodsReadyVerify.rbac,
}

__all__ = [
    "STEP_TYPES",
    "Duration",
    "RenderError",
    "Step",
    "StepModel",
    "apply_relative",
    "parse_quantity",
]

"""The base of every step and verify model: templated fields, slots, rendering.

Each model names its ``kind`` (diagnostic or remediation), its ``family`` (the
executor that runs it), the Kubernetes access it needs (``rbac``), which of its
fields are templates and the grammar their values must fit (a ``Slot`` in the
field's ``Annotated`` type; ``template_fields`` lists them), and how to describe
the exact request it makes (``describe``), which is what dry-run shows. A field
without a slot takes no templates: a placeholder in it is a rule error. The
family modules beside this one define the models; ``registry`` assembles them.
Nothing here does I/O.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Annotated, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from receiver.errors import SlotError
from receiver.model import Alert, JSONObject, StepKind
from receiver.rulebook.templates import (
    PLACEHOLDER,
    RenderError,
    Slot,
    SlotMarker,
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
Condition = Annotated[str, Field(pattern=r"^\s*(<|<=|>|>=|==|!=)\s*-?[0-9.eE+-]+\s*$")]

# (apiGroup, resource, verbs): what a step needs from the Kubernetes API; the
# chart's RBAC and the docs' tables are generated from these.
Rbac = tuple[tuple[str, str, tuple[str, ...]], ...]
# (apiGroup, resource, verb, name): one request a rendered step makes; name is
# None when any object may be asked for (a list, or a name from the alert).
RbacNeed = tuple[str, str, str, str | None]


def _placeholder_in(value: object) -> str | None:
    """The first placeholder anywhere in a (nested) field value."""
    if isinstance(value, str):
        found = PLACEHOLDER.search(value)
        return found.group(0) if found else None
    items: list[object] = []
    if isinstance(value, dict):
        items = [x for pair in value.items() for x in pair]
    elif isinstance(value, list | tuple):
        items = list(value)
    return next((p for p in map(_placeholder_in, items) if p is not None), None)


class Templated(BaseModel):
    """Refuses placeholders in fields that declare no slot grammar.

    The base of step and verify models; ``family`` names the executor that runs
    it and ``rbac`` the Kubernetes requests its executor makes.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: ClassVar[str] = ""
    rbac: ClassVar[Rbac] = ()

    @classmethod
    def type_name(cls) -> str:
        """The ``type`` discriminator value."""
        return str(cls.model_fields["type"].default)

    @field_validator("*")
    @classmethod
    def _no_template_without_a_slot(cls, value: object, info: ValidationInfo) -> object:
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


class StepModel(Templated):
    """A diagnostic (or, through ``Remediation``, a remediation) step's params."""

    kind: ClassVar[StepKind] = StepKind.DIAGNOSTIC

    name: str = Field(default="", description="Optional label shown in traces.")
    timeout: Duration = Field(
        default=timedelta(seconds=30), description="Give up on the step after this."
    )

    def rendered(
        self, alert: Alert, one_of: Mapping[str, Sequence[str]] | None = None
    ) -> StepModel:
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

    def describe(self) -> JSONObject:
        """The exact request this step makes (verb, object, body)."""
        raise NotImplementedError

    def needs(self) -> list[RbacNeed]:
        """The Kubernetes requests this step makes, within ``rbac`` (none here).

        ``scripts/rbac-steps.py`` grants exactly these, with ``resourceNames``
        where a name is fixed in the rule.
        """
        return []

    def verify_needs(self, check: Templated) -> list[RbacNeed]:
        """The Kubernetes requests ``check`` (this step's verify) makes."""
        del check
        return []

    def summary(self) -> str:
        """One line saying what the step does."""
        return str(self.describe().get("action", self.type_name()))


def _find_slot(annotation: object) -> tuple[Slot, bool] | None:
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
    update: dict[str, object] = {}
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

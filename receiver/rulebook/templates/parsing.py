"""Load time: templates checked against their slot, parameters bound into them."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from receiver.rulebook.templates.grammars import GRAMMARS
from receiver.rulebook.templates.slots import (
    _ALERT_FIELDS,
    _NAME,
    PLACEHOLDER,
    BindError,
    Slot,
    TemplateError,
    _common,
    _Hole,
    _k8s_name_whole,
    _label_value,
    _namespace_whole,
    _redis_part_whole,
)


@dataclass(frozen=True)
class SlotMarker:
    """``Annotated`` metadata naming a step field's slot.

    The field then takes templates, and pydantic checks them against the slot's
    grammar when the rules load (``check_slot_template``).
    """

    slot: Slot

    def __get_pydantic_core_schema__(
        self, source: object, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        """Validate the field as usual, then check its template for the slot."""
        slot = self.slot
        return core_schema.no_info_after_validator_function(
            lambda text: check_slot_template(text, slot), handler(source)
        )

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """Name the slot and its grammar in the rule schema (``x-template-slot``)."""
        found = handler(schema)
        found["x-template-slot"] = self.slot.value
        found["x-template-grammar"] = GRAMMARS[self.slot].doc
        return found


# ----------------------------------------------------------------- load time


def check_template(text: str) -> str:
    """Validate placeholder names and defaults at load time; return ``text``."""
    for found in PLACEHOLDER.finditer(text):
        scope, name, default = found.groups()
        if scope == "alert":
            if name not in _ALERT_FIELDS:
                raise TemplateError(
                    f"unknown placeholder {found.group(0)!r}; "
                    f"alert fields are {', '.join(_ALERT_FIELDS)}"
                )
        elif not _NAME.fullmatch(name):
            raise TemplateError(
                f"bad placeholder {found.group(0)!r}; use {{{scope}.NAME}} with a "
                "name like [a-zA-Z_][a-zA-Z0-9_]*"
            )
        if default is None:
            continue
        if scope not in ("labels", "annotations"):
            raise TemplateError(
                f"{found.group(0)!r}: only a label or annotation placeholder "
                "takes a default (a parameter's default goes in params)"
            )
        if not default:
            raise TemplateError(
                f"{found.group(0)!r} names an empty default; drop the '|' to skip "
                "the step when the value is missing"
            )
    return text


@functools.lru_cache(maxsize=4096)
def _placed(text: str, slot: Slot) -> tuple[tuple[re.Match[str], _Hole], ...]:
    found = list(PLACEHOLDER.finditer(text))
    holes = GRAMMARS[slot].holes(text, found)
    return tuple(zip(found, holes, strict=True))


def check_slot_template(text: str, slot: Slot) -> str:
    """Check a template for its slot when the rules load; return it unchanged.

    Placeholders must be known and sit where the grammar can fill them; the
    literal text must be valid for the slot (filled with a harmless sample value
    where there are placeholders).

    Raises:
        TemplateError: saying what is wrong and how to write it.
    """
    check_template(text)
    grammar = GRAMMARS[slot]
    placed = _placed(text, slot)
    for match, hole in placed:
        default = match.group(3)
        if default is None:
            continue
        why = _common(default) or grammar.refuse(default, hole)
        if why is not None:
            raise TemplateError(
                f"the default {default!r} of {match.group(0)} is not "
                f"{grammar.noun(hole)}: {why}"
            )
    sample = PLACEHOLDER.sub("a", text)
    why = grammar.whole(sample)
    if why is not None:
        if placed:
            raise TemplateError(
                f"this template can never be {grammar.takes} (with 'a' for each "
                f"placeholder: {why})"
            )
        raise TemplateError(f"not {grammar.takes}: {why}")
    return text


def check_choice(value: str, text: str, slot: Slot, label: str) -> str | None:
    """Why a ``one_of`` value of ``label`` cannot fill its placeholders in ``text``."""
    grammar = GRAMMARS[slot]
    for match, hole in _placed(text, slot):
        if match.group(1) == "labels" and match.group(2) == label:
            why = _common(value) or grammar.refuse(value, hole)
            if why is not None:
                return f"{value!r} is not {grammar.noun(hole)}: {why}"
    return None


# A parameter's type: the grammar a literal value (or a placeholder's default)
# must meet wherever it is used, checked where a rule binds it.
PARAM_TYPES: dict[str, Callable[[str], str | None]] = {
    "k8s_name": _k8s_name_whole,
    "namespace": _namespace_whole,
    "label_value": lambda value: _label_value(value, _Hole.WHOLE),
    "redis_key_part": _redis_part_whole,
    "text": lambda _value: None,
}


def check_param_value(value: str, kind: str) -> str | None:
    """Why ``value`` is not a valid value of a parameter of type ``kind``.

    A placeholder value is checked by its default (if any); the alert value it
    stands for is checked by each slot when the step is rendered.
    """
    check = PARAM_TYPES[kind]
    found = PLACEHOLDER.fullmatch(value)
    if found is not None:
        if found.group(1) == "params":
            return "a parameter value cannot name another parameter"
        try:
            check_template(value)
        except TemplateError as exc:
            return str(exc)
        default = found.group(3)
        why = None if default is None else _common(default) or check(default)
        return None if why is None else f"its default: {why}"
    if PLACEHOLDER.search(value):
        return (
            "a value is either a literal or one whole placeholder such as "
            "{labels.namespace}"
        )
    return _common(value) or check(value)


def is_template_value(value: str) -> bool:
    """Whether a parameter value is one whole placeholder (else a literal)."""
    found = PLACEHOLDER.fullmatch(value)
    return found is not None and found.group(1) != "params"


def bind(text: str, slot: Slot, values: Mapping[str, str]) -> str:
    """Replace each ``{params.NAME}`` in ``text`` with its bound value.

    A value that is one placeholder (``{labels.namespace}``, with or without a
    default) is inserted as it stands and filled per alert later. A literal
    value must fit where it stands, like an alert value, and is escaped for it
    (quoted in PromQL, percent-encoded in a URL path). The result is checked
    for the slot again.

    Raises:
        TemplateError: a value does not fit its place, or a parameter is unbound.
    """
    grammar = GRAMMARS[slot]
    out = []
    pos = 0
    for match, hole in _placed(text, slot):
        if match.group(1) != "params":
            continue
        name = match.group(2)
        if name not in values:
            raise BindError(name, f"{match.group(0)} names no declared parameter")
        value = values[name]
        if not is_template_value(value):
            if PLACEHOLDER.search(value):
                raise BindError(
                    name,
                    "a value is either a literal or one whole placeholder such as "
                    "{labels.namespace}",
                )
            why = _common(value) or grammar.refuse(value, hole)
            if why is not None:
                raise BindError(name, f"{value!r} is not {grammar.noun(hole)}: {why}")
            value = grammar.insert(value, hole)
        out.append(text[pos : match.start()])
        out.append(value)
        pos = match.end()
    out.append(text[pos:])
    bound = "".join(out)
    try:
        return check_slot_template(bound, slot)
    except TemplateError as exc:
        names = params_used(text)
        raise BindError(names[0] if names else "", str(exc)) from exc


def params_used(text: str) -> list[str]:
    """The parameter names a template uses, in order."""
    return [m.group(2) for m in PLACEHOLDER.finditer(text) if m.group(1) == "params"]


def placeholders(text: str) -> list[str]:
    """The placeholders a template uses, in order."""
    return [m.group(0) for m in PLACEHOLDER.finditer(text)]

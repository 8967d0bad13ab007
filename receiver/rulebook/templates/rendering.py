"""Render time: an alert's values substituted into a template, each checked."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from receiver.errors import RenderError, SlotError
from receiver.model import Alert
from receiver.rulebook.templates.grammars import GRAMMARS
from receiver.rulebook.templates.parsing import (
    _placed,
)
from receiver.rulebook.templates.slots import (
    Slot,
    _common,
)

# ----------------------------------------------------------------- render time


_SOURCE = {"labels": "label", "annotations": "annotation", "alert": "alert field"}


def _lookup(alert: Alert, scope: str, name: str, default: str | None) -> str:
    if scope == "alert":
        return str(getattr(alert, name))
    if scope == "params":
        # ``bind`` replaced every parameter when the rules loaded.
        raise RenderError(f"parameter {{params.{name}}} was never bound")
    source: Mapping[str, str] = alert.labels if scope == "labels" else alert.annotations
    value = source.get(name)
    if value is None or value == "":
        if default is not None:
            return default
        raise RenderError(f"alert has no {scope[:-1]} {name!r} for {{{scope}.{name}}}")
    return value


def render(
    text: str,
    alert: Alert,
    slot: Slot,
    one_of: Mapping[str, Iterable[str]] | None = None,
) -> str:
    """Substitute alert fields into ``text``, each checked against its slot.

    ``one_of`` narrows labels to listed values (a playbook's ``labels``).

    Raises:
        RenderError: a placeholder names a field the alert does not have.
        SlotError: a value is outside the slot's grammar (or its ``one_of``).
    """
    grammar = GRAMMARS[slot]
    out = []
    pos = 0
    used: list[tuple[str, str, str]] = []
    for match, hole in _placed(text, slot):
        scope, name = match.group(1), match.group(2)
        value = _lookup(alert, scope, name, match.group(3))
        source = _SOURCE[scope]
        choices = (one_of or {}).get(name) if scope == "labels" else None
        if choices is not None and value not in set(choices):
            raise SlotError(
                source=source,
                name=name,
                value=value,
                grammar=f"one of {', '.join(choices)}",
                why=f"the playbook's labels.{name}.one_of allows only these",
            )
        why = _common(value) or grammar.refuse(value, hole)
        if why is not None:
            raise SlotError(
                source=source,
                name=name,
                value=value,
                grammar=grammar.noun(hole),
                why=why,
            )
        out.append(text[pos : match.start()])
        out.append(grammar.insert(value, hole))
        used.append((source, name, value))
        pos = match.end()
    out.append(text[pos:])
    rendered = "".join(out)
    why = grammar.whole(rendered)
    if why is not None:
        source, name, value = used[0] if used else ("template", "", text)
        raise SlotError(
            source=source, name=name, value=value, grammar=grammar.takes, why=why
        )
    return rendered

"""Decision records as the stores keep them: compacted, and filtered by a query."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from receiver.model import JSONValue, iso, json_object, json_objects
from receiver.store.handles import DecisionQuery

# A label or annotation value at least this long is stored once per record, under
# ``labels``/``annotations``; the steps that rendered it refer to it by name.
LONG_VALUE = 64
_COMPACTED_MATCH_FIELDS = ("description", "notes")
_ENCODER = msgspec.json.Encoder()


def record_text(record: Mapping[str, JSONValue]) -> str:
    """A decision record as the JSON text a store keeps (compact, UTF-8).

    About seven times cheaper than ``json.dumps`` for a runbook record, and it
    is paid for every alert decided. A float that is not a number is written
    as ``null``, so every stored record is JSON that SQLite can index.
    """
    return _ENCODER.encode(record).decode()


class _Swap:
    """Long values to their placeholders, in any string of a JSON value.

    What holds no long value is returned as it is, not copied: most of a
    record (types, decisions, short targets) has none.
    """

    def __init__(self, long_values: list[tuple[str, str]]) -> None:
        self._long_values = long_values  # longest first
        self._shortest = len(long_values[-1][0])

    def item(self, item: JSONValue) -> JSONValue:
        if isinstance(item, str):
            return self._text(item)
        if isinstance(item, dict):
            changed: dict[str, JSONValue] | None = None
            for k, v in item.items():
                new = self.item(v)
                if new is not v:
                    if changed is None:
                        changed = dict(item)
                    changed[k] = new
            return item if changed is None else changed
        if isinstance(item, list):
            swapped = [self.item(v) for v in item]
            if all(new is old for new, old in zip(swapped, item, strict=True)):
                return item
            return swapped
        return item

    def _text(self, text: str) -> str:
        if len(text) < self._shortest:
            return text
        for value, ref in self._long_values:
            if value in text:
                text = text.replace(value, ref)
        return text


def compact_record(record: Mapping[str, JSONValue]) -> Mapping[str, JSONValue]:
    """A decision record with long alert values written once, not once per step.

    Every templated step repeats the values it rendered (target, reason, the
    request it sent): a 1 KiB label in ten steps is stored ten times. Here each
    occurrence inside a match's steps becomes ``{labels.NAME}`` (or
    ``{annotations.NAME}``), the placeholder it was rendered from, and the
    record says so with ``"values_by_reference": true``. Short values and
    records without long values are returned as they are.
    """
    long_values: list[tuple[str, str]] = []
    for where in ("labels", "annotations"):
        for name, value in json_object(record.get(where)).items():
            if isinstance(value, str) and len(value) >= LONG_VALUE:
                long_values.append((value, f"{{{where}.{name}}}"))
    if not long_values or not record.get("matches"):
        return record
    long_values.sort(key=lambda pair: len(pair[0]), reverse=True)
    # JSON escapes each character on its own, so a value inside any string of
    # what is swapped is inside its JSON text: where none is (the usual case:
    # long annotations are rarely rendered into steps), nothing is walked.
    out = dict(record)
    out["values_by_reference"] = True
    text = _ENCODER.encode(
        [
            [match.get(k) for k in ("steps", *_COMPACTED_MATCH_FIELDS)]
            for match in json_objects(record["matches"])
        ]
    )
    if not any(_ENCODER.encode(value)[1:-1] in text for value, _ in long_values):
        return out
    swap = _Swap(long_values)
    matches = [
        {
            **match,
            "steps": swap.item(match.get("steps", [])),
            **{k: swap.item(match[k]) for k in _COMPACTED_MATCH_FIELDS if k in match},
        }
        for match in json_objects(record["matches"])
    ]
    out["matches"] = matches
    return out


def decision_matches(record: Mapping[str, JSONValue], query: DecisionQuery) -> bool:
    """Whether a stored trace record passes ``query``'s filters."""
    matches = json_objects(record.get("matches"))
    steps = [s for m in matches for s in json_objects(m.get("steps"))]
    decided_at = record.get("decided_at", "")
    checks = (
        not query.fingerprint or record.get("fingerprint") == query.fingerprint,
        not query.payload_id or record.get("payload_id") == query.payload_id,
        not query.since
        or (isinstance(decided_at, str) and decided_at >= (iso(query.since) or "")),
        not query.rule or any(m.get("rule") == query.rule for m in matches),
        not query.playbook or any(m.get("playbook") == query.playbook for m in matches),
        not query.decision or any(s.get("decision") == query.decision for s in steps),
    )
    return all(checks)

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


def compact_record(record: Mapping[str, JSONValue]) -> Mapping[str, JSONValue]:
    """A decision record with long alert values written once, not once per step.

    Every templated step repeats the values it rendered (target, reason, the
    request it sent): a 1 KiB label in ten steps is stored ten times. Here each
    occurrence inside a match's steps becomes ``{labels.NAME}`` (or
    ``{annotations.NAME}``), the placeholder it was rendered from, and the
    record says so with ``"values_by_reference": true``. Short values and
    records without long values are returned as they are.
    """
    long_values = sorted(
        (
            (value, f"{{{where}.{name}}}")
            for where in ("labels", "annotations")
            for name, value in json_object(record.get(where)).items()
            if isinstance(value, str) and len(value) >= LONG_VALUE
        ),
        key=lambda pair: len(pair[0]),
        reverse=True,
    )
    if not long_values or not record.get("matches"):
        return record

    def swap(item: JSONValue) -> JSONValue:
        if isinstance(item, str):
            for value, ref in long_values:
                if value in item:
                    item = item.replace(value, ref)
            return item
        if isinstance(item, dict):
            return {k: swap(v) for k, v in item.items()}
        if isinstance(item, list):
            return [swap(v) for v in item]
        return item

    matches = [
        {
            **match,
            "steps": swap(match.get("steps", [])),
            **{k: swap(match[k]) for k in _COMPACTED_MATCH_FIELDS if k in match},
        }
        for match in json_objects(record["matches"])
    ]
    out = dict(record)
    out["matches"] = matches
    out["values_by_reference"] = True
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

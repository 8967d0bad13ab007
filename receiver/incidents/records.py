"""An incident as the ``IncidentStore`` keeps it: JSON with a few indexed columns.

The store never imports ``receiver.incidents``; ``service`` and the app convert here.
"""

from __future__ import annotations

from dataclasses import replace

from receiver.incidents.model import Incident
from receiver.model import freeze
from receiver.store.incidents_base import IncidentRecord


def to_record(incident: Incident) -> IncidentRecord:
    """The stored form."""
    return IncidentRecord(
        id=incident.id,
        keys=incident.keys,
        state=incident.state.value,
        severity=incident.severity.value,
        opened_at=incident.opened_at,
        version=incident.version,
        watch=incident.active or not incident.post_mortem_reminded,
        body=freeze(incident.to_json()),
    )


def from_record(record: IncidentRecord) -> Incident:
    """The incident a stored record holds."""
    return replace(Incident.from_json(record.body), version=record.version)

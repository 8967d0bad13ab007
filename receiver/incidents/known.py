"""The incidents a service last wrote or read, so a fold need not read them again.

``IncidentService`` folds each batch of traces into incidents it first looks up
by grouping key (``find_first``) and decodes; an alert group that keeps firing
is then read, decoded, encoded and written back once per batch. This keeps the
incident as this service last stored or read it, by id and by its primary key
(the first key of the traces that fold into it).

It is a hint, never the truth: every write is checked against the stored
version (``IncidentStore.update``), so an incident someone else changed since
(another replica, the API in the edge process) fails to write and is read
again. A fold that changes nothing is not trusted either: the service reads
the store before it concludes that (``IncidentService._flush``). Bounded in
size (least recently used dropped first); resolved incidents are not kept.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from receiver.incidents.model import Incident

# Incidents kept. One with a full timeline and ledger is a few MB of objects;
# a storm's groups beyond this are read from the store as before.
KEEP = 64


class KnownIncidents:
    """Incidents as last stored or read here, by id and by primary key."""

    def __init__(self, keep: int = KEEP) -> None:
        self._keep = max(keep, 0)
        self._by_id: OrderedDict[str, Incident] = OrderedDict()
        self._by_key: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def holding(self, keys: Sequence[str]) -> Incident | None:
        """The active incident known to hold the first of ``keys``, if any.

        Only the first key: ``find_first`` would return whoever holds it, and
        an incident known for a later key may not be what an earlier key finds.
        """
        if not keys:
            return None
        incident_id = self._by_key.get(keys[0])
        if incident_id is None:
            return None
        incident = self._by_id.get(incident_id)
        if incident is None or not incident.active or keys[0] not in incident.keys:
            self._by_key.pop(keys[0], None)
            return None
        self._by_id.move_to_end(incident_id)
        return incident

    def get(self, incident_id: str) -> Incident | None:
        """The incident with this id as last stored or read here, if kept."""
        return self._by_id.get(incident_id)

    def remember(self, incident: Incident) -> None:
        """``incident`` is what the store now holds (written or just read)."""
        if not incident.active or self._keep == 0:
            self.forget(incident.id)
            return
        self._by_id[incident.id] = incident
        self._by_id.move_to_end(incident.id)
        for key in incident.keys:
            self._by_key[key] = incident.id
        while len(self._by_id) > self._keep:
            self._drop(*self._by_id.popitem(last=False))

    def forget(self, incident_id: str) -> None:
        """What the store holds for this id is not known here (a conflict)."""
        incident = self._by_id.pop(incident_id, None)
        if incident is not None:
            self._drop(incident_id, incident)

    def _drop(self, incident_id: str, incident: Incident) -> None:
        for key in incident.keys:
            if self._by_key.get(key) == incident_id:
                del self._by_key[key]

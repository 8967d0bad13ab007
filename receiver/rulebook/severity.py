"""Severity specifications: fixed, mapped from a label, or the runbook's matrix.

The matrix is the runbook's appendix "Incident Severity Matrix": impact (label
values ``no_impact``, ``single_user``, ``multiple_users``, ``all_users``) by how
long the alert has fired (``< 5m``, ``5m-30m``, ``30m-2h``, ``> 2h``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from receiver.model import Alert, Severity

Impact = Literal["no_impact", "single_user", "multiple_users", "all_users"]
IMPACTS: tuple[Impact, ...] = (
    "no_impact",
    "single_user",
    "multiple_users",
    "all_users",
)
# Upper bounds of the duration bands (exclusive); the last band is open.
BANDS: tuple[timedelta, ...] = (
    timedelta(minutes=5),
    timedelta(minutes=30),
    timedelta(hours=2),
)
BAND_NAMES = ("< 5 minutes", "5-30 minutes", "30 min - 2 hours", "> 2 hours")
P0, P1, P2, P3 = Severity.P0, Severity.P1, Severity.P2, Severity.P3
MATRIX: dict[Impact, tuple[Severity, Severity, Severity, Severity]] = {
    "no_impact": (P3, P3, P2, P1),
    "single_user": (P3, P2, P1, P0),
    "multiple_users": (P2, P1, P0, P0),
    "all_users": (P1, P0, P0, P0),
}


class LabelSeverity(BaseModel):
    """Severity taken from a label through a map, with a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    label: str
    map: dict[str, Severity]
    default: Severity

    def resolve(self, alert: Alert) -> tuple[Severity, str]:
        """Severity and a sentence saying how it was chosen."""
        value = alert.labels.get(self.label, "")
        if value in self.map:
            return self.map[
                value
            ], f"label {self.label}={value!r} maps to {self.map[value]}"
        return self.default, (
            f"label {self.label}={value!r} is not in the map; default {self.default}"
        )


class MatrixSeverity(BaseModel):
    """The runbook's impact x duration matrix."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    matrix: Literal["impact_duration"] = "impact_duration"
    impact_label: str = "impact"
    default_impact: Impact = Field(
        default="multiple_users",
        description="Impact assumed when the label is missing or unknown.",
    )

    def resolve(self, alert: Alert, now: datetime) -> tuple[Severity, str]:
        """Severity from the impact label and how long the alert has fired."""
        raw = alert.labels.get(self.impact_label, "")
        impact: Impact = self.default_impact
        note = ""
        if raw in IMPACTS:
            impact = raw
        else:
            note = f" ({self.impact_label}={raw!r} unknown, assumed {impact})"
        firing = alert.firing_for(now)
        band = next((i for i, upper in enumerate(BANDS) if firing < upper), len(BANDS))
        level = MATRIX[impact][band]
        return level, (
            f"impact {impact}{note} x duration {BAND_NAMES[band]} "
            f"(firing {int(firing.total_seconds())}s) = {level}"
        )


SeveritySpec = Severity | LabelSeverity | MatrixSeverity


def resolve_severity(
    spec: SeveritySpec, alert: Alert, now: datetime
) -> tuple[Severity, str]:
    """Apply any severity spec to an alert."""
    if isinstance(spec, Severity):
        return spec, f"fixed {spec}"
    if isinstance(spec, LabelSeverity):
        return spec.resolve(alert)
    return spec.resolve(alert, now)

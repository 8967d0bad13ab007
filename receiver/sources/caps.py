"""Size caps per alert, checked at the edge before anything is journaled.

Labels flow into every step and every decision record, so an alert with a
thousand labels or a megabyte value would be copied many times over. The edge
answers such a payload 413 naming the alert (its index and fingerprint) and the
label or annotation, and journals nothing of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from receiver.errors import PayloadTooLargeError


class Capped(Protocol):
    """What the caps look at: an ``Alert``, or the edge's lighter view of one."""

    @property
    def fingerprint(self) -> str: ...  # noqa: D102
    @property
    def labels(self) -> Mapping[str, str]: ...  # noqa: D102
    @property
    def annotations(self) -> Mapping[str, str]: ...  # noqa: D102


@dataclass(frozen=True)
class AlertCaps:
    """The per-alert limits (settings ``max_labels`` ... ``max_alert_bytes``)."""

    max_labels: int = 64
    max_annotations: int = 64
    max_label_value_bytes: int = 1024
    max_annotation_value_bytes: int = 16 * 1024
    max_alert_bytes: int = 64 * 1024


def _size(text: str) -> int:
    # UTF-8 length without encoding: ASCII is the common case.
    return len(text) if text.isascii() else len(text.encode("utf-8", "replace"))


def _where(index: int, alert: Capped) -> str:
    return f"alert {index} (fingerprint {alert.fingerprint[:40]!r})"


def _check_map(
    *,
    index: int,
    alert: Capped,
    kind: str,
    items: Mapping[str, str],
    max_count: int,
    max_value: int,
    setting: tuple[str, str],
) -> int:
    # The text of an error is built only for an error: this runs for every alert.
    if len(items) > max_count:
        raise PayloadTooLargeError(
            f"{_where(index, alert)} has {len(items)} {kind}s, over the cap of "
            f"{max_count} ({setting[0]})",
            errors=[{"pointer": f"/alerts/{index}/{kind}s", "detail": "too many"}],
        )
    total = 0
    for name, value in items.items():
        # Inline: this loop runs for every label of every alert at the edge.
        name_size = len(name) if name.isascii() else _size(name)
        value_size = len(value) if value.isascii() else _size(value)
        if value_size > max_value or name_size > max_value:
            which = "name" if name_size > max_value else "value"
            raise PayloadTooLargeError(
                f"{_where(index, alert)} {kind} {name[:60]!r}: {which} of "
                f"{max(name_size, value_size)} bytes is over the cap of {max_value} "
                f"({setting[1]})",
                errors=[
                    {
                        "pointer": f"/alerts/{index}/{kind}s/{name[:60]}",
                        "detail": "too long",
                    }
                ],
            )
        total += name_size + value_size
    return total


def check_caps(alerts: Sequence[Capped], caps: AlertCaps) -> None:
    """Raise ``PayloadTooLargeError`` for the first alert over a cap."""
    for index, alert in enumerate(alerts):
        total = _check_map(
            index=index,
            alert=alert,
            kind="label",
            items=alert.labels,
            max_count=caps.max_labels,
            max_value=caps.max_label_value_bytes,
            setting=("max_labels", "max_label_value_bytes"),
        )
        total += _check_map(
            index=index,
            alert=alert,
            kind="annotation",
            items=alert.annotations,
            max_count=caps.max_annotations,
            max_value=caps.max_annotation_value_bytes,
            setting=("max_annotations", "max_annotation_value_bytes"),
        )
        if total > caps.max_alert_bytes:
            raise PayloadTooLargeError(
                f"{_where(index, alert)}: its labels and annotations hold {total} "
                f"bytes, over the cap of {caps.max_alert_bytes} (max_alert_bytes)",
                errors=[{"pointer": f"/alerts/{index}", "detail": "too large"}],
            )

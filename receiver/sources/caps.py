"""Size caps per alert, checked at the edge before anything is journaled.

Labels flow into every step and every decision record, so an alert with a
thousand labels or a megabyte value would be copied many times over. The edge
answers such a payload 413 naming the alert (its index and fingerprint) and the
label or annotation, and journals nothing of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from receiver.errors import PayloadTooLargeError
from receiver.model import Alert


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


def _check_map(
    *,
    where: str,
    pointer: str,
    kind: str,
    items: Mapping[str, str],
    max_count: int,
    max_value: int,
    setting: tuple[str, str],
) -> int:
    if len(items) > max_count:
        raise PayloadTooLargeError(
            f"{where} has {len(items)} {kind}s, over the cap of {max_count} "
            f"({setting[0]})",
            errors=[{"pointer": f"{pointer}/{kind}s", "detail": "too many"}],
        )
    total = 0
    for name, value in items.items():
        name_size, value_size = _size(name), _size(value)
        if value_size > max_value or name_size > max_value:
            which = "name" if name_size > max_value else "value"
            raise PayloadTooLargeError(
                f"{where} {kind} {name[:60]!r}: {which} of "
                f"{max(name_size, value_size)} bytes is over the cap of {max_value} "
                f"({setting[1]})",
                errors=[
                    {"pointer": f"{pointer}/{kind}s/{name[:60]}", "detail": "too long"}
                ],
            )
        total += name_size + value_size
    return total


def check_caps(alerts: Sequence[Alert], caps: AlertCaps) -> None:
    """Raise ``PayloadTooLargeError`` for the first alert over a cap."""
    for index, alert in enumerate(alerts):
        where = f"alert {index} (fingerprint {alert.fingerprint[:40]!r})"
        total = _check_map(
            where=where,
            pointer=f"/alerts/{index}",
            kind="label",
            items=alert.labels,
            max_count=caps.max_labels,
            max_value=caps.max_label_value_bytes,
            setting=("max_labels", "max_label_value_bytes"),
        )
        total += _check_map(
            where=where,
            pointer=f"/alerts/{index}",
            kind="annotation",
            items=alert.annotations,
            max_count=caps.max_annotations,
            max_value=caps.max_annotation_value_bytes,
            setting=("max_annotations", "max_annotation_value_bytes"),
        )
        if total > caps.max_alert_bytes:
            raise PayloadTooLargeError(
                f"{where}: its labels and annotations hold {total} bytes, over the "
                f"cap of {caps.max_alert_bytes} (max_alert_bytes)",
                errors=[{"pointer": f"/alerts/{index}", "detail": "too large"}],
            )

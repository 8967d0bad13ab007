"""Alertmanager webhook payloads (version 4) into alerts.

Tolerates fields newer Alertmanagers add (``notification_reason``,
``routeLabels``); ``endsAt`` of ``0001-01-01T00:00:00Z`` means "not ended".
``truncatedAlerts`` (Alertmanager's ``max_alerts``) is kept in each alert's
``refs`` so the edge can warn and the trace can say that alerts of the group
were left out.

A body is decoded by msgspec first (a third of pydantic's time for one alert,
a seventh for a group of 20, measured); whatever that strict decoder refuses or
could read differently goes through the pydantic model, which gives the same
alerts for every body both accept and the detailed error for a bad one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Annotated, Literal, Protocol

import msgspec
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from receiver.kept import Kept
from receiver.model import Alert, Status, freeze
from receiver.sources.caps import AlertCaps, Capped
from receiver.sources.wire import Timestamp, may_overflow, parse_json, to_utc

_ZERO_YEAR = 1
# Alertmanager counts the alerts it left out in a uint64: nothing larger is one
# (and a count a float cannot hold would break the metric it is added to).
_MAX_TRUNCATED = 2**64 - 1
# A body with more opening brackets than this may nest deeper than pydantic's
# JSON parser allows (200 levels, an error msgspec does not make): it takes the
# pydantic path.
_FAST_MAX_OPENERS = 200
# Digits past the microsecond: pydantic drops them, msgspec would round.
_PAST_MICROS = re.compile(r"(\.\d{6})\d+")
# Times already read (resends repeat them; Go's zero time is in most payloads).
_TIMES_KEPT = 4096
_TIMES: Kept[str, datetime] = Kept(_TIMES_KEPT)
# Known-field decoders holding alerts to caps, by caps (one per edge, mostly).
_CAPPED_KEPT = 16
_CAPPED: Kept[AlertCaps, msgspec.json.Decoder[_KnownWebhook]] = Kept(_CAPPED_KEPT)


class AmAlert(BaseModel):
    """One alert of a webhook payload."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: Timestamp  # noqa: N815 (wire name)
    endsAt: Timestamp | None = None  # noqa: N815
    generatorURL: str = ""  # noqa: N815
    fingerprint: str = Field(min_length=1)


class AmWebhook(BaseModel):
    """The Alertmanager webhook body."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    version: str = "4"
    receiver: str = ""
    status: Literal["firing", "resolved"]
    alerts: list[AmAlert]
    groupLabels: dict[str, str] = Field(default_factory=dict)  # noqa: N815
    commonLabels: dict[str, str] = Field(default_factory=dict)  # noqa: N815
    commonAnnotations: dict[str, str] = Field(default_factory=dict)  # noqa: N815
    externalURL: str = ""  # noqa: N815
    groupKey: str = ""  # noqa: N815
    truncatedAlerts: int = Field(default=0, le=_MAX_TRUNCATED)  # noqa: N815


class _FastAlert(msgspec.Struct):
    """``AmAlert`` for msgspec, times kept as text (parsed as pydantic does)."""

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    startsAt: str  # noqa: N815 (wire name)
    fingerprint: Annotated[str, msgspec.Meta(min_length=1)]
    annotations: dict[str, str] = {}
    endsAt: str | None = None  # noqa: N815
    generatorURL: str = ""  # noqa: N815


class _FastWebhook(msgspec.Struct):
    """``AmWebhook`` for msgspec: the same fields, types and defaults."""

    status: Literal["firing", "resolved"]
    alerts: list[_FastAlert]
    version: str = "4"
    receiver: str = ""
    groupLabels: dict[str, str] = {}  # noqa: N815
    commonLabels: dict[str, str] = {}  # noqa: N815
    commonAnnotations: dict[str, str] = {}  # noqa: N815
    externalURL: str = ""  # noqa: N815
    groupKey: str = ""  # noqa: N815
    # msgspec bounds an int to int64 at most: the rest of uint64 takes the
    # pydantic path, which bounds it to ``_MAX_TRUNCATED``.
    truncatedAlerts: Annotated[int, msgspec.Meta(le=2**63 - 1)] = 0  # noqa: N815


class _KnownAlert(_FastAlert, forbid_unknown_fields=True):
    """``_FastAlert`` with no field it does not know (see ``_KNOWN``)."""


class _KnownWebhook(_FastWebhook, forbid_unknown_fields=True):
    """``_FastWebhook`` with no field it does not know (see ``_KNOWN``)."""

    # Read-only once decoded: a list of the subclass is a list of the base.
    alerts: list[_KnownAlert]  # type: ignore[assignment]


_DECODER = msgspec.json.Decoder(_FastWebhook)
# A body of known fields only (what Alertmanager sends) nests four levels deep
# at most: it needs no count of its brackets (see ``_FAST_MAX_OPENERS``), which
# costs more than the decoding of a 20-alert group's labels.
_KNOWN = msgspec.json.Decoder(_KnownWebhook)


def _time(text: str) -> datetime:
    """An RFC 3339 time as ``Timestamp`` reads it (``ValueError`` otherwise)."""
    value = _TIMES.get(text)
    if value is not None:
        return value
    try:
        value = msgspec.convert(_PAST_MICROS.sub(r"\1", text), datetime)
    except msgspec.ValidationError as exc:
        raise ValueError(str(exc)) from None
    value = to_utc(value)
    return _TIMES.keep(text, value)


def _decode(
    body: bytes,
    known: msgspec.json.Decoder[_KnownWebhook] | None = _KNOWN,
    *,
    lenient: bool = True,
) -> tuple[_FastWebhook, list[tuple[datetime, datetime | None]]] | None:
    """A body as msgspec reads it, with its times; None for the pydantic path.

    ``known``: the decoder of known fields to try first (``_KNOWN``, or a
    capped one); None to go straight to the one that ignores unknown fields,
    which ``lenient`` (the default) tries whenever the first refuses a body.
    """
    payload: _FastWebhook | None = None
    if known is not None:
        try:
            payload = known.decode(body)
        except msgspec.ValidationError:
            # A field it does not know, a text over a cap, or a bad value (read
            # leniently below, refused again if bad).
            if not lenient:
                return None
        except msgspec.DecodeError:
            return None
    if payload is None:
        # Too deep for pydantic's parser, or a number past a float's range in a
        # field msgspec skips without looking: the pydantic path refuses them.
        if body.count(b"{") + body.count(b"[") > _FAST_MAX_OPENERS or may_overflow(
            body
        ):
            return None
        try:
            payload = _DECODER.decode(body)
        except msgspec.DecodeError:
            return None
    try:
        times = [
            (_time(a.startsAt), None if a.endsAt is None else _time(a.endsAt))
            for a in payload.alerts
        ]
    except ValueError:
        return None
    return payload, times


def _capped(caps: AlertCaps) -> msgspec.json.Decoder[_KnownWebhook]:
    """The known-field decoder that also holds every alert to ``caps``.

    msgspec counts characters, the caps bytes: a text of at most a quarter of a
    cap's bytes in characters is within it (UTF-8 spends four bytes on a
    character at most). What it refuses is read again uncapped and sized text
    by text by ``check_caps``, for the error. An alert's total is left to the
    caller (``admit`` proves it from the body's size).
    """
    found = _CAPPED.get(caps)
    if found is not None:
        return found

    def bounded(count: int, size: int) -> object:
        text = Annotated[str, msgspec.Meta(max_length=size // 4)]
        return Annotated[dict[text, text], msgspec.Meta(max_length=count)]

    alert = msgspec.defstruct(
        "_CappedAlert",
        [
            ("labels", bounded(caps.max_labels, caps.max_label_value_bytes)),
            (
                "annotations",
                bounded(caps.max_annotations, caps.max_annotation_value_bytes),
                {},
            ),
        ],
        bases=(_KnownAlert,),
        forbid_unknown_fields=True,
    )
    webhook = msgspec.defstruct(
        "_CappedWebhook",
        [("alerts", list[alert])],  # type: ignore[valid-type]
        bases=(_KnownWebhook,),
        forbid_unknown_fields=True,
    )
    decoder: msgspec.json.Decoder[_KnownWebhook] = msgspec.json.Decoder(webhook)
    return _CAPPED.keep(caps, decoder)


class AdmittedAlert(Capped, Protocol):
    """An alert as the edge sees it: what the caps look at, and its status."""

    @property
    def status(self) -> Status: ...  # noqa: D102


@dataclass(frozen=True, slots=True)
class Admitted:
    """What the edge needs of a webhook before its 202; the worker reads the rest.

    ``alerts`` are what the caps look at (the decoded alerts, or ``Alert``s from
    the pydantic path), ``starts`` each alert's start (None: not given).
    ``checked``: every alert is known to be within the caps given to ``admit``
    (else the edge sizes them with ``check_caps``).
    """

    alerts: Sequence[AdmittedAlert]
    starts: Sequence[datetime | None]
    truncated: int
    group_key: str
    checked: bool = False


def admit(body: bytes, caps: AlertCaps | None = None) -> Admitted:
    """Validate a raw webhook body as ``from_body`` does, without building alerts.

    Raises the same ``InputError`` for a bad body; for a good one returns only
    what the edge checks (caps) and journals (each alert's state). With
    ``caps``, the decoder holds the alerts to them where it can (``checked``).
    """
    if caps is not None and len(body) <= caps.max_alert_bytes:
        # No alert's labels and annotations take more UTF-8 bytes than the
        # whole body: the total per alert needs no counting.
        decoded = _decode(body, _capped(caps), lenient=False)
        checked = decoded is not None
        if decoded is None:
            # Over a cap, a field it does not know, or bad: read leniently (the
            # known fields were tried).
            decoded = _decode(body, None)
    else:
        checked = False
        decoded = _decode(body)
    if decoded is None:
        alerts = _strict(body)
        truncated = int(alerts[0].refs.get("truncated_alerts", "0")) if alerts else 0
        key = alerts[0].refs.get("group_key", "") if alerts else ""
        return Admitted(
            alerts,
            [a.starts_at for a in alerts],
            truncated,
            key,
        )
    payload, times = decoded
    return Admitted(
        payload.alerts,
        [None if starts.year == _ZERO_YEAR else starts for starts, _ in times],
        max(payload.truncatedAlerts, 0),
        payload.groupKey,
        checked,
    )


def _strict(body: bytes) -> list[Alert]:
    """``from_body`` refusing what the edge refuses and pydantic's JSON reads.

    ``model_validate_json`` takes ``NaN``, ``Infinity`` and ``1e400`` in fields
    it ignores; a body that may hold one is decoded by ``parse_json`` (400).
    """
    if may_overflow(body) or b"NaN" in body or b"Infinity" in body:
        return to_alerts(parse_json(body), datetime.now(UTC))
    return from_body(body)


def _fast(body: bytes) -> list[Alert] | None:
    """The alerts of a body msgspec reads, or None for the pydantic path."""
    decoded = _decode(body)
    if decoded is None:
        return None
    payload, times = decoded
    refs = {"receiver": payload.receiver, "group_key": payload.groupKey}
    if payload.externalURL:
        refs["alertmanager_url"] = payload.externalURL
    if payload.truncatedAlerts > 0:
        refs["truncated_alerts"] = str(payload.truncatedAlerts)
    shared = freeze(refs)
    # The decoded dicts belong to nobody else: wrapped, not copied.
    return [
        Alert(
            source="alertmanager",
            fingerprint=a.fingerprint,
            status=a.status,
            labels=MappingProxyType(a.labels),
            annotations=MappingProxyType(a.annotations),
            starts_at=_ts(starts),
            ends_at=_ts(ends),
            generator_url=a.generatorURL,
            refs=shared,
        )
        for a, (starts, ends) in zip(payload.alerts, times, strict=True)
    ]


def _ts(value: datetime | None) -> datetime | None:
    if value is None or value.year == _ZERO_YEAR:
        return None
    return value


def from_body(body: bytes) -> list[Alert]:
    """Parse and validate a raw webhook body in one pass (the hot path).

    msgspec first; then pydantic's own JSON parser, which validates without
    building Python dicts first; only a body that fails both takes the slower
    path, for the detailed error.
    """
    alerts = _fast(body)
    if alerts is not None:
        return alerts
    try:
        payload = AmWebhook.model_validate_json(body)
    except ValidationError:
        return to_alerts(parse_json(body), datetime.now(UTC))
    return _alerts(payload)


def to_alerts(data: object, now: datetime) -> list[Alert]:
    """Validate a decoded webhook body and return one alert per entry."""
    from receiver.sources import validate  # noqa: PLC0415 (avoid an import cycle)

    del now
    payload = validate(AmWebhook, data, "Alertmanager webhook")
    return _alerts(payload)


def _alerts(payload: AmWebhook) -> list[Alert]:
    refs = {"receiver": payload.receiver, "group_key": payload.groupKey}
    if payload.externalURL:
        refs["alertmanager_url"] = payload.externalURL
    if payload.truncatedAlerts > 0:
        refs["truncated_alerts"] = str(payload.truncatedAlerts)
    return [
        Alert(
            source="alertmanager",
            fingerprint=a.fingerprint,
            status=a.status,
            labels=freeze(a.labels),
            annotations=freeze(a.annotations),
            starts_at=_ts(a.startsAt),
            ends_at=_ts(a.endsAt),
            generator_url=a.generatorURL,
            refs=freeze(refs),
        )
        for a in payload.alerts
    ]

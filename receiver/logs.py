"""structlog set up once at start: context first, secrets redacted, JSON or console.

Called by the CLI before anything logs. Event names are past-tense snake_case.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
from collections.abc import Iterable, Mapping

import structlog
from structlog.typing import EventDict, WrappedLogger

from receiver.scrubbing import Scrubber

_KEY_CACHE = 4096
# How deep nested log values are searched for secrets.
_DEPTH = 8
_SECRET_KEYS = (
    "authorization",
    "token",
    "secret",
    "password",
    "signature",
    "routing_key",
)


class Summary:
    """Counts summed up in one info line about once a window (and when flushed).

    For what happens many times a second (webhooks accepted, payloads decided):
    each occurrence's own line is at debug, and at info one line a window says
    how many, with the first and last payload id. A line per occurrence cost a
    few percent of the CPU at saturation, and blocked the event loop on the log
    file while the database synced.
    """

    def __init__(
        self, logger: structlog.typing.FilteringBoundLogger, event: str, every: float
    ) -> None:
        self._log = logger
        self._event = event
        self._every = every
        self._due: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self._counts: dict[str, int | dict[str, int]] = {}
        self._first = ""
        self._last = ""

    def add(self, payload_id: str, **counts: int | Mapping[str, int]) -> None:
        """Count one occurrence (sums of ``counts``, key by key)."""
        for key, value in counts.items():
            if isinstance(value, int):
                held = self._counts.get(key, 0)
                self._counts[key] = (held if isinstance(held, int) else 0) + value
                continue
            into = self._counts.get(key)
            if not isinstance(into, dict):
                into = self._counts[key] = {}
            for part, n in value.items():
                into[part] = into.get(part, 0) + n
        self._first = self._first or payload_id
        self._last = payload_id
        if self._due is None:
            # In a context of its own: the line sums up many occurrences, so it
            # must not carry the log fields of the one that happened to start it.
            self._due = asyncio.get_running_loop().call_later(
                self._every, self.flush, context=contextvars.Context()
            )

    def flush(self) -> None:
        """Log what was counted since the last line (nothing if nothing was)."""
        if self._due is not None:
            self._due.cancel()
            self._due = None
        if not self._counts:
            return
        self._log.info(
            self._event,
            **self._counts,
            first_payload_id=self._first,
            last_payload_id=self._last,
        )
        self._reset()


class _Redactor:
    """Masks secret-named keys and known secret values, nested ones too."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.mask = Scrubber(secrets)
        # Whether a key names a secret, decided once per key: a busy service
        # logs the same few keys millions of times.
        self._secret_key: dict[str, bool] = {}

    def named(self, key: object) -> bool:
        """Whether ``key`` names a secret (``token``, ``password``, ...)."""
        if not isinstance(key, str):
            return False
        found = self._secret_key.get(key)
        if found is None:
            lowered = key.lower()
            found = any(part in lowered for part in _SECRET_KEYS)
            if len(self._secret_key) < _KEY_CACHE:
                self._secret_key[key] = found
        return found

    def clean(self, value: object, depth: int = 0) -> object:
        """``value`` with every known secret masked, however deep."""
        if isinstance(value, str):
            return self.mask(value)
        if value is None or isinstance(value, (bool, int, float)):
            return value
        if depth > _DEPTH:
            return "***"
        if isinstance(value, dict):
            return {
                k: "***" if self.named(k) else self.clean(v, depth + 1)
                for k, v in value.items()
            }
        if isinstance(value, (list, tuple, set, frozenset)):
            return [self.clean(v, depth + 1) for v in value]
        text = repr(value)
        masked = self.mask(text)
        return value if masked == text else masked


def redact_processor(
    secrets: Iterable[str],
) -> structlog.types.Processor:
    """A processor that masks secret-named keys and any known secret value.

    Values inside dicts, lists and tuples are masked too, and an object that
    is not plain data (an exception passed as a value) is rendered as text
    when its ``repr``, which the renderer would print, holds a secret.
    """
    redactor = _Redactor(secrets)
    mask, named, clean = redactor.mask, redactor.named, redactor.clean

    def processor(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
        for key, value in event.items():
            if named(key):
                event[key] = "***"
            elif mask and isinstance(value, str):
                event[key] = mask(value)
            elif mask and value is not None and not isinstance(value, (int, float)):
                event[key] = clean(value)
        return event

    return processor


def _message(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
    """``message`` for shippers: the event, and its error, detail or reason.

    (Without the reason, a refused webhook's line said only "webhook_rejected".)
    """
    name = str(event.get("event", ""))
    extra = event.get("error") or event.get("detail") or event.get("reason")
    event.setdefault("message", f"{name}: {extra}" if extra else name)
    return event


# Records from other libraries' loggers (aiohttp's access and server loggers,
# asyncio, warnings) go through these before the shared processors.
_FOREIGN = (
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.ExtraAdder(),
)


def configure(
    fmt: str = "auto", level: str = "info", secrets: Iterable[str] = ()
) -> None:
    """Configure structlog, and the standard library's logging, for the process.

    Every line goes to stderr in one format: JSON (one object a line, with
    ``timestamp`` in RFC 3339 UTC, ``level``, ``event`` and the same text in
    ``message``), or the console renderer on a TTY. Lines of aiohttp's own
    loggers, asyncio's and Python warnings get the same fields (and ``logger``).
    aiohttp's access log is written at ``debug`` only.
    """
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[structlog.types.Processor] = [
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # Tracebacks are rendered first so redaction sees them too.
        structlog.processors.format_exc_info,
        redact_processor(secrets),
    ]
    if use_json:
        shared.append(_message)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            *shared,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        # One write per line (message and newline together): the edge and its
        # worker child share stderr, and PrintLogger wrote the newline apart,
        # so a line of one could be glued to a line of the other.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=list(_FOREIGN),
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *shared,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    access = logging.DEBUG if level.lower() == "debug" else logging.WARNING
    logging.getLogger("aiohttp.access").setLevel(access)
    logging.captureWarnings(True)  # noqa: FBT003 (the stdlib's signature)

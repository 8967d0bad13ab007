"""structlog set up once at start: context first, secrets redacted, JSON or console.

Called by the CLI before anything logs. Event names are past-tense snake_case.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

import structlog
from structlog.typing import EventDict, WrappedLogger

from receiver.scrubbing import Scrubber

_KEY_CACHE = 4096
_SECRET_KEYS = (
    "authorization",
    "token",
    "secret",
    "password",
    "signature",
    "routing_key",
)


def redact_processor(
    secrets: Iterable[str],
) -> structlog.types.Processor:
    """A processor that masks secret-named keys and any known secret value."""
    mask = Scrubber(secrets)
    # Whether a key names a secret, decided once per key: a busy service logs
    # the same few keys millions of times.
    secret_key: dict[str, bool] = {}

    def processor(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
        for key, value in event.items():
            named = secret_key.get(key)
            if named is None:
                lowered = key.lower()
                named = any(part in lowered for part in _SECRET_KEYS)
                if len(secret_key) < _KEY_CACHE:
                    secret_key[key] = named
            if named:
                event[key] = "***"
            elif mask and isinstance(value, str):
                event[key] = mask(value)
        return event

    return processor


def _message(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
    """``message`` for shippers that look there: the event, and its error or detail."""
    name = str(event.get("event", ""))
    extra = event.get("error") or event.get("detail")
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
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
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

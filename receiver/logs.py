"""structlog set up once at start: context first, secrets redacted, JSON or console.

Called by the CLI before anything logs. Event names are past-tense snake_case.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog

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
    values = tuple(s for s in secrets if s)

    def _mask(value: Any) -> Any:
        if isinstance(value, str):
            for secret in values:
                if secret in value:
                    value = value.replace(secret, "***")
        return value

    def processor(
        _logger: Any, _name: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key in list(event):
            if any(part in key.lower() for part in _SECRET_KEYS):
                event[key] = "***"
            else:
                event[key] = _mask(event[key])
        return event

    return processor


def configure(
    fmt: str = "auto", level: str = "info", secrets: Iterable[str] = ()
) -> None:
    """Configure structlog for the whole process."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # Tracebacks are rendered first so redaction sees them too.
            structlog.processors.format_exc_info,
            redact_processor(secrets),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )

"""structlog set up once at start: context first, secrets redacted, JSON or console.

Called by the CLI before anything logs. Event names are past-tense snake_case.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog

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
    values = tuple(s for s in secrets if s)
    # Whether a key names a secret, decided once per key: a busy service logs
    # the same few keys millions of times.
    secret_key: dict[str, bool] = {}

    def _mask(value: str) -> str:
        for secret in values:
            if secret in value:
                value = value.replace(secret, "***")
        return value

    def processor(
        _logger: Any, _name: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in event.items():
            named = secret_key.get(key)
            if named is None:
                lowered = key.lower()
                named = any(part in lowered for part in _SECRET_KEYS)
                if len(secret_key) < _KEY_CACHE:
                    secret_key[key] = named
            if named:
                event[key] = "***"
            elif values and isinstance(value, str):
                event[key] = _mask(value)
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

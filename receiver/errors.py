"""The receiver's error family; only the HTTP edge maps these to status codes.

::

    ReceiverError
    ├── InputError            a request or payload is malformed (HTTP 400)
    │   ├── PayloadTooLargeError  body over the configured cap (413)
    │   └── UnsupportedMediaError wrong content type (415)
    ├── AuthError             credentials missing or wrong (401)
    │   └── ForbiddenError    authenticated but not allowed, bad signature (403)
    ├── RuleError             a rule file is invalid (load time, carries location)
    ├── ConfigError           settings are invalid or unsafe
    ├── StoreUnavailableError the journal cannot take a payload (503, sender retries)
    └── StepError             a step failed while running
        ├── TransientStepError    worth retrying (timeouts, 429, 5xx)
        └── PermanentStepError    retrying will not help (404, 403, 422, refusals)
"""

from __future__ import annotations

from dataclasses import dataclass


class ReceiverError(Exception):
    """Base of every error the receiver raises on purpose."""


class InputError(ReceiverError):
    """A request body or payload is malformed; ``pointer`` names the field."""

    def __init__(
        self, message: str, *, errors: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.errors = errors or []


class PayloadTooLargeError(InputError):
    """The body exceeds the configured size cap."""


class UnsupportedMediaError(InputError):
    """The request does not carry JSON."""


class AuthError(ReceiverError):
    """Credentials are missing or do not match (401)."""

    def __init__(self, message: str, *, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


class ForbiddenError(AuthError):
    """Credentials are present but not accepted (403)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=403)


class ConfigError(ReceiverError):
    """Settings are invalid or would be unsafe to run with."""


class StoreUnavailableError(ReceiverError):
    """The journal cannot durably accept a payload right now."""


class OverloadedError(StoreUnavailableError):
    """The journal is at its bound (depth or age): the sender should retry later."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class RuleErrorDetail:
    """One problem in a rule file, located as precisely as we can."""

    file: str
    message: str
    rule: str | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = self.file
        if self.rule:
            where += f": rule {self.rule!r}"
        if self.field:
            where += f": {self.field}"
        return f"{where}: {self.message}"


class RuleError(ReceiverError):
    """One or more rule files are invalid; ``details`` lists every problem."""

    def __init__(self, details: list[RuleErrorDetail]) -> None:
        super().__init__("\n".join(str(d) for d in details))
        self.details = details


class StepError(ReceiverError):
    """A step failed while running."""


class TransientStepError(StepError):
    """A step failed in a way that may pass on retry."""


class PermanentStepError(StepError):
    """A step failed in a way retrying will not fix."""

"""The receiver's error family; only the HTTP edge maps these to status codes.

::

    ReceiverError
    ├── InputError            a request or payload is malformed (HTTP 400)
    │   ├── PayloadTooLargeError  body or an alert over a configured cap (413)
    │   ├── UnsupportedMediaError wrong content type (415)
    │   ├── NotFoundError         the named payload or approval does not exist (404)
    │   ├── RequestTimeoutError   the body did not arrive in time (408)
    │   ├── TooManyRequestsError  too many unauthenticated bodies in flight (429)
    │   ├── ClientGoneError       the client hung up mid-body (logged, never a 5xx)
    │   └── RenderError       an alert cannot fill a step's templates (step skipped)
    │       └── SlotError     a value is outside the grammar of the field it fills
    ├── AuthError             credentials missing or wrong (401)
    │   └── ForbiddenError    authenticated but not allowed, bad signature (403)
    ├── RuleError             a rule file is invalid (load time, carries location)
    ├── ConfigError           settings are invalid or unsafe
    ├── StoreUnavailableError the journal cannot take a payload (503, sender retries)
    └── StepError             a step failed while running
        ├── TransientStepError    worth retrying (timeouts, 429, 5xx)
        └── PermanentStepError    retrying will not help (404, 403, 422, refusals)
            └── QuantityError     a Kubernetes quantity does not parse (also a
                                  ValueError, so rule validation reports it)
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


class NotFoundError(InputError):
    """A payload, approval or other named thing does not exist (404)."""


class RequestTimeoutError(InputError):
    """The request body did not arrive within the body-read timeout (408)."""


class TooManyRequestsError(InputError):
    """Too many unauthenticated bodies are being read at once (429)."""


class ClientGoneError(InputError):
    """The client disconnected before its body arrived; nobody hears the answer."""


class RenderError(InputError):
    """A step's templates cannot be filled for this alert; the step is skipped."""


def _shown(value: str, limit: int = 60) -> str:
    """A value for a message: repr, cut to ``limit`` characters."""
    text = repr(value[:limit])
    return text if len(value) <= limit else f"{text}... ({len(value)} characters)"


class SlotError(RenderError):
    """An alert value is outside the grammar of the step field it would fill.

    ``source`` is ``label``, ``annotation`` or ``alert field``; ``grammar`` names
    what the field takes ("a URL path segment"); ``why`` says what is wrong.
    """

    def __init__(
        self,
        *,
        source: str,
        name: str,
        value: str,
        grammar: str,
        why: str,
        field: str = "",
    ) -> None:
        self.source = source
        self.name = name
        self.value = value
        self.grammar = grammar
        self.why = why
        self.field = field
        where = f" for {field}" if field else ""
        super().__init__(
            f"{source} {name}={_shown(value)}{where} is not {grammar}: {why}; "
            "step not run"
        )

    def in_field(self, field: str) -> SlotError:
        """The same error, naming the step field it was meant for."""
        return SlotError(
            source=self.source,
            name=self.name,
            value=self.value,
            grammar=self.grammar,
            why=self.why,
            field=field,
        )


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


class QuantityError(PermanentStepError, ValueError):
    """A Kubernetes quantity (``512Mi``, ``1e9``) does not parse.

    A ``StepError`` for executors reading live objects, and a ``ValueError`` so a
    rule's own quantity fails validation with its location.
    """

"""The groups of settings, one model per concern, each field described.

``Settings`` (``receiver.settings.model``) holds one of each. A component is
handed only its group: the Kubernetes executor ``settings.kube``, the sinks
``settings.sinks`` with ``settings.pagerduty`` and ``settings.slack``, the
authenticator ``settings.auth``.

Every field keeps the environment variable it has always had:
``RECEIVER_`` + ``legacy_prefix`` + field name, unless ``legacy_names`` names it
otherwise (``receiver.settings.names`` builds the table from these two).
The descriptions are the settings reference (docs/settings.md is generated
from them). The groups for what the receiver talks to (Kubernetes, Redis,
sinks, ...) are in ``receiver.settings.integrations``.
"""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import NoDecode

from receiver.settings.values import (
    CommaList,
    Credentials,
    Duration,
    PathList,
    SecretMapping,
    redis_identity,
    split_list,
)

ENV_PREFIX = "RECEIVER_"
SinkName = Literal["pagerduty_note", "pagerduty_event", "slack", "webhook"]
Mode = Literal["dry-run", "diagnose", "execute"]
SinkList = Annotated[list[SinkName], NoDecode, BeforeValidator(split_list)]


class Group(BaseModel):
    """A group of settings: frozen, and unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    legacy_prefix: ClassVar[str] = ""
    legacy_names: ClassVar[dict[str, str]] = {}

    @classmethod
    def flat_key(cls, field: str) -> str:
        """The field's flat name (the old YAML key; the environment's, lower-case)."""
        return cls.legacy_names.get(field, cls.legacy_prefix + field)

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable that sets ``field``."""
        return ENV_PREFIX + cls.flat_key(field).upper()


class ServerSettings(Group):
    """Where the HTTP service listens and how it logs."""

    host: str = Field(
        default="127.0.0.1",
        description="Address to listen on; beyond loopback the receiver refuses "
        "to start without credentials.",
    )
    port: int = Field(default=8080, ge=0, le=65535, description="TCP port.")
    max_connections: int = Field(
        default=1000,
        ge=1,
        description="Open client connections; more are answered 503 and closed.",
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto: console on a TTY, JSON otherwise."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Least severe log level written."
    )

    @property
    def loopback_only(self) -> bool:
        """Whether ``host`` is a loopback address (or localhost)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


class EngineSettings(Group):
    """What the receiver decides with, and how much it may do."""

    mode: Mode = Field(
        default="dry-run",
        description="dry-run: nothing is contacted; diagnose: read-only "
        "diagnostics run and sinks post, remediations are described; execute: "
        "remediations run too.",
    )
    rules: PathList = Field(
        default_factory=lambda: [Path("rules")],
        description="Rule files or directories.",
    )
    workers: int = Field(
        default=4,
        ge=1,
        le=256,
        description="Payloads one worker process decides at a time.",
    )
    diagnostics_reuse: Duration = Field(
        default=timedelta(minutes=10),
        description="Reuse a diagnostic's result for an unchanged alert "
        "occurrence this long (0s: always run again).",
    )
    paused: bool = Field(
        default=False,
        description="Start with remediations paused (diagnostics and notes go "
        "on); POST/DELETE /api/v1/pause switches it at run time.",
    )


_CREDENTIAL_FIELDS = (
    "tokens",
    "basic",
    "read_tokens",
    "replay_tokens",
    "approve_tokens",
    "admin_tokens",
    "approver_tokens",
    "pagerduty_secrets",
    "routing_keys",
)


class IncidentSettings(Group):
    """How incidents above alerts are kept up to date."""

    legacy_prefix: ClassVar[str] = "incident_"

    tick_interval: Duration = Field(
        default=timedelta(seconds=15),
        ge=timedelta(seconds=1),
        le=timedelta(minutes=5),
        description="How often incident clocks, severity re-evaluation, "
        "escalations and update cadences are checked (1s to 5m): a breach or a "
        "due update is noticed at most this late.",
    )


class AuthSettings(Group):
    """Credentials callers present; each token list grants its scopes."""

    legacy_names: ClassVar[dict[str, str]] = {
        "tokens": "auth_tokens",
        "basic": "basic_auth",
    }

    tokens: Credentials = Field(
        default_factory=list,
        description="Bearer tokens for the Alertmanager webhook; they may also "
        "read the API (scopes webhook, read), never replay with execute, approve "
        "or administer.",
    )
    basic: SecretStr | None = Field(
        default=None,
        description="'user:password' accepted as HTTP basic auth (scopes webhook, "
        "read, like the tokens).",
    )
    read_tokens: Credentials = Field(
        default_factory=list,
        description="Bearer tokens that may only read the API (scope read).",
    )
    replay_tokens: Credentials = Field(
        default_factory=list,
        description="Bearer tokens that may read and replay with execute "
        "(scopes read, replay).",
    )
    approve_tokens: Credentials = Field(
        default_factory=list,
        description="Bearer tokens that may read and approve or reject "
        "remediations (scopes read, approve).",
    )
    admin_tokens: Credentials = Field(
        default_factory=list,
        description="Bearer tokens that may read and use the admin endpoints "
        "(scopes read, admin).",
    )
    approver_tokens: SecretMapping = Field(
        default_factory=dict,
        description="Approver name (as in playbook approvers, e.g. an email) -> "
        "that person's own token (scopes read, approve). The API and the console "
        "then know who approves; a playbook that names approvers accepts only "
        "these, and two-approver steps need two of them.",
    )
    pagerduty_secrets: Credentials = Field(
        default_factory=list,
        description="PagerDuty V3 webhook signing secrets (several for rotation).",
    )
    routing_keys: Credentials = Field(
        default_factory=list,
        description="Events API v2 routing keys accepted on /v2/enqueue.",
    )

    @model_validator(mode="after")
    def _no_empty_credentials(self) -> AuthSettings:
        for name in _CREDENTIAL_FIELDS:
            value = getattr(self, name)
            if isinstance(value, dict):
                value = list(value.values())
            values = value if isinstance(value, list) else [value]
            if any(s is not None and not s.get_secret_value().strip() for s in values):
                raise ValueError(
                    f"{self.env_name(name)} holds an empty or whitespace-only "
                    "credential; remove it or set a real value (an empty credential "
                    "would let anyone in)"
                )
        if self.basic is not None:
            user, sep, password = self.basic.get_secret_value().partition(":")
            if not sep or not user.strip() or not password.strip():
                raise ValueError(
                    f"{self.env_name('basic')} must be 'user:password', both non-empty"
                )
        return self

    @property
    def configured(self) -> bool:
        """Whether any credential is configured."""
        return bool(
            self.tokens
            or self.read_tokens
            or self.replay_tokens
            or self.approve_tokens
            or self.admin_tokens
            or self.approver_tokens
            or self.basic
            or self.pagerduty_secrets
            or self.routing_keys
        )


class EdgeSettings(Group):
    """What the HTTP edge reads, waits for and lets one alert hold."""

    max_body_bytes: int = Field(
        default=5 * 1024 * 1024, ge=1024, description="Request body cap (413 above)."
    )
    max_unauthenticated_body_bytes: int = Field(
        default=512 * 1024,
        ge=1024,
        description="Body cap for the endpoints whose credential is in or over the "
        "body (PagerDuty webhooks, Events v2); PagerDuty's own limit is 512 KB.",
    )
    unauthenticated_body_reads: int = Field(
        default=32,
        ge=1,
        description="Bodies read at once before their sender is authenticated "
        "(PagerDuty webhooks, Events v2); more are answered 429.",
    )
    body_timeout: Duration = Field(
        default=timedelta(seconds=10),
        gt=timedelta(0),
        description="A request body must arrive within this time (408 otherwise).",
    )
    max_labels: int = Field(
        default=64, ge=1, description="Labels per alert (413 above)."
    )
    max_annotations: int = Field(
        default=64, ge=1, description="Annotations per alert (413 above)."
    )
    max_label_value_bytes: int = Field(
        default=1024,
        ge=16,
        description="Bytes in one label name or value (413 above).",
    )
    max_annotation_value_bytes: int = Field(
        default=16 * 1024,
        ge=16,
        description="Bytes in one annotation value (413 above).",
    )
    max_alert_bytes: int = Field(
        default=64 * 1024,
        ge=256,
        description="Bytes in all labels and annotations of one alert (413 above).",
    )


class StoreSettings(Group):
    """Where state lives."""

    legacy_names: ClassVar[dict[str, str]] = {
        "url": "store",
        "allow_eviction": "store_allow_eviction",
    }

    url: str = Field(
        default="sqlite:///receiver.db",
        description="State store: sqlite:///PATH (one instance) or redis://HOST "
        "(replicas).",
    )
    allow_eviction: bool = Field(
        default=False,
        description="Run remediations (execute mode) on a Redis store that may "
        "evict keys (maxmemory set, maxmemory-policy not noeviction). Without it "
        "the receiver refuses to start in execute mode there: an evicted lock or "
        "claim can let a remediation run twice. Only for a Redis that never "
        "reaches its maxmemory; the error is logged all the same.",
    )

    @field_validator("url")
    @classmethod
    def _a_store_url(cls, url: str) -> str:
        """sqlite:// or a Redis URL that parses; never echoed (it may hold one)."""
        if url.startswith("sqlite://"):
            return url
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                "must be sqlite:///PATH or redis://[:password@]HOST[:PORT][/DB] "
                "(rediss:// for TLS, unix:///PATH for a socket); the value is not "
                "shown, it may hold a password"
            )
        try:
            redis_identity(url)
        except ValueError:
            raise ValueError(
                "the Redis URL cannot be read as redis://[:password@]host[:port]/db "
                "with a numeric port and database; percent-encode the password's "
                "reserved characters (/ as %2F, # as %23, ? as %3F, @ as %40)"
            ) from None
        return url

    @property
    def in_memory(self) -> bool:
        """Whether the store lives only in this process (cannot be shared)."""
        return self.url.removeprefix("sqlite://").strip("/") == ":memory:"

    @property
    def is_redis(self) -> bool:
        """Whether the store is a Redis server."""
        return self.url.startswith(("redis://", "rediss://", "unix://"))


# The shortest journal.lease: a sixth of it (the cut-off margin of a send
# whose claim cannot be renewed) must still hold a store round trip. Short
# leases are for tests that kill workers; production keeps minutes.
MIN_LEASE = timedelta(seconds=2)


class JournalSettings(Group):
    """The queue of accepted payloads: back-pressure, leases, parking."""

    legacy_prefix: ClassVar[str] = "journal_"

    max_depth: int = Field(
        default=20_000,
        ge=1,
        description="Webhooks are refused with 503 and Retry-After while this many "
        "accepted payloads wait to be decided (senders retry them later).",
    )
    max_age: Duration = Field(
        default=timedelta(seconds=60),
        description="Webhooks are also refused while the oldest waiting payload is "
        "older than this.",
    )
    shed_pause: Duration = Field(
        default=timedelta(milliseconds=100),
        description="A refused webhook's 503 is held this long before it is sent, "
        "so a sender that retries at once cannot keep the receiver busy refusing "
        "while it catches up (0s: answer at once).",
    )
    lease: Duration = Field(
        default=timedelta(minutes=5),
        description="A claimed entry not finished in this time goes to another "
        "worker; incident messages are claimed for it too. At least 2s (keep "
        "minutes: a slow sink's message is renewed, not cut off): a claim "
        "is renewed every third of it, and a message whose claim cannot be "
        "renewed is cut off a sixth of it before it lapses.",
    )
    max_attempts: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Claims of one journal entry before it is parked (listed at "
        "GET /api/v1/parked, retried on demand).",
    )

    @field_validator("lease")
    @classmethod
    def _a_workable_lease(cls, lease: timedelta) -> timedelta:
        """Long enough for the renewals and the cut-off margin it is divided into."""
        if lease < MIN_LEASE:
            raise ValueError(
                f"must be at least 2s (got {lease.total_seconds():g}s): claims "
                "under it (journal entries, worker liveness, incident messages) "
                "are renewed every third of it and a send that cannot renew is "
                "cut off a sixth of it before it lapses; shorter, renewals spin "
                "and a store round trip or a sink's answer cannot fit, so "
                "messages never go out"
            )
        return lease


class RetentionSettings(Group):
    """How long and how much finished state is kept."""

    legacy_prefix: ClassVar[str] = "retention_"
    legacy_names: ClassVar[dict[str, str]] = {
        "max_age": "retention",
        "prune_interval": "prune_interval",
    }

    max_age: Duration = Field(
        default=timedelta(days=7), description="Keep payloads and decisions this long."
    )
    payloads: int = Field(
        default=100_000, ge=100, description="Keep at most this many payloads."
    )
    decisions: int = Field(
        default=200_000, ge=100, description="Keep at most this many decisions."
    )
    prune_interval: Duration = Field(
        default=timedelta(minutes=5),
        description="How often finished payloads and decisions past retention are "
        "dropped.",
    )


class GuardSettings(Group):
    """Defaults for the guards a playbook does not declare, and the allowlist."""

    namespaces: CommaList | None = Field(
        default=None,
        description="Kubernetes namespaces steps may touch; unset means any.",
    )
    cooldown: Duration = Field(
        default=timedelta(minutes=10),
        description="Default cooldown per playbook and target.",
    )
    budget_max: int = Field(
        default=5,
        ge=1,
        description="Default runs per playbook and target per budget_window.",
    )
    budget_window: Duration = Field(
        default=timedelta(hours=1), description="The window budget_max counts in."
    )
    global_budget_max: int = Field(
        default=30,
        ge=1,
        description="Remediations across all playbooks per global_budget_window.",
    )
    global_budget_window: Duration = Field(
        default=timedelta(hours=1),
        description="The window global_budget_max counts in.",
    )
    circuit_failures: int = Field(
        default=3, ge=1, description="Consecutive failures that open a circuit."
    )
    circuit_cool_off: Duration = Field(
        default=timedelta(hours=1), description="How long an open circuit stays open."
    )
    approval_ttl: Duration = Field(
        default=timedelta(hours=1), description="Approvals expire after this."
    )
    approval_sweep: Duration = Field(
        default=timedelta(minutes=1),
        gt=timedelta(0),
        description="How often pending approvals past their expiry are marked "
        "expired (and old decided ones pruned).",
    )

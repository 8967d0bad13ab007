"""One ``Settings`` object, from an optional YAML file and ``RECEIVER_*`` variables.

Precedence: defaults < YAML file (``--config``) < environment < command-line flags.
Every field can also come from ``RECEIVER_<NAME>_FILE``, a file holding the value
(how Kubernetes and Docker hand out secrets). List fields are comma-separated in
the environment; mapping fields (``redis_targets``, ``prometheus_targets``) are
``name=url,name2=url2`` (commas or newlines). This is the only module that reads
``os.environ``.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)

from receiver.errors import ConfigError
from receiver.rulebook.templates import parse_duration

Duration = Annotated[timedelta, BeforeValidator(parse_duration)]

ENV_PREFIX = "RECEIVER_"

SinkName = Literal["pagerduty_note", "pagerduty_event", "slack", "webhook"]
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def redis_identity(url: str) -> tuple[str, str, int]:
    """``(host, port or socket path, db)`` of a Redis URL, loopback names folded.

    Two URLs with the same identity reach the same keyspace, whatever their
    credentials or options.
    """
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    db_text = query.get("db", [""])[0] or parts.path.strip("/") or "0"
    if parts.scheme == "unix":
        return ("unix", parts.path, int(query.get("db", ["0"])[0] or 0))
    host = (parts.hostname or "localhost").lower()
    host = "loopback" if host in _LOOPBACK else host
    try:
        port = str(parts.port or 6379)
        db = int(db_text)
    except ValueError as exc:
        raise ValueError(
            f"{parts.scheme}://{host}: port and database must be numbers"
        ) from exc
    return (host, port, db)


def _where(url: str) -> str:
    """A URL without its credentials, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or parts.path
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path if parts.hostname else ''}"


def _url_secrets(url: str) -> list[str]:
    """The credential parts of a URL (password, user:password), for redaction."""
    parts = urlsplit(url)
    found = []
    if parts.password:
        found += [parts.password, unquote(parts.password)]
        found.append(f"{parts.username or ''}:{parts.password}")
    return [f for f in found if f and f != ":"]


class Settings(BaseModel):
    """Everything the receiver can be configured with; see the README table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(
        default="127.0.0.1",
        description="Address to listen on; non-loopback needs credentials.",
    )
    port: int = Field(default=8080, ge=0, le=65535, description="TCP port.")
    rules: list[Path] = Field(
        default_factory=lambda: [Path("rules")],
        description="Rule files or directories.",
    )
    mode: Literal["dry-run", "diagnose", "execute"] = Field(
        default="dry-run",
        description="dry-run: nothing is contacted; diagnose: read-only "
        "diagnostics run and sinks post, remediations are described; execute: "
        "remediations run too.",
    )
    diagnostics_reuse: Duration = Field(
        default=timedelta(minutes=10),
        description="Reuse a diagnostic's result for an unchanged alert "
        "occurrence this long (0s: always run again).",
    )
    incident_tick_interval: Duration = Field(
        default=timedelta(seconds=15),
        ge=timedelta(seconds=1),
        le=timedelta(minutes=5),
        description="How often incident clocks, severity re-evaluation, "
        "escalations and update cadences are checked (1s to 5m): a breach or a "
        "due update is noticed at most this late.",
    )
    auth_tokens: list[SecretStr] = Field(
        default_factory=list,
        description="Bearer tokens for the Alertmanager webhook; they may also "
        "read the API (scopes webhook, read), never replay with execute, approve "
        "or administer.",
    )
    basic_auth: SecretStr | None = Field(
        default=None,
        description="'user:password' accepted as HTTP basic auth (scopes webhook, "
        "read, like auth_tokens).",
    )
    read_tokens: list[SecretStr] = Field(
        default_factory=list,
        description="Bearer tokens that may only read the API (scope read).",
    )
    replay_tokens: list[SecretStr] = Field(
        default_factory=list,
        description="Bearer tokens that may read and replay with execute "
        "(scopes read, replay).",
    )
    approve_tokens: list[SecretStr] = Field(
        default_factory=list,
        description="Bearer tokens that may read and approve or reject "
        "remediations (scopes read, approve).",
    )
    admin_tokens: list[SecretStr] = Field(
        default_factory=list,
        description="Bearer tokens that may read and use the admin endpoints "
        "(scopes read, admin).",
    )
    approver_tokens: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Approver name (as in playbook approvers, e.g. an email) -> "
        "that person's own token (scopes read, approve). The API and the console "
        "then know who approves; a playbook that names approvers accepts only "
        "these, and two-approver steps need two of them.",
    )
    pagerduty_secrets: list[SecretStr] = Field(
        default_factory=list,
        description="PagerDuty V3 webhook signing secrets (several for rotation).",
    )
    routing_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Events API v2 routing keys accepted on /v2/enqueue.",
    )
    pagerduty_alertname_from: str = Field(
        default="title",
        description="PagerDuty label used as alertname: title or any mapped label.",
    )
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
    max_connections: int = Field(
        default=1000,
        ge=1,
        description="Open client connections; more are answered 503 and closed.",
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
    store: str = Field(
        default="sqlite:///receiver.db",
        description="State store: sqlite:///PATH (one instance) or redis://HOST "
        "(replicas).",
    )
    workers: int = Field(
        default=4, ge=1, le=256, description="Payloads processed concurrently."
    )
    retention: Duration = Field(
        default=timedelta(days=7), description="Keep payloads and decisions this long."
    )
    retention_payloads: int = Field(
        default=100_000, ge=100, description="Keep at most this many payloads."
    )
    retention_decisions: int = Field(
        default=200_000, ge=100, description="Keep at most this many decisions."
    )
    journal_max_depth: int = Field(
        default=20_000,
        ge=1,
        description="Webhooks are refused with 503 and Retry-After while this many "
        "accepted payloads wait to be decided (senders retry them later).",
    )
    journal_max_age: Duration = Field(
        default=timedelta(seconds=60),
        description="...or while the oldest waiting payload is older than this.",
    )
    prune_interval: Duration = Field(
        default=timedelta(minutes=5),
        description="How often finished payloads and decisions past retention are "
        "dropped.",
    )
    journal_lease: Duration = Field(
        default=timedelta(minutes=5),
        description="A claimed entry not finished in this time goes to another worker.",
    )
    journal_max_attempts: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Claims of one journal entry before it is parked (listed at "
        "GET /api/v1/parked, retried on demand).",
    )
    paused: bool = Field(
        default=False,
        description="Start with remediations paused (diagnostics and notes go "
        "on); POST/DELETE /api/v1/pause switches it at run time.",
    )
    cooldown: Duration = Field(
        default=timedelta(minutes=10),
        description="Default cooldown per playbook and target.",
    )
    budget_max: int = Field(default=5, ge=1, description="Default runs per playbook...")
    budget_window: Duration = Field(
        default=timedelta(hours=1), description="...per this window."
    )
    global_budget_max: int = Field(
        default=30, ge=1, description="Remediations across all playbooks..."
    )
    global_budget_window: Duration = Field(
        default=timedelta(hours=1), description="...per this window."
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
    http_allowlist: list[str] = Field(
        default_factory=list,
        description="Hosts (host or host:port) http steps may call.",
    )
    alertmanager_url: str | None = Field(
        default=None,
        description="Alertmanager base URL: asked whether an alert still fires "
        "right before a remediation runs.",
    )
    prometheus_url: str | None = Field(
        default=None,
        description="Prometheus base URL for prometheus.query steps (the target "
        "named 'default').",
    )
    prometheus_targets: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="More Prometheus servers: name -> base URL (may carry "
        "user:password); steps pick one with `prometheus: NAME`.",
    )
    redis_targets: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Redis servers redis.* steps may touch: name -> "
        "redis://[:password@]host:port/db (rediss:// for TLS). Never the "
        "receiver's own store.",
    )
    redis_timeout: Duration = Field(
        default=timedelta(seconds=5),
        description="Socket connect and read timeout for redis.* steps.",
    )
    # ------------------------------------------------------------ sinks
    sinks: list[SinkName] = Field(
        default_factory=list,
        description="Sinks every playbook writes to unless it names its own: "
        "pagerduty_note, pagerduty_event, slack, webhook.",
    )
    pagerduty_api_url: str = Field(
        default="https://api.pagerduty.com",
        description="PagerDuty REST API base URL (pagerduty_note).",
    )
    pagerduty_api_token: SecretStr | None = Field(
        default=None, description="PagerDuty REST API token (pagerduty_note)."
    )
    pagerduty_from: str | None = Field(
        default=None,
        pattern=r"^[^@\s]+@[^@\s]+$",
        description="Email of the PagerDuty user notes are posted as (From header).",
    )
    pagerduty_events_url: str = Field(
        default="https://events.pagerduty.com/v2/enqueue",
        description="Events API v2 endpoint (pagerduty_event).",
    )
    pagerduty_routing_key: SecretStr | None = Field(
        default=None,
        description="Integration key pagerduty_event sends with (usually the one "
        "Alertmanager's pagerduty_configs uses).",
    )
    slack_webhook_url: SecretStr | None = Field(
        default=None, description="Slack incoming-webhook URL (slack)."
    )
    slack_signing_secret: SecretStr | None = Field(
        default=None,
        description="Slack app signing secret; enables POST /slack/interactions "
        "(Approve / Reject buttons on messages of steps awaiting approval).",
    )
    slack_approvers: dict[str, str] = Field(
        default_factory=dict,
        description="Slack user ID -> approver name (e.g. the person's email, as "
        "in playbook approvers and PagerDuty). Unmapped users cannot approve.",
    )
    approval_oncall_timeout: Duration = Field(
        default=timedelta(seconds=2),
        description="HTTP timeout of the PagerDuty on-call look-up an approval "
        "makes (Slack waits 3s for an answer).",
    )
    webhook_urls: list[SecretStr] = Field(
        default_factory=list,
        description="URLs the webhook sink POSTs each decision trace to.",
    )
    note_max_chars: int = Field(
        default=24_000,
        ge=1_000,
        le=25_000,
        description="Cap on a PagerDuty note (PagerDuty takes at most 25,000).",
    )
    sink_attempts: int = Field(
        default=4, ge=1, le=10, description="Tries per sink delivery (429/5xx)."
    )
    sink_max_wait: Duration = Field(
        default=timedelta(seconds=60),
        description="Longest Retry-After a sink honours; longer waits give up.",
    )
    sink_timeout: Duration = Field(
        default=timedelta(seconds=10), description="HTTP timeout per sink request."
    )
    # ------------------------------------------------------------ Kubernetes
    namespaces: list[str] | None = Field(
        default=None,
        description="Kubernetes namespaces steps may touch; unset means any.",
    )
    kube_mode: Literal["off", "in-cluster", "kubeconfig", "host"] = Field(
        default="off",
        description="How k8s.* steps reach the API server: off (no k8s executor), "
        "in-cluster (the pod's service account), kubeconfig (kubeconfig + "
        "kube_context) or host (kube_host with kube_token_file / kube_ca_file).",
    )
    kubeconfig: Path | None = Field(
        default=None,
        description="kubeconfig file for kube_mode=kubeconfig (default "
        "~/.kube/config).",
    )
    kube_context: str | None = Field(
        default=None,
        description="kubeconfig context (default: the file's current-context).",
    )
    kube_host: str | None = Field(
        default=None,
        description="API server URL for kube_mode=host; overrides the in-cluster "
        "address for kube_mode=in-cluster.",
    )
    kube_token_file: Path | None = Field(
        default=None,
        description="Bearer token file, re-read when it rotates (in-cluster "
        "default: the service-account token).",
    )
    kube_ca_file: Path | None = Field(
        default=None,
        description="CA bundle for the API server's certificate (in-cluster "
        "default: the service-account ca.crt).",
    )
    kube_insecure: bool = Field(
        default=False,
        description="Skip TLS verification of the API server (tests only).",
    )
    kube_request_timeout: Duration = Field(
        default=timedelta(seconds=10),
        description="Timeout of one Kubernetes API request.",
    )
    kube_poll_interval: Duration = Field(
        default=timedelta(seconds=2),
        description="How often k8s verifications (rollout status, pods ready) poll.",
    )
    kube_allowed_kinds: list[str] | None = Field(
        default=None,
        description="Kinds k8s.* steps may read or change (e.g. Deployment,Pod); "
        "unset means every kind the steps know.",
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto: console on a TTY, JSON otherwise."
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="after")
    def _no_empty_credentials(self) -> Settings:
        for name in _CREDENTIAL_FIELDS:
            value = getattr(self, name)
            if isinstance(value, dict):
                value = list(value.values())
            values = value if isinstance(value, list) else [value]
            for secret in values:
                if secret is not None and not secret.get_secret_value().strip():
                    raise ValueError(
                        f"{name} holds an empty or whitespace-only credential; "
                        "remove it or set a real value (an empty credential would "
                        "let anyone in)"
                    )
        if self.basic_auth is not None:
            user, sep, password = self.basic_auth.get_secret_value().partition(":")
            if not sep or not user.strip() or not password.strip():
                raise ValueError("basic_auth must be 'user:password', both non-empty")
        return self

    @model_validator(mode="after")
    def _targets_are_not_the_store(self) -> Settings:
        if not self.store.startswith(("redis://", "rediss://", "unix://")):
            return self
        own = redis_identity(self.store)
        for name, url in self.redis_targets.items():
            if redis_identity(url.get_secret_value()) == own:
                raise ValueError(
                    f"redis_targets[{name!r}] ({_where(url.get_secret_value())}) "
                    "is the receiver's own state store; redis.* steps must never "
                    "touch it: point the target at the application's Redis, or use "
                    "another database number"
                )
        return self

    @model_validator(mode="after")
    def _default_sinks_configured(self) -> Settings:
        needs: dict[str, tuple[tuple[str, object], ...]] = {
            "pagerduty_note": (
                ("pagerduty_api_token", self.pagerduty_api_token),
                ("pagerduty_from", self.pagerduty_from),
            ),
            "pagerduty_event": (("pagerduty_routing_key", self.pagerduty_routing_key),),
            "slack": (("slack_webhook_url", self.slack_webhook_url),),
            "webhook": (("webhook_urls", self.webhook_urls),),
        }
        for sink in self.sinks:
            missing = [name for name, value in needs[sink] if not value]
            if missing:
                raise ValueError(
                    f"sinks lists {sink} but "
                    + " and ".join(f"RECEIVER_{m.upper()}" for m in missing)
                    + " is not set"
                )
        return self

    def secret_values(self) -> list[str]:
        """Every configured secret value, for log redaction (longest first)."""
        singles = (
            self.basic_auth,
            self.pagerduty_api_token,
            self.pagerduty_routing_key,
            self.slack_webhook_url,
            self.slack_signing_secret,
        )
        found = [
            secret.get_secret_value()
            for secret in (
                *self.auth_tokens,
                *self.read_tokens,
                *self.replay_tokens,
                *self.approve_tokens,
                *self.admin_tokens,
                *self.approver_tokens.values(),
                *self.pagerduty_secrets,
                *self.routing_keys,
                *self.webhook_urls,
                *(s for s in singles if s is not None),
            )
        ]
        if self.basic_auth is not None:
            found.append(self.basic_auth.get_secret_value().partition(":")[2])
        for url in (*self.webhook_urls, *self.redis_targets.values()):
            found += _url_secrets(url.get_secret_value())
        for url in self.prometheus_targets.values():
            found += _url_secrets(url.get_secret_value())
        for target in (*self.redis_targets.values(), *self.prometheus_targets.values()):
            if _url_secrets(target.get_secret_value()):
                found.append(target.get_secret_value())
        return sorted({f for f in found if f}, key=len, reverse=True)

    @property
    def has_credentials(self) -> bool:
        """Whether any webhook credential is configured."""
        return bool(
            self.auth_tokens
            or self.read_tokens
            or self.replay_tokens
            or self.approve_tokens
            or self.admin_tokens
            or self.approver_tokens
            or self.basic_auth
            or self.pagerduty_secrets
            or self.routing_keys
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

    def check_safe(self) -> None:
        """Refuse to listen beyond loopback without credentials."""
        if not self.loopback_only and not self.has_credentials:
            raise ConfigError(
                f"refusing to listen on {self.host} without credentials: set "
                "RECEIVER_AUTH_TOKENS (or RECEIVER_BASIC_AUTH) and, for PagerDuty, "
                "RECEIVER_PAGERDUTY_SECRETS / RECEIVER_ROUTING_KEYS, or listen on "
                "127.0.0.1"
            )


_CREDENTIAL_FIELDS = (
    "auth_tokens",
    "read_tokens",
    "replay_tokens",
    "approve_tokens",
    "admin_tokens",
    "approver_tokens",
    "basic_auth",
    "pagerduty_secrets",
    "routing_keys",
)
_LIST_FIELDS = {
    name
    for name, info in Settings.model_fields.items()
    if "list" in str(info.annotation)
}
_DICT_FIELDS = {
    name
    for name, info in Settings.model_fields.items()
    if "dict" in str(info.annotation)
}


def _parse_mapping(key: str, raw: str) -> dict[str, str]:
    """``name=url,name2=url2`` (commas or newlines) into a dict."""
    out: dict[str, str] = {}
    for item in raw.replace("\n", ",").split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            # Never echo the item: it may hold a password.
            raise ConfigError(
                f"{key}: each entry must be NAME=URL (e.g. cache=redis://redis:6379/0)"
            )
        out[name.strip()] = value.strip()
    return out


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in Settings.model_fields:
        key = ENV_PREFIX + name.upper()
        raw: str | None = None
        if key + "_FILE" in environ:
            path = Path(environ[key + "_FILE"])
            try:
                raw = path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(
                    f"{key}_FILE names {path}, which cannot be read: {exc.strerror}"
                ) from exc
        elif key in environ:
            raw = environ[key]
        if raw is None:
            continue
        if name in _DICT_FIELDS:
            values[name] = _parse_mapping(key, raw)
        elif name in _CREDENTIAL_FIELDS and any(
            not item.strip() for item in raw.replace("\n", ",").split(",")
        ):
            raise ConfigError(
                f"{key} holds an empty or whitespace-only credential (an empty "
                "value or a stray comma); remove it or set a real value"
            )
        elif name in _LIST_FIELDS:
            values[name] = [
                v.strip() for v in raw.replace("\n", ",").split(",") if v.strip()
            ]
        else:
            values[name] = raw
    return values


def in_cluster_host(environ: Mapping[str, str] | None = None) -> str | None:
    """The API server URL a pod is given (KUBERNETES_SERVICE_HOST/PORT), if any."""
    env = os.environ if environ is None else environ
    host = env.get("KUBERNETES_SERVICE_HOST", "")
    port = env.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        return None
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return f"https://{host}:{port}"


def load_settings(
    config: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge defaults, the YAML file, the environment and ``overrides``.

    Raises:
        ConfigError: naming the setting and what is wrong with it.
    """
    env = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    if config is not None:
        try:
            loaded = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config file {config}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {config} must hold a mapping of settings")
        data.update(loaded)
    data.update(_from_env(env))
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise ConfigError(f"invalid settings: {problems}") from exc

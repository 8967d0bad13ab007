"""Settings groups for what the receiver talks to: clusters, servers, sinks.

Kubernetes, Redis, Prometheus, HTTP targets, Alertmanager, and the sinks
(PagerDuty, Slack, webhooks).

Each is handed to the part that talks to it and nothing else (the Kubernetes
executor gets ``KubeSettings``). Field names, variables and descriptions follow
the rules in ``receiver.settings.groups``.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import BeforeValidator, Field, SecretStr
from pydantic_settings import NoDecode

from receiver.settings.groups import Group
from receiver.settings.values import (
    CommaList,
    Credentials,
    Duration,
    Mapping,
    SecretMapping,
    split_list,
)

SinkName = Literal["pagerduty_note", "pagerduty_event", "slack", "webhook"]
SinkList = Annotated[list[SinkName], NoDecode, BeforeValidator(split_list)]
KubeMode = Literal["off", "in-cluster", "kubeconfig", "host"]


class KubeSettings(Group):
    """How k8s.* steps reach the Kubernetes API server, and what they may touch."""

    legacy_prefix: ClassVar[str] = "kube_"
    legacy_names: ClassVar[dict[str, str]] = {"kubeconfig": "kubeconfig"}

    mode: KubeMode = Field(
        default="off",
        description="off (no k8s executor), in-cluster (the pod's service "
        "account), kubeconfig (kubeconfig + context) or host (host with "
        "token_file / ca_file).",
    )
    kubeconfig: Path | None = Field(
        default=None,
        description="kubeconfig file for mode kubeconfig (default ~/.kube/config).",
    )
    context: str | None = Field(
        default=None,
        description="kubeconfig context (default: the file's current-context).",
    )
    host: str | None = Field(
        default=None,
        description="API server URL for mode host; overrides the in-cluster "
        "address for mode in-cluster.",
    )
    token_file: Path | None = Field(
        default=None,
        description="Bearer token file, re-read when it rotates (in-cluster "
        "default: the service-account token).",
    )
    ca_file: Path | None = Field(
        default=None,
        description="CA bundle for the API server's certificate (in-cluster "
        "default: the service-account ca.crt).",
    )
    insecure: bool = Field(
        default=False,
        description="Skip TLS verification of the API server (tests only).",
    )
    request_timeout: Duration = Field(
        default=timedelta(seconds=10),
        description="Timeout of one Kubernetes API request.",
    )
    poll_interval: Duration = Field(
        default=timedelta(seconds=2),
        description="How often k8s verifications (rollout status, pods ready) poll.",
    )
    allowed_kinds: CommaList | None = Field(
        default=None,
        description="Kinds k8s.* steps may read or change (e.g. Deployment,Pod); "
        "unset means every kind the steps know.",
    )


class RedisSettings(Group):
    """The Redis servers redis.* steps may touch (never the receiver's store)."""

    legacy_prefix: ClassVar[str] = "redis_"

    targets: SecretMapping = Field(
        default_factory=dict,
        description="Redis servers redis.* steps may touch: name -> "
        "redis://[:password@]host:port/db (rediss:// for TLS). Never the "
        "receiver's own store.",
    )
    timeout: Duration = Field(
        default=timedelta(seconds=5),
        description="Socket connect and read timeout for redis.* steps.",
    )


class PrometheusSettings(Group):
    """The Prometheus servers prometheus.query steps ask."""

    legacy_prefix: ClassVar[str] = "prometheus_"

    url: str | None = Field(
        default=None,
        description="Prometheus base URL for prometheus.query steps (the target "
        "named 'default').",
    )
    targets: SecretMapping = Field(
        default_factory=dict,
        description="More Prometheus servers: name -> base URL (may carry "
        "user:password); steps pick one with `prometheus: NAME`.",
    )

    def servers(self) -> dict[str, str]:
        """Every server by name, ``url`` as ``default`` unless a target is."""
        found = {name: url.get_secret_value() for name, url in self.targets.items()}
        if self.url:
            found.setdefault("default", self.url)
        return found


class HttpSettings(Group):
    """What http.* steps may call."""

    legacy_prefix: ClassVar[str] = "http_"

    allowlist: CommaList = Field(
        default_factory=list,
        description="Hosts (host or host:port) http steps may call.",
    )


class AlertmanagerSettings(Group):
    """The Alertmanager asked whether an alert still fires."""

    legacy_prefix: ClassVar[str] = "alertmanager_"

    url: str | None = Field(
        default=None,
        description="Alertmanager base URL: asked whether an alert still fires "
        "right before a remediation runs.",
    )


class SinkSettings(Group):
    """Where decision traces are written, and how deliveries are retried."""

    legacy_prefix: ClassVar[str] = "sink_"
    legacy_names: ClassVar[dict[str, str]] = {
        "default": "sinks",
        "webhook_urls": "webhook_urls",
        "note_max_chars": "note_max_chars",
    }

    default: SinkList = Field(
        default_factory=list,
        description="Sinks every playbook writes to unless it names its own: "
        "pagerduty_note, pagerduty_event, slack, webhook.",
    )
    webhook_urls: Credentials = Field(
        default_factory=list,
        description="URLs the webhook sink POSTs each decision trace to.",
    )
    note_max_chars: int = Field(
        default=24_000,
        ge=1_000,
        le=25_000,
        description="Cap on a PagerDuty note (PagerDuty takes at most 25,000).",
    )
    attempts: int = Field(
        default=4, ge=1, le=10, description="Tries per sink delivery (429/5xx)."
    )
    max_wait: Duration = Field(
        default=timedelta(seconds=60),
        description="Longest Retry-After a sink honours; longer waits give up.",
    )
    timeout: Duration = Field(
        default=timedelta(seconds=10), description="HTTP timeout per sink request."
    )


class PagerDutySettings(Group):
    """The PagerDuty REST and Events APIs the receiver writes to."""

    legacy_prefix: ClassVar[str] = "pagerduty_"
    legacy_names: ClassVar[dict[str, str]] = {
        "from_email": "pagerduty_from",
        "oncall_timeout": "approval_oncall_timeout",
    }

    api_url: str = Field(
        default="https://api.pagerduty.com",
        description="PagerDuty REST API base URL (pagerduty_note).",
    )
    api_token: SecretStr | None = Field(
        default=None, description="PagerDuty REST API token (pagerduty_note)."
    )
    from_email: str | None = Field(
        default=None,
        pattern=r"^[^@\s]+@[^@\s]+$",
        description="Email of the PagerDuty user notes are posted as (From header).",
    )
    events_url: str = Field(
        default="https://events.pagerduty.com/v2/enqueue",
        description="Events API v2 endpoint (pagerduty_event).",
    )
    routing_key: SecretStr | None = Field(
        default=None,
        description="Integration key pagerduty_event sends with (usually the one "
        "Alertmanager's pagerduty_configs uses).",
    )
    alertname_from: str = Field(
        default="title",
        description="PagerDuty label used as alertname: title or any mapped label.",
    )
    oncall_timeout: Duration = Field(
        default=timedelta(seconds=2),
        description="HTTP timeout of the PagerDuty on-call look-up an approval "
        "makes (Slack waits 3s for an answer).",
    )


class SlackSettings(Group):
    """The Slack incoming webhook and the Slack app's approvals."""

    legacy_prefix: ClassVar[str] = "slack_"

    webhook_url: SecretStr | None = Field(
        default=None, description="Slack incoming-webhook URL (slack)."
    )
    signing_secret: SecretStr | None = Field(
        default=None,
        description="Slack app signing secret; enables POST /slack/interactions "
        "(Approve / Reject buttons on messages of steps awaiting approval).",
    )
    approvers: Mapping = Field(
        default_factory=dict,
        description="Slack user ID -> approver name (e.g. the person's email, as "
        "in playbook approvers and PagerDuty). Unmapped users cannot approve.",
    )

"""``Settings``: one group of settings per concern (see ``groups``).

Constructing ``Settings(...)`` reads nothing but its arguments;
``receiver.settings.sources.load_settings`` is where the YAML file and the
environment are read. Checks that span groups (a sink listed without its
credentials, a Redis target that is the receiver's own store) live here.
"""

from __future__ import annotations

import base64

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from receiver.errors import ConfigError
from receiver.settings.groups import (
    ENV_PREFIX,
    AuthSettings,
    EdgeSettings,
    EngineSettings,
    GuardSettings,
    IncidentSettings,
    JournalSettings,
    RetentionSettings,
    ServerSettings,
    StoreSettings,
)
from receiver.settings.integrations import (
    AlertmanagerSettings,
    HttpSettings,
    KubeSettings,
    PagerDutySettings,
    PrometheusSettings,
    RedisSettings,
    SinkSettings,
    SlackSettings,
)
from receiver.settings.values import (
    redis_identity,
    secret_url_parts,
    url_parses,
    url_secrets,
    where,
)


class Settings(BaseSettings):
    """Everything the receiver can be configured with, in groups."""

    model_config = SettingsConfigDict(
        extra="forbid",
        frozen=True,
        env_prefix=ENV_PREFIX,
        # How ``sources.EnvSource`` hands each group its variables; the names
        # users write are the flat ``RECEIVER_*`` ones (``Group.env_name``).
        env_nested_delimiter="__",
        # Values in the environment are plain text (``a,b``), never JSON: the
        # field types (``values``) parse them.
        enable_decoding=False,
    )

    server: ServerSettings = Field(
        default_factory=ServerSettings,
        description="Where the HTTP service listens and how it logs.",
    )
    engine: EngineSettings = Field(
        default_factory=EngineSettings,
        description="The mode, the rules and how many payloads are decided at once.",
    )
    incidents: IncidentSettings = Field(
        default_factory=IncidentSettings,
        description="Incidents: how often their clocks are checked.",
    )
    auth: AuthSettings = Field(
        default_factory=AuthSettings,
        description="Credentials callers present, by scope.",
    )
    edge: EdgeSettings = Field(
        default_factory=EdgeSettings,
        description="Limits of what the HTTP edge accepts.",
    )
    store: StoreSettings = Field(
        default_factory=StoreSettings, description="Where state lives."
    )
    journal: JournalSettings = Field(
        default_factory=JournalSettings,
        description="The queue of accepted payloads.",
    )
    retention: RetentionSettings = Field(
        default_factory=RetentionSettings,
        description="How long finished state is kept.",
    )
    guards: GuardSettings = Field(
        default_factory=GuardSettings,
        description="Guard defaults and the namespace allowlist.",
    )
    kube: KubeSettings = Field(
        default_factory=KubeSettings, description="The Kubernetes API (k8s.* steps)."
    )
    redis: RedisSettings = Field(
        default_factory=RedisSettings, description="Redis targets (redis.* steps)."
    )
    prometheus: PrometheusSettings = Field(
        default_factory=PrometheusSettings,
        description="Prometheus servers (prometheus.query steps).",
    )
    http: HttpSettings = Field(
        default_factory=HttpSettings, description="What http.* steps may call."
    )
    alertmanager: AlertmanagerSettings = Field(
        default_factory=AlertmanagerSettings,
        description="The Alertmanager asked before a remediation runs.",
    )
    sinks: SinkSettings = Field(
        default_factory=SinkSettings, description="Where decision traces go."
    )
    pagerduty: PagerDutySettings = Field(
        default_factory=PagerDutySettings,
        description="The PagerDuty REST and Events APIs.",
    )
    slack: SlackSettings = Field(
        default_factory=SlackSettings, description="Slack webhook and approvals."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,  # noqa: ARG003
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only the arguments: ``load_settings`` reads the file and environment."""
        del settings_cls
        return (init_settings,)

    @model_validator(mode="after")
    def _urls_parse(self) -> Settings:
        """Every URL with credentials reads as scheme, host and port.

        One that does not (a password with an unencoded ``/``, ``#`` or ``?``)
        would hide its password from redaction and fail later, with part of
        it in the error; it is refused here, naming the setting, never the URL.
        """
        urls: list[tuple[str, str]] = [
            *(
                (f"redis.targets[{n!r}]", u.get_secret_value())
                for n, u in self.redis.targets.items()
            ),
            *(
                (f"prometheus.targets[{n!r}]", u.get_secret_value())
                for n, u in self.prometheus.targets.items()
            ),
            *(
                (f"sinks.webhook_urls[{i}]", u.get_secret_value())
                for i, u in enumerate(self.sinks.webhook_urls)
            ),
        ]
        if self.prometheus.url:
            urls.append(("prometheus.url", self.prometheus.url))
        for setting, url in urls:
            if not url_parses(url):
                raise ValueError(
                    f"{setting}: the URL cannot be read as scheme://[user:password@]"
                    "host[:port]/...; percent-encode the password's reserved "
                    "characters (/ as %2F, # as %23, ? as %3F, @ as %40, : as %3A)"
                )
        return self

    @model_validator(mode="after")
    def _targets_are_not_the_store(self) -> Settings:
        if not self.store.is_redis:
            return self
        own = redis_identity(self.store.url)
        for name, url in self.redis.targets.items():
            if redis_identity(url.get_secret_value()) == own:
                raise ValueError(
                    f"redis.targets[{name!r}] ({where(url.get_secret_value())}) "
                    "is the receiver's own state store; redis.* steps must never "
                    "touch it: point the target at the application's Redis, or use "
                    "another database number"
                )
        return self

    @model_validator(mode="after")
    def _default_sinks_configured(self) -> Settings:
        pd, slack = PagerDutySettings, SlackSettings
        needs: dict[str, tuple[tuple[str, object], ...]] = {
            "pagerduty_note": (
                (pd.env_name("api_token"), self.pagerduty.api_token),
                (pd.env_name("from_email"), self.pagerduty.from_email),
            ),
            "pagerduty_event": (
                (pd.env_name("routing_key"), self.pagerduty.routing_key),
            ),
            "slack": ((slack.env_name("webhook_url"), self.slack.webhook_url),),
            "webhook": (
                (SinkSettings.env_name("webhook_urls"), self.sinks.webhook_urls),
            ),
        }
        for sink in self.sinks.default:
            missing = [name for name, value in needs[sink] if not value]
            if missing:
                raise ValueError(
                    f"sinks lists {sink} but {' and '.join(missing)} is not set"
                )
        return self

    def secret_values(self) -> list[str]:
        """Every configured secret value, for log redaction (longest first)."""
        auth, pd, slack = self.auth, self.pagerduty, self.slack
        singles = (
            auth.basic,
            pd.api_token,
            pd.routing_key,
            slack.webhook_url,
            slack.signing_secret,
        )
        secrets: list[SecretStr] = [
            *auth.tokens,
            *auth.read_tokens,
            *auth.replay_tokens,
            *auth.approve_tokens,
            *auth.admin_tokens,
            *auth.approver_tokens.values(),
            *auth.pagerduty_secrets,
            *auth.routing_keys,
            *self.sinks.webhook_urls,
            *(s for s in singles if s is not None),
        ]
        found = [secret.get_secret_value() for secret in secrets]
        if auth.basic is not None:
            basic = auth.basic.get_secret_value()
            found.append(basic.partition(":")[2])
            found.append(base64.b64encode(basic.encode()).decode())
        # A Slack or webhook URL is a token as a whole: also the forms and the
        # parts of it a client or an echoing server prints.
        for url in (*self.sinks.webhook_urls, slack.webhook_url):
            if url is not None:
                found += secret_url_parts(url.get_secret_value())
        targets = (*self.redis.targets.values(), *self.prometheus.targets.values())
        for target in targets:
            found += url_secrets(target.get_secret_value())
            if url_secrets(target.get_secret_value()):
                found.append(target.get_secret_value())
        # Plain URL settings that may still carry a password.
        for plain in (self.store.url, self.prometheus.url, self.alertmanager.url):
            if plain:
                found += url_secrets(plain)
        return sorted({f for f in found if f}, key=len, reverse=True)

    @property
    def has_credentials(self) -> bool:
        """Whether any webhook credential is configured."""
        return self.auth.configured

    @property
    def loopback_only(self) -> bool:
        """Whether the service listens on a loopback address only."""
        return self.server.loopback_only

    def check_safe(self) -> None:
        """Refuse to listen beyond loopback without credentials."""
        if not self.loopback_only and not self.has_credentials:
            raise ConfigError(
                f"refusing to listen on {self.server.host} without credentials: set "
                "RECEIVER_AUTH_TOKENS (or RECEIVER_BASIC_AUTH) and, for PagerDuty, "
                "RECEIVER_PAGERDUTY_SECRETS / RECEIVER_ROUTING_KEYS, or listen on "
                "127.0.0.1"
            )

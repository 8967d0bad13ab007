"""Settings: groups of fields, from a YAML file and ``RECEIVER_*`` variables.

``Settings`` (``model``) holds one group per concern (``groups``); each part of
the receiver is handed only its group. ``load_settings`` (``sources``) merges
defaults < YAML file < environment < command-line flags. ``reference`` renders
docs/settings.md from the field descriptions.
"""

from receiver.settings.groups import (
    ENV_PREFIX,
    AuthSettings,
    EdgeSettings,
    EngineSettings,
    Group,
    GuardSettings,
    IncidentSettings,
    JournalSettings,
    Mode,
    RetentionSettings,
    ServerSettings,
    StoreSettings,
)
from receiver.settings.integrations import (
    AlertmanagerSettings,
    HttpSettings,
    KubeMode,
    KubeSettings,
    PagerDutySettings,
    PrometheusSettings,
    RedisSettings,
    SinkName,
    SinkSettings,
    SlackSettings,
)
from receiver.settings.model import Settings
from receiver.settings.sources import (
    SettingsDeprecationWarning,
    env_name,
    flat_keys,
    groups,
    in_cluster_host,
    load_settings,
    nest,
)
from receiver.settings.values import Duration, redis_identity

__all__ = [
    "ENV_PREFIX",
    "AlertmanagerSettings",
    "AuthSettings",
    "Duration",
    "EdgeSettings",
    "EngineSettings",
    "Group",
    "GuardSettings",
    "HttpSettings",
    "IncidentSettings",
    "JournalSettings",
    "KubeMode",
    "KubeSettings",
    "Mode",
    "PagerDutySettings",
    "PrometheusSettings",
    "RedisSettings",
    "RetentionSettings",
    "ServerSettings",
    "Settings",
    "SettingsDeprecationWarning",
    "SinkName",
    "SinkSettings",
    "SlackSettings",
    "StoreSettings",
    "env_name",
    "flat_keys",
    "groups",
    "in_cluster_host",
    "load_settings",
    "nest",
    "redis_identity",
]

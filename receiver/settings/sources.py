"""``load_settings``: defaults < YAML file < environment < command-line flags.

The environment: every setting has one flat variable, ``RECEIVER_<NAME>``
(``Group.env_name``), and ``RECEIVER_<NAME>_FILE`` names a file holding the
value instead (how Kubernetes and Docker hand out secrets; it wins over the
plain variable). Other ``RECEIVER_*`` variables are not settings and are left
alone. pydantic-settings' environment source does the parsing and nesting;
``EnvSource`` only maps the flat names onto the groups.

The YAML file (``--config``) holds the groups (``kube: {mode: host}``). The flat
keys of earlier versions (``kube_mode: host``) still load, each with a
``SettingsDeprecationWarning`` naming the key to write instead.

This is the only module that reads ``os.environ``.
"""

from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    YamlConfigSettingsSource,
)
from pydantic_settings.sources.types import Traversable

from receiver.errors import ConfigError
from receiver.settings.groups import Group
from receiver.settings.model import Settings

Raw = dict[str, object]
"""Settings as read from a source, before validation."""


class SettingsDeprecationWarning(FutureWarning):
    """A setting written the old way; it still works, the message says the new way.

    A ``FutureWarning``, so Python shows it to users by default.
    """


def groups() -> dict[str, type[Group]]:
    """Every group of ``Settings`` by its name, in the model's order."""
    found: dict[str, type[Group]] = {}
    for name, info in Settings.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, Group):
            found[name] = annotation
    return found


def flat_keys() -> dict[str, tuple[str, str]]:
    """Every flat name (``kube_mode``) -> (group, field) (``kube``, ``mode``)."""
    return {
        cls.flat_key(field): (group, field)
        for group, cls in groups().items()
        for field in cls.model_fields
    }


def env_name(group: str, field: str) -> str:
    """The variable that sets ``group.field``."""
    return groups()[group].env_name(field)


def _read_env(environ: Mapping[str, str], name: str) -> str | None:
    """``name``'s value: from the file ``name_FILE`` names, else the variable."""
    if name + "_FILE" in environ:
        path = Path(environ[name + "_FILE"])
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"{name}_FILE names {path}, which cannot be read: {exc.strerror}"
            ) from exc
        except UnicodeDecodeError:
            # Never the bytes: they are a secret's.
            raise ConfigError(
                f"{name}_FILE names {path}, which is not UTF-8 text; write the "
                "value as plain text"
            ) from None
    return environ.get(name)


class EnvSource(EnvSettingsSource):
    """The flat ``RECEIVER_*`` variables (and ``_FILE``s), handed to their groups."""

    def __init__(
        self, settings_cls: type[BaseSettings], environ: Mapping[str, str]
    ) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        found: dict[str, str | None] = {}
        prefix = self.env_prefix.lower()
        for flat, (group, field) in flat_keys().items():
            raw = _read_env(self._environ, self.env_prefix + flat.upper())
            if raw is not None:
                found[f"{prefix}{group}{self.env_nested_delimiter}{field}"] = raw
        return found


class YamlSource(YamlConfigSettingsSource):
    """The YAML file: groups, or (deprecated) the flat keys of earlier versions."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        if path.is_dir():
            raise ConfigError(
                f"cannot read config file {path}: it is a directory; pass the "
                "settings file itself (such as receiver.yaml)"
            )
        if not path.is_file():
            raise ConfigError(f"cannot read config file {path}: no such file")
        super().__init__(settings_cls, yaml_file=path)

    def _read_file(self, file_path: Path | Traversable) -> Raw:
        # Bounded as rule files are, and refusing a key given twice (YAML
        # keeps the last: a second ``auth:`` group would drop the first).
        from receiver.rulebook.loader import load_yaml, yaml_problem  # noqa: PLC0415

        try:
            loaded = load_yaml(file_path.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ConfigError(
                f"cannot read config file {file_path}: {exc.strerror or exc}"
            ) from exc
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"cannot read config file {file_path}: {yaml_problem(exc)}"
            ) from None
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {file_path} must hold a mapping of settings"
            )
        return nest(loaded, where=f"config file {file_path}")


def nest(data: Mapping[str, object], *, where: str) -> Raw:
    """Groups as they are; each flat key moved into its group, with a warning.

    A key that is both a group and an old flat name (``store``, ``sinks``,
    ``retention``) is the group when its value is a mapping.
    """
    known = groups()
    flat = flat_keys()
    out: Raw = {}
    for key, value in data.items():
        if key in known and (isinstance(value, dict) or key not in flat):
            group = out.setdefault(key, {})
            if isinstance(group, dict) and isinstance(value, dict):
                group.update(value)
            else:
                out[key] = value
            continue
        if key not in flat:
            out[key] = value  # refused by the model, with a suggestion
            continue
        group_name, field = flat[key]
        warnings.warn(
            f"{where}: setting {key!r} is deprecated; write it as "
            f"{group_name}: {{{field}: ...}}",
            SettingsDeprecationWarning,
            stacklevel=2,
        )
        group = out.setdefault(group_name, {})
        if isinstance(group, dict):
            group[field] = value
    return out


def _merge(base: Raw, update: Mapping[str, object]) -> Raw:
    """``update`` over ``base``, group by group."""
    out = dict(base)
    for key, value in update.items():
        current = out.get(key)
        if isinstance(value, Mapping) and isinstance(current, dict):
            out[key] = _merge(current, value)
        else:
            out[key] = value
    return out


def _location(error: ErrorDetails) -> str:
    """``group.field (RECEIVER_NAME)`` for an error, or what is known of it."""
    loc = [str(part) for part in error["loc"]]
    known = groups()
    if len(loc) >= 2 and loc[0] in known and loc[1] in known[loc[0]].model_fields:
        return f"{'.'.join(loc)} ({known[loc[0]].env_name(loc[1])})"
    return ".".join(loc) or "settings"


def _unknown(error: ErrorDetails) -> str:
    """An unknown key, with the closest known one."""
    loc = [str(part) for part in error["loc"]]
    known = groups()
    if len(loc) == 1:
        choices = [*known, *flat_keys()]
    elif loc[0] in known:
        choices = list(known[loc[0]].model_fields)
    else:
        choices = []
    close = difflib.get_close_matches(loc[-1], choices, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown setting {'.'.join(loc)!r}{hint}"


def describe(exc: ValidationError) -> str:
    """A validation error as one line naming each key; never a value."""
    problems = [
        _unknown(e)
        if e["type"] == "extra_forbidden"
        else f"{_location(e)}: {e['msg'].removeprefix('Value error, ')}"
        for e in exc.errors(include_url=False, include_input=False)
    ]
    return "invalid settings: " + "; ".join(problems)


def load_settings(
    config: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, object]] | None = None,
) -> Settings:
    """Merge defaults, the YAML file, the environment and ``overrides``.

    ``overrides`` are command-line flags, by group (``{"server": {"port": 8081}}``);
    ``None`` values are flags not given.

    Raises:
        ConfigError: naming the setting and what is wrong with it.
    """
    env = os.environ if environ is None else environ
    data: Raw = {}
    if config is not None:
        data = YamlSource(Settings, config)()
    data = _merge(data, EnvSource(Settings, env)())
    given = {
        group: {k: v for k, v in values.items() if v is not None}
        for group, values in (overrides or {}).items()
    }
    data = _merge(data, InitSettingsSource(Settings, given)())
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe(exc)) from exc


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

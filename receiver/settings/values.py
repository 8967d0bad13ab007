"""Value types of settings: durations, comma lists, ``NAME=URL`` mappings, URLs.

Each type parses the plain text an environment variable or a ``_FILE`` holds as
well as the structured value a YAML file holds, so the model, not the loader,
says how a setting is written. Used by ``receiver.settings.groups``.
"""

from __future__ import annotations

import base64
from datetime import timedelta
from pathlib import Path
from typing import Annotated
from urllib.parse import parse_qs, parse_qsl, unquote, urlsplit

import httpx
from pydantic import BeforeValidator, SecretStr
from pydantic_settings import NoDecode

from receiver.rulebook.templates import parse_duration

_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def _items(raw: str) -> list[str]:
    """Comma- or newline-separated items of one text value, stripped."""
    return [item.strip() for item in raw.replace("\n", ",").split(",")]


def split_list(value: object) -> object:
    """``a,b`` (or one item per line) as a list; lists pass through."""
    if isinstance(value, str):
        return [item for item in _items(value) if item]
    return value


def _credentials(value: object) -> object:
    """Like ``split_list``, but an empty item is an error, not skipped.

    A stray comma or a blank line in a credential list is a mistake that must
    not turn into an empty token (which would let anyone in).
    """
    if isinstance(value, str):
        items = _items(value)
        if any(not item for item in items):
            raise ValueError(
                "holds an empty or whitespace-only credential (an empty value or "
                "a stray comma); remove it or set a real value"
            )
        return items
    return value


def _entries(raw: str) -> list[str]:
    """The entries of a ``NAME=VALUE`` list, stripped, for ``_mapping`` to check.

    Commas or newlines separate them. A comma that ends the value or a line
    (one entry a line) and a blank line (a YAML block's, a heredoc's) separate
    nothing and are dropped; an empty entry between two commas is kept.
    """
    entries: list[str] = []
    for line in raw.splitlines():
        items = [item.strip() for item in line.split(",")]
        if not items[-1]:
            items.pop()
        entries += items
    return entries


def _mapping(value: object) -> object:
    """``name=url,name2=url2`` (commas or newlines) as a dict; dicts pass through.

    An entry without ``=``, or an empty one (``a=1,,b=2``), is refused: it is
    where an entry went wrong or missing (an unset variable in a template, say),
    and a list that quietly lacks a token or a target fails later, elsewhere.
    Errors give the entry's position, never its text (it may hold a password).
    """
    if not isinstance(value, str):
        return value
    entries = _entries(value)
    out: dict[str, str] = {}
    for number, entry in enumerate(entries, 1):
        which = f"entry {number} of {len(entries)}"
        if not entry:
            raise ValueError(
                f"{which} is empty (a stray comma): remove it or write the "
                "NAME=VALUE that belongs there"
            )
        name, sep, text = entry.partition("=")
        if not sep or not name.strip() or not text.strip():
            raise ValueError(
                f"{which} is not NAME=URL or NAME=VALUE, both parts non-empty "
                "(e.g. cache=redis://redis:6379/0); the entry is not shown, it "
                "may hold a secret"
            )
        key = name.strip()
        if key in out:
            first = 1 + list(out).index(key)
            raise ValueError(
                f"{which} names {key!r} again (entry {first} did): one entry per "
                "name, or the earlier one is silently lost"
            )
        out[key] = text.strip()
    return out


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
"""A Prometheus-style duration (``90s``, ``5m``, ``1h30m``) or seconds."""

CommaList = Annotated[list[str], NoDecode, BeforeValidator(split_list)]
"""A list; in the environment, items separated by commas or newlines."""

PathList = Annotated[list[Path], NoDecode, BeforeValidator(split_list)]
"""Paths; in the environment, separated by commas or newlines."""

Credentials = Annotated[list[SecretStr], NoDecode, BeforeValidator(_credentials)]
"""Secret values; in the environment, separated by commas or newlines."""

SecretMapping = Annotated[dict[str, SecretStr], NoDecode, BeforeValidator(_mapping)]
"""``NAME=URL`` pairs whose values may carry credentials."""

Mapping = Annotated[dict[str, str], NoDecode, BeforeValidator(_mapping)]
"""``NAME=VALUE`` pairs; in the environment, separated by commas or newlines."""


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


def where(url: str) -> str:
    """A URL without its credentials, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or parts.path
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path if parts.hostname else ''}"


def url_parses(url: str) -> bool:
    """Whether ``url`` reads as scheme, host and a port (if any) that is a number."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is not one)
    except ValueError:
        return False
    return bool(parts.scheme and parts.hostname)


def url_secrets(url: str) -> list[str]:
    """The credential parts of a URL (password, user:password), for redaction.

    Also ``user:password`` in base64, as an HTTP client sends it (and a server
    may echo it back).
    """
    parts = urlsplit(url)
    found = []
    if parts.password:
        found += [parts.password, unquote(parts.password)]
        found.append(f"{parts.username or ''}:{parts.password}")
        pair = f"{unquote(parts.username or '')}:{unquote(parts.password)}"
        found.append(base64.b64encode(pair.encode()).decode())
    return [f for f in found if f and f != ":"]


# Path segments and query values at least this long are masked on their own.
_TOKEN_SEGMENT = 16
_TOKEN_VALUE = 8


def secret_url_parts(url: str) -> list[str]:
    """What to mask of a URL that is a secret as a whole (Slack, webhook URLs).

    The URL as an HTTP client prints it (host lower-cased, default port
    dropped), its path and query (what a server echoes back), the query, long
    query values and path segments (the token alone), and its credentials.
    """
    found = [url, *url_secrets(url)]
    try:
        found.append(str(httpx.URL(url)))
        parts = urlsplit(url)
    except (httpx.InvalidURL, ValueError):
        return found
    path, query = parts.path, parts.query
    if path.strip("/") or query:
        found.append(f"{path}?{query}" if query else path)
    if query:
        found.append(query)
        found += [v for _, v in parse_qsl(query) if len(v) >= _TOKEN_VALUE]
        found += [v for v in query.split("&") if len(v) >= _TOKEN_VALUE]
    found += [s for s in path.split("/") if len(s) >= _TOKEN_SEGMENT]
    found += [unquote(s) for s in path.split("/") if len(s) >= _TOKEN_SEGMENT]
    return [f for f in found if f]

"""The URL grammar: values go in the host, one path segment, or a query value."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import quote, urlsplit

from receiver.rulebook.templates.slots import (
    _HOSTNAME,
    TemplateError,
    _bad_char,
    _control,
    _describe_char,
    _Hole,
)

# ----------------------------------------------------------------- URLs


def _netloc_parts(netloc: str) -> tuple[str, str, str]:
    """``user:pass@host:port`` as (user info, host, port)."""
    userinfo, _, hostport = netloc.rpartition("@")
    if hostport.startswith("["):
        host, _, port = hostport.partition("]")
    elif ":" in hostport:
        host, _, port = hostport.rpartition(":")
    else:
        host, port = hostport, ""
    return userinfo, host, port


def _url_holes(text: str, found: list[re.Match[str]]) -> list[_Hole]:
    """Place each placeholder in the host, path or query of a URL; refuse others."""
    if not text.lower().startswith(("http://", "https://")):
        raise TemplateError(
            "a URL must start with http:// or https:// (an alert value "
            "may not choose the scheme)"
        )
    sample = text
    sentinels = []
    for i, match in reversed(list(enumerate(found))):
        sentinel = f"zslot{i}z"
        sentinels.append(sentinel)
        sample = sample[: match.start()] + sentinel + sample[match.end() :]
    sentinels.reverse()
    try:
        parts = urlsplit(sample)
    except ValueError as exc:
        raise TemplateError(f"not a valid URL: {exc}") from exc
    userinfo, host, port = _netloc_parts(parts.netloc)
    holes = []
    for sentinel, match in zip(sentinels, found, strict=True):
        if sentinel in host:
            holes.append(_Hole.URL_HOST)
        elif sentinel in userinfo or sentinel in port:
            raise TemplateError(
                f"{match.group(0)} is in the user info or port of the URL; an alert "
                "value may fill only its host, path or query"
            )
        elif sentinel in parts.path:
            holes.append(_Hole.URL_PATH)
        elif sentinel in parts.query:
            holes.append(_Hole.URL_QUERY)
        else:
            raise TemplateError(
                f"{match.group(0)} is in the URL's fragment, which is never sent; "
                "an alert value may fill only its host, path or query"
            )
    return holes


def _url_refuse(value: str, hole: _Hole) -> str | None:
    if hole is _Hole.URL_HOST:
        return _bad_char(
            value, lambda ch: ch.isascii() and (ch.isalnum() or ch in "-.")
        )
    if hole is _Hole.URL_PATH:
        for ch in value:
            if ch in "/\\?#":
                return f"it contains {ch!r}"
            if _control(ch):
                return f"it contains {_describe_char(ch)}"
        if ".." in value:
            return "it contains '..'"
        if value == ".":
            return "'.' would name the current path segment"
    return None  # query values are percent-encoded whole


def _url_insert(value: str, hole: _Hole) -> str:
    if hole is _Hole.URL_HOST:
        return value
    return quote(value, safe="")


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return len(host) <= 253 and bool(_HOSTNAME.fullmatch(host))
    return True


def _url_whole(text: str) -> str | None:
    bad = _bad_char(text, lambda ch: not _control(ch))
    if bad:
        return f"the URL would contain {bad.removeprefix('it contains ')}"
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError as exc:
        return f"{text!r} is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return f"{text!r} is not an http or https URL"
    if not _valid_host(parts.hostname or ""):
        return f"{parts.hostname or ''!r} is not a valid host name"
    return None

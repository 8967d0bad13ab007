"""How Redis replies and targets are shown: capped text, escaped keys, no passwords.

Pure helpers of ``receiver.steps.redis`` (the executor): what a value, a key or a
target URL looks like in a step's reason and result, the INFO fields worth
showing, and the guard against patterns without a literal prefix.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from receiver.errors import PermanentStepError

# The runbook's threshold: "If <70%, increase cache TTL".
HIT_RATE_THRESHOLD = 0.70
MAX_VALUE_CHARS = 1024
MAX_INFO_FIELDS = 60
MAX_SAMPLE_KEYS = 20
MAX_SHOWN_KEY_CHARS = 200
INFO_HIGHLIGHTS = {
    "stats": (
        "keyspace_hits",
        "keyspace_misses",
        "evicted_keys",
        "expired_keys",
        "rejected_connections",
        "instantaneous_ops_per_sec",
    ),
    "memory": ("used_memory_human", "maxmemory_human", "mem_fragmentation_ratio"),
    "clients": ("connected_clients", "blocked_clients"),
    "server": ("redis_version", "uptime_in_seconds", "role"),
    "keyspace": (),
}


def text_of(raw: object, limit: int = MAX_VALUE_CHARS) -> tuple[str, bool]:
    """Bytes or str as text capped at ``limit`` characters; (text, truncated)."""
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
    return (text[:limit], True) if len(text) > limit else (text, False)


def raw_key(key: object) -> bytes:
    """A scanned key name as the bytes the server sent."""
    return (
        key if isinstance(key, bytes) else str(key).encode("utf-8", "surrogateescape")
    )


def shown_key(key: bytes, limit: int = MAX_SHOWN_KEY_CHARS) -> str:
    """A key for people: undecodable bytes escaped, long names cut and marked.

    Only what is shown is escaped or cut; the key deleted is the key scanned.
    """
    text = key.decode("utf-8", errors="backslashreplace")
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(key)} bytes)"


def check_pattern(pattern: str) -> None:
    """Refuse a pattern without a literal prefix (the rule loader checks it too).

    Raises:
        PermanentStepError: the pattern is empty, ``*`` or starts with a glob.
    """
    stripped = pattern.strip()
    if not stripped or stripped[0] in "*?[\\" or stripped.strip("*") == "":
        raise PermanentStepError(
            f"refused pattern {pattern!r}: it has no literal prefix, so it could "
            "match every key; use a prefix such as 'policy:decision:*'"
        )


def shown_target(url: str) -> str:
    """A target URL without credentials, for messages."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path or ''}"

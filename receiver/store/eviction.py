"""Whether the store's Redis may evict the receiver's keys, said once at start.

A Redis with ``maxmemory`` set and a ``maxmemory-policy`` other than
``noeviction`` (``volatile-lru`` is the default of several managed offerings)
drops keys without a word when its memory runs short: a remediation lock, a
run-once claim, a guard record or a pending incident effect can vanish (with
an ``allkeys-*`` policy the journal too), so a remediation may run twice and a
message be lost. The receiver's exactly-once promises rest on those keys.

``create_app`` calls ``check_eviction`` as the app starts (every role of
``receiver serve``; a supervised worker child leaves it to its edge, which
checked the same store just before starting it). ``receiver report`` and
``backtest`` only read a store and never call it.
"""

from __future__ import annotations

import structlog

from receiver.errors import ConfigError
from receiver.settings import StoreSettings
from receiver.store.base import Eviction, Store

log = structlog.get_logger("receiver")

_UNITS = (("gb", 1024**3), ("mb", 1024**2), ("kb", 1024))


def _size(maxmemory: int) -> str:
    """A byte count as redis.conf writes it (``10mb``), else in bytes."""
    for unit, scale in _UNITS:
        if maxmemory % scale == 0:
            return f"{maxmemory // scale}{unit}"
    return f"{maxmemory} bytes"


def risk(eviction: Eviction) -> str:
    """What Redis is set to, what the receiver can lose by it, and the fix."""
    policy = eviction.policy or ""
    if policy.startswith("allkeys"):
        drops = "any key: the journal, its claims, locks and pending messages"
    elif policy.startswith("volatile"):
        drops = "keys with an expiry: locks, run-once claims, guard records"
    else:
        drops = "keys"
    return (
        f"Redis at {eviction.where} may evict the receiver's keys when it runs "
        f"out of memory (maxmemory {_size(eviction.maxmemory or 0)}, "
        f"maxmemory-policy {policy}, which drops {drops}): a lock or a claim "
        "that vanishes lets a remediation run twice, and a pending message can "
        "be lost. Set maxmemory-policy noeviction on that Redis (a full one then "
        "refuses writes: webhooks are answered 503 and sent again), or give the "
        "receiver a Redis of its own with noeviction"
    )


async def check_eviction(
    store: Store, *, execute: bool, allowed: bool
) -> Eviction | None:
    """Say once whether the store may lose keys; refuse to execute if it may.

    One ``store_eviction_policy`` error line when Redis may evict; in execute
    mode without ``allowed`` (``store.allow_eviction``) a ``ConfigError``
    instead, which ``receiver serve`` reports as its one ``serve_failed`` line.
    A Redis that will not say (``INFO`` refused, unreachable, fields missing)
    is one ``store_eviction_unknown`` warning and never stops the start. The
    ``Eviction`` read (None for SQLite) is returned.

    Raises:
        ConfigError: execute mode on a store that may evict, not allowed.
    """
    eviction = await store.eviction()
    if eviction is None:
        return None
    possible = eviction.possible
    if possible is None:
        log.warning(
            "store_eviction_unknown",
            redis=eviction.where,
            detail="cannot tell whether the store's Redis may evict the "
            f"receiver's keys ({eviction.unknown}); starting all the same. "
            "Make sure its maxmemory-policy is noeviction",
        )
        return eviction
    if not possible:
        return eviction
    said = risk(eviction)
    override = StoreSettings.env_name("allow_eviction")
    if execute and not allowed:
        raise ConfigError(
            f"refusing to run remediations (execute mode) on this store: {said}. "
            f"To run them anyway, set {override}=true (store.allow_eviction)"
        )
    then = (
        f"remediations run all the same: {override} is set"
        if execute
        else "remediations are not run in this mode; with --execute the "
        f"receiver refuses to start unless {override}=true"
    )
    log.error(
        "store_eviction_policy",
        redis=eviction.where,
        maxmemory=eviction.maxmemory,
        maxmemory_policy=eviction.policy,
        detail=f"{said}; {then}",
    )
    return eviction

"""``redis.*`` steps: read keys and stats, delete named keys or a prefixed pattern.

Built by ``build_executors`` from settings ``redis_targets`` (name -> URL); the
runner calls ``run`` with rendered step models. One ``redis.asyncio`` client per
named target, with socket timeouts, closed in ``aclose``. The receiver's own state
store is refused as a target when settings load, never reached from here.

Deletions use ``UNLINK`` (and ``SCAN MATCH`` for patterns, in batches, under the
step's ``max_keys``). A pattern delete handles key names as the bytes ``SCAN``
returned, end to end (``SCAN`` replies are read with ``NEVER_DECODE``): a long or
non-UTF-8 name is unlinked exactly, and only the sample shown to people is
escaped or cut. This module never sends ``KEYS`` or any ``FLUSH*``: one
command over a whole keyspace blocks a production Redis, and a flush is the
runbook's last resort for a human. ``UNLINK`` is idempotent, so retrying it after a
connection error cannot do more than the first attempt meant to.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.client import NEVER_DECODE

from receiver.errors import ConfigError, PermanentStepError, TransientStepError
from receiver.model import Alert, Intent, JSONObject, RecheckResult, StepResult
from receiver.redis_errors import not_serving
from receiver.retrying import RetryPolicy, retrying
from receiver.rulebook.steps import StepModel, Templated
from receiver.steps.catalog import StepDef, family_steps
from receiver.steps.defs import Table
from receiver.steps.redis.text import (
    HIT_RATE_THRESHOLD,
    INFO_HIGHLIGHTS,
    MAX_INFO_FIELDS,
    MAX_SAMPLE_KEYS,
    MAX_VALUE_CHARS,
    check_pattern,
    raw_key,
    shown_key,
    shown_target,
    text_of,
)

# A pattern delete stops scanning at this share of the step's timeout, so it can
# still report what it did before the runner gives up on it.
_SCAN_BUDGET = 0.8
# SCAN calls a re-check after a crash makes to look for any key left matching.
_RECHECK_SCANS = 1000

if TYPE_CHECKING:
    from receiver.steps.redis.delete_pattern import RedisDeletePattern
    from receiver.steps.redis.get import RedisGet
    from receiver.steps.redis.info import RedisInfo
    from receiver.steps.redis.reset_circuit_breaker import RedisResetCircuitBreaker

T = TypeVar("T")
Client = redis.asyncio.Redis


@dataclass(frozen=True)
class KeyRead:
    """What ``redis.get`` read of one key: its type, value (strings) and TTL."""

    type: str
    value: str | None = None  # capped at MAX_VALUE_CHARS
    truncated: bool | None = None
    ttl_ms: int | None = None  # None: no expiry

    def shown(self) -> str:
        """The value, or ``<type>`` for a key that is not a string."""
        return self.value if self.value is not None else f"<{self.type}>"

    def as_json(self) -> JSONObject:
        """The key as results show it (only the fields it has)."""
        out: JSONObject = {"type": self.type}
        if self.value is not None:
            out["value"] = self.value
            out["truncated"] = self.truncated
        if self.ttl_ms is not None:
            out["ttl_ms"] = self.ttl_ms
        return out


def _count(value: object) -> int:
    """A number Redis answered (an int, or its text)."""
    if isinstance(value, int | float | str | bytes):
        return int(value)
    raise PermanentStepError(f"redis answered {value!r:.80} where a number was due")


class RedisExecutor:
    """Runs redis.* steps against named targets, one client each."""

    def __init__(
        self,
        targets: Mapping[str, str],
        *,
        timeout: float = 5.0,
        attempts: int = 3,
        steps: Sequence[StepDef] | None = None,
    ) -> None:
        self._table: Table[RedisExecutor] = Table(
            "redis", family_steps(__package__, steps)
        )
        self._attempts = attempts
        self._where: dict[str, str] = {}
        self._clients: dict[str, Client] = {}
        for name, url in targets.items():
            try:
                self._where[name] = shown_target(url)
                self._clients[name] = redis.asyncio.Redis.from_url(
                    url,
                    socket_timeout=timeout,
                    socket_connect_timeout=timeout,
                    # Retries are ours (bounded, logged in the reason), not the
                    # client's silent ones.
                    retry=Retry(NoBackoff(), 0),
                    client_name="alert-receiver-steps",
                )
            except ValueError:
                # Not chained: the parser's message quotes a piece of the URL
                # (``Port could not be cast ... as 'pass'``), often its password.
                raise ConfigError(
                    f"redis target {name!r}: its URL cannot be parsed (not shown: "
                    "it may hold a password; percent-encode a '/', '?', '#' or "
                    "'@' in the password)"
                ) from None

    def _client(self, name: str) -> Client:
        client = self._clients.get(name)
        if client is None:
            raise PermanentStepError(
                f"no Redis target named {name!r} (configured: "
                f"{', '.join(sorted(self._clients)) or 'none'}; set "
                "RECEIVER_REDIS_TARGETS=name=redis://host:6379/0)"
            )
        return client

    async def _call(
        self, target: str, action: str, fn: Callable[[], Awaitable[T]]
    ) -> T:
        """Run ``fn`` with bounded retries, typed errors out.

        Retried: the target unreachable (or loading its data), or not serving
        for now (BUSY, MASTERDOWN, a cluster failing over: ``not_serving``, as
        the Redis stores read it). Any other refusal is permanent.
        """
        where = self._where.get(target, target)
        try:
            async for attempt in retrying(
                RetryPolicy(attempts=self._attempts, multiplier=0.1, cap=1)
            ):
                with attempt:
                    try:
                        return await fn()
                    except redis.exceptions.AuthenticationError as exc:
                        raise PermanentStepError(
                            f"redis {target} ({where}) refused our credentials "
                            f"while trying to {action}: {exc.__class__.__name__}"
                        ) from exc
                    except (
                        redis.exceptions.ConnectionError,
                        redis.exceptions.TimeoutError,
                    ) as exc:
                        raise TransientStepError(
                            f"redis {target} ({where}) unreachable while trying to "
                            f"{action}: {exc.__class__.__name__}: {exc}"
                        ) from exc
                    except redis.exceptions.ResponseError as exc:
                        if not_serving(exc):
                            # Busy with a script, failing over: it did not run
                            # the command and may well run it on the next try.
                            raise TransientStepError(
                                f"redis {target} ({where}) is busy or failing over "
                                f"while trying to {action}: {exc}"
                            ) from exc
                        raise PermanentStepError(
                            f"redis {target} ({where}) refused to {action}: {exc}"
                        ) from exc
        except TransientStepError as exc:
            raise TransientStepError(f"{exc} (after {self._attempts} tries)") from exc
        raise AssertionError  # pragma: no cover (reraise=True always raises)

    async def run(self, step: StepModel, alert: Alert) -> StepResult:
        """Run a ``redis.*`` step through its step module."""
        return await self._table.run(self, step, alert)

    async def prepare(self, step: StepModel, alert: Alert) -> Intent | None:
        """State what a remediation deletes (see ``prepare_keys``)."""
        return await self._table.prepare(self, step, alert)

    async def apply(self, step: StepModel, alert: Alert, intent: Intent) -> StepResult:
        """Delete what ``prepare`` named (the step's own keys or pattern)."""
        return await self._table.apply(self, step, alert, intent)

    async def recheck(
        self, step: StepModel, alert: Alert, intent: Intent
    ) -> RecheckResult:
        """Whether an interrupted delete took effect (see ``recheck_deleted``)."""
        del alert
        return await self._table.recheck(self, step, intent)

    async def prepare_keys(self, target: str, keys: list[str]) -> Intent:
        """Name the keys a remediation deletes and digest their values now.

        A digest (SHA-256 of ``DUMP``) tells, after a crash, a key that was
        never deleted from one deleted and written again.
        """
        digests = await self._try_digests(target, [k.encode() for k in keys])
        return Intent(
            f"UNLINK {' '.join(keys[:MAX_SAMPLE_KEYS])} on redis {target}",
            {"keys": keys, "digests": digests},
        )

    async def prepare_pattern(self, step: RedisDeletePattern) -> Intent:
        """A sample of the keys the pattern matches now, with their digests."""
        check_pattern(step.pattern)
        _cursor, batch = await self._scan(self._client(step.target_name), step, 0)
        sample = batch[:MAX_SAMPLE_KEYS]
        digests = await self._try_digests(step.target_name, sample)
        return Intent(
            f"SCAN MATCH {step.pattern} + UNLINK on redis {step.target_name}",
            {
                "pattern": step.pattern,
                "sample": [k.hex() for k in sample],
                "digests": digests,
            },
        )

    async def recheck_deleted(
        self, target_name: str, intent: Intent, pattern: RedisDeletePattern | None
    ) -> RecheckResult:
        """Gone: took effect; every key as it was: did not; else cannot tell.

        ``pattern``: the step deleted by pattern (its sample is re-checked, and
        a whole, bounded SCAN tells whether any key still matches).
        """
        if pattern is not None:
            keys = [bytes.fromhex(k) for k in intent.strings("sample")]
            what = f"keys matching {pattern.pattern}"
        else:
            keys = [k.encode() for k in intent.strings("keys")]
            what = "the keys"
        shown = ", ".join(shown_key(k, 80) for k in keys[:5]) or "(none)"
        target = f"redis {target_name}"
        present = await self._present(target_name, keys)
        if pattern is not None:
            if not any(present) and not await self._any_match(pattern):
                return RecheckResult(
                    took_effect=True,
                    reason=f"{target}: no key matches {pattern.pattern}",
                )
        elif not any(present):
            return RecheckResult(
                took_effect=True, reason=f"{target}: {what} are absent ({shown})"
            )
        before = intent.data.get("digests")
        if not isinstance(before, Sequence) or isinstance(before, str):
            return RecheckResult(
                None,
                f"{target}: {what} exist ({shown}) and no digest of their values "
                "was recorded (the server refused DUMP), so a key written again "
                "cannot be told from one never deleted",
            )
        now = await self._try_digests(target_name, keys)
        if (
            now is not None
            and now == list(before)
            and any(d is not None for d in before)
        ):
            return RecheckResult(
                took_effect=False,
                reason=f"{target}: {what} still hold the values they held before "
                f"({shown})",
            )
        return RecheckResult(
            None,
            f"{target}: {what} changed since they were read ({shown}): deleted "
            "and written again, or changed by someone else",
        )

    async def _present(self, target: str, keys: Sequence[bytes]) -> list[bool]:
        """Whether each key exists (EXISTS, one per key)."""
        client = self._client(target)

        async def exists() -> list[bool]:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.exists(key)
            return [bool(n) for n in await pipe.execute()]

        return await self._call(target, f"EXISTS {len(keys)} keys", exists)

    async def _any_match(self, step: RedisDeletePattern) -> bool:
        """Whether any key matches the pattern (a whole, bounded SCAN)."""
        client = self._client(step.target_name)
        cursor = 0
        for _ in range(_RECHECK_SCANS):
            cursor, batch = await self._scan(client, step, cursor)
            if batch:
                return True
            if cursor == 0:
                return False
        return True  # not scanned to the end: assume some match

    async def _try_digests(
        self, target: str, keys: Sequence[bytes]
    ) -> list[str | None] | None:
        """The digests, or None where the server refuses DUMP (an ACL without it)."""
        try:
            return await self._digests(target, keys)
        except PermanentStepError:
            return None

    async def _digests(self, target: str, keys: Sequence[bytes]) -> list[str | None]:
        """SHA-256 of each key's DUMP (None for an absent key)."""
        client = self._client(target)

        async def dump() -> list[object]:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.execute_command("DUMP", key, **{NEVER_DECODE: True})
            return list(await pipe.execute())

        dumps = await self._call(target, f"DUMP {len(keys)} keys", dump)
        return [
            None if d is None else hashlib.sha256(raw_key(d)).hexdigest()[:32]
            for d in dumps
        ]

    async def verify(
        self, check: Templated, step: StepModel, alert: Alert
    ) -> StepResult:
        """Redis has no verifications of its own; rules verify with PromQL or HTTP."""
        del step, alert
        raise PermanentStepError(f"redis executor cannot verify {check.type_name()}")

    # ------------------------------------------------------------ diagnostics

    async def _read(self, client: Client, keys: list[str]) -> dict[str, KeyRead]:
        types_pipe = client.pipeline(transaction=False)
        for key in keys:
            types_pipe.type(key)
        types = [text_of(t)[0] for t in await types_pipe.execute()]
        pipe = client.pipeline(transaction=False)
        for key, kind in zip(keys, types, strict=True):
            if kind == "string":
                pipe.getrange(key, 0, MAX_VALUE_CHARS - 1)
                pipe.strlen(key)
            pipe.pttl(key)
        replies = iter(await pipe.execute())
        found: dict[str, KeyRead] = {}
        for key, kind in zip(keys, types, strict=True):
            value: str | None = None
            truncated: bool | None = None
            if kind == "string":
                value, _ = text_of(next(replies))
                truncated = int(next(replies)) > MAX_VALUE_CHARS
            ttl = int(next(replies))
            found[key] = KeyRead(kind, value, truncated, ttl if ttl >= 0 else None)
        return found

    async def get_keys(self, step: RedisGet) -> StepResult:
        """Read the step's keys: type, value (capped) and TTL."""
        client = self._client(step.target_name)
        keys = list(step.keys)
        found = await self._call(
            step.target_name, f"read {len(keys)} keys", lambda: self._read(client, keys)
        )
        parts = []
        for key, entry in found.items():
            if entry.type == "none":
                parts.append(f"{key} missing")
            elif entry.type == "string":
                ttl = (
                    f" (ttl {entry.ttl_ms / 1000:g}s)"
                    if entry.ttl_ms is not None
                    else ""
                )
                parts.append(f"{key} = {(entry.value or '')[:80]!r}{ttl}")
            else:
                parts.append(f"{key} is a {entry.type}")
        return StepResult(
            ok=True,
            reason=f"redis {step.target_name}: " + "; ".join(parts),
            result={"keys": {key: entry.as_json() for key, entry in found.items()}},
        )

    async def info(self, step: RedisInfo) -> StepResult:
        """Read an INFO section; for ``stats``, the cache hit rate."""
        client = self._client(step.target_name)
        raw: Mapping[str, object] = await self._call(
            step.target_name,
            f"read INFO {step.section}",
            lambda: client.info(step.section),
        )
        fields: JSONObject = {}
        for key, value in list(raw.items())[:MAX_INFO_FIELDS]:
            if isinstance(value, dict):
                fields[key] = dict(list(value.items())[:10])
            elif isinstance(value, int | float):
                fields[key] = value
            else:
                fields[key] = text_of(value, 200)[0]
        result: JSONObject = {"section": step.section, "info": fields}
        shown = [
            f"{k}={fields[k]}" for k in INFO_HIGHLIGHTS[step.section] if k in fields
        ]
        if step.section == "keyspace":
            shown = [
                f"{db}: {v.get('keys', '?')} keys" if isinstance(v, dict) else db
                for db, v in fields.items()
            ] or ["no keys"]
        reason = f"redis {step.target_name} INFO {step.section}: " + ", ".join(shown)
        if step.section == "stats":
            hits = _count(raw.get("keyspace_hits", 0))
            misses = _count(raw.get("keyspace_misses", 0))
            total = hits + misses
            result["threshold"] = f"< {HIT_RATE_THRESHOLD:.0%}"
            if total:
                rate = hits / total
                low = rate < HIT_RATE_THRESHOLD
                result["hit_rate"] = round(rate, 4)
                result["hit_rate_low"] = low
                reason = (
                    f"redis {step.target_name}: cache hit rate {rate:.1%} "
                    f"({hits} hits, {misses} misses)"
                    + (
                        "; below 70%: the runbook says raise the cache TTL "
                        "(POLICY_CACHE_TTL)"
                        if low
                        else "; at or above the runbook's 70%"
                    )
                )
            else:
                result["hit_rate"] = None
                reason = (
                    f"redis {step.target_name}: cache hit rate unknown (no hits or "
                    "misses since the last restart or CONFIG RESETSTAT)"
                )
        return StepResult(ok=True, reason=reason, result=result)

    # ------------------------------------------------------------ remediations

    async def _unlink_each(
        self, client: Client, keys: Sequence[str | bytes]
    ) -> list[bool]:
        """UNLINK keys one command each, so the reply says which existed."""
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.unlink(key)
        return [bool(n) for n in await pipe.execute()]

    async def delete_keys(self, target: str, keys: list[str]) -> StepResult:
        """UNLINK ``keys`` one by one, saying which existed."""
        client = self._client(target)
        existed = await self._call(
            target, f"UNLINK {len(keys)} keys", lambda: self._unlink_each(client, keys)
        )
        deleted = [k for k, e in zip(keys, existed, strict=True) if e]
        missing = [k for k, e in zip(keys, existed, strict=True) if not e]
        reason = f"redis {target}: unlinked {len(deleted)} of {len(keys)} keys"
        if deleted:
            reason += f" ({', '.join(deleted[:MAX_SAMPLE_KEYS])})"
        if missing:
            reason += f"; already absent: {', '.join(missing[:MAX_SAMPLE_KEYS])}"
        return StepResult(
            ok=True,
            reason=reason,
            result={
                "deleted": deleted[:MAX_SAMPLE_KEYS],
                "missing": missing[:MAX_SAMPLE_KEYS],
                "deleted_count": len(deleted),
            },
        )

    async def reset_breaker(self, step: RedisResetCircuitBreaker) -> StepResult:
        """UNLINK a circuit breaker's keys, showing the values they held."""
        client = self._client(step.target_name)
        keys = step.keys()

        async def reset() -> tuple[dict[str, KeyRead], list[bool]]:
            before = await self._read(client, keys)
            return before, await self._unlink_each(client, keys)

        before, existed = await self._call(
            step.target_name, f"reset circuit breaker {step.breaker!r}", reset
        )
        was = {k: before[k].shown() for k, e in zip(keys, existed, strict=True) if e}
        if was:
            shown = ", ".join(f"{k} (was {v[:40]!r})" for k, v in was.items())
            reason = (
                f"redis {step.target_name}: reset circuit breaker "
                f"{step.breaker!r}: unlinked {shown}"
            )
        else:
            reason = (
                f"redis {step.target_name}: circuit breaker {step.breaker!r} was "
                f"already reset ({' and '.join(keys)} absent)"
            )
        return StepResult(
            ok=True,
            reason=reason,
            result={
                "breaker": step.breaker,
                "existed": dict(zip(keys, existed, strict=True)),
                "previous": was,
            },
        )

    async def _scan(
        self, client: Client, step: RedisDeletePattern, cursor: int
    ) -> tuple[int, list[bytes]]:
        """One SCAN call; key names stay the bytes the server sent."""

        async def scan() -> tuple[int, list[bytes]]:
            # NEVER_DECODE: raw bytes even if a target URL asks the client to
            # decode (?decode_responses=1); a decoded name is not the key.
            execute: Callable[..., Awaitable[list[object]]] = client.execute_command
            after, batch = await execute(
                "SCAN",
                cursor,
                "MATCH",
                step.pattern,
                "COUNT",
                step.scan_count,
                **{NEVER_DECODE: True},
            )
            if not isinstance(batch, list):
                raise PermanentStepError(f"SCAN answered {batch!r:.80}, not a list")
            return _count(after), [raw_key(k) for k in batch]

        return await self._call(step.target_name, f"SCAN MATCH {step.pattern}", scan)

    async def _unlink_batch(
        self, client: Client, target: str, keys: list[bytes]
    ) -> list[bool]:
        return await self._call(
            target, f"UNLINK {len(keys)} keys", lambda: self._unlink_each(client, keys)
        )

    async def delete_pattern(self, step: RedisDeletePattern) -> StepResult:
        """SCAN MATCH and UNLINK in batches, under ``max_keys`` and a time budget."""
        # The loader refuses these already; a rendered template must not sneak
        # one past it either.
        check_pattern(step.pattern)
        client = self._client(step.target_name)
        budget = step.timeout.total_seconds() * _SCAN_BUDGET
        started = time.monotonic()
        cursor = 0
        submitted = 0
        deleted = 0
        calls = 0
        sample: list[str] = []
        stop = ""
        while True:
            calls += 1
            cursor, batch = await self._scan(client, step, cursor)
            # The very bytes SCAN returned go to UNLINK: never decoded, never cut.
            keys = batch[: step.max_keys - submitted]
            unprocessed = len(batch) - len(keys)
            if keys:
                submitted += len(keys)
                existed = await self._unlink_batch(client, step.target_name, keys)
                deleted += sum(existed)
                sample.extend(
                    shown_key(k) for k, e in zip(keys, existed, strict=True) if e
                )
                del sample[MAX_SAMPLE_KEYS:]
            if cursor == 0 and not unprocessed:
                break
            if submitted >= step.max_keys:
                left = (
                    f"{unprocessed} more matched in the last batch"
                    if unprocessed
                    else "more keys may match"
                )
                stop = (
                    f"stopped at max_keys={step.max_keys}; {left} {step.pattern} "
                    "(run again, or raise max_keys)"
                )
                break
            if time.monotonic() - started > budget:
                stop = (
                    f"stopped after {time.monotonic() - started:.1f}s with the scan "
                    "unfinished; more keys may match (run again)"
                )
                break
        reason = (
            f"redis {step.target_name}: SCAN MATCH {step.pattern} + UNLINK removed "
            f"{deleted} keys in {calls} scan calls"
        )
        if stop:
            reason += f"; {stop}"
        return StepResult(
            ok=True,
            reason=reason,
            result={
                "pattern": step.pattern,
                "deleted_count": deleted,
                "scan_calls": calls,
                "complete": not stop,
                "sample": sample,
                "max_keys": step.max_keys,
            },
        )

    async def aclose(self) -> None:
        """Close every target's client and its connections."""
        for client in self._clients.values():
            await client.aclose()

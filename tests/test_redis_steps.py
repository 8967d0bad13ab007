"""redis.* steps against a real, throwaway redis-server (never the receiver's store)."""

from __future__ import annotations

import contextlib
from datetime import timedelta

import pytest
import redis.asyncio
from peers import free_port, run_redis

from receiver.errors import ConfigError, PermanentStepError, TransientStepError
from receiver.model import Alert, freeze
from receiver.rulebook.steps import HttpVerify, RenderError
from receiver.settings import load_settings
from receiver.steps import build_executors
from receiver.steps.redis import MAX_VALUE_CHARS, RedisExecutor
from receiver.steps.redis.delete_keys import RedisDeleteKeys
from receiver.steps.redis.delete_pattern import RedisDeletePattern
from receiver.steps.redis.get import RedisGet
from receiver.steps.redis.info import RedisInfo
from receiver.steps.redis.reset_circuit_breaker import RedisResetCircuitBreaker

pytestmark = pytest.mark.e2e

ALERT = Alert(
    source="alertmanager",
    fingerprint="f00d",
    status="firing",
    labels=freeze({"alertname": "SarkSiemForwardingDown", "siem": "splunk"}),
)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with run_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
async def admin(redis_url):
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    await client.execute_command("FLUSHDB")  # the test's own reset, not the executor's
    yield client
    await client.aclose()


@pytest.fixture
async def executor(redis_url):
    ex = RedisExecutor({"app": redis_url}, timeout=2.0)
    yield ex
    await ex.aclose()


async def test_get_reads_strings_ttls_missing_keys_and_other_types(admin, executor):
    """redis.get reports values with TTLs, missing keys, and the type of non-strings."""
    await admin.set("circuit:splunk:state", "open", ex=120)
    await admin.set("circuit:splunk:failure", "17")
    await admin.hset("circuit:splunk:meta", mapping={"a": "1"})
    step = RedisGet(
        redis="app",
        keys=[
            "circuit:splunk:state",
            "circuit:splunk:failure",
            "circuit:splunk:meta",
            "circuit:splunk:gone",
        ],
    )
    result = await executor.run(step, ALERT)
    keys = result.result["keys"]
    assert keys["circuit:splunk:state"]["value"] == "open"
    assert 0 < keys["circuit:splunk:state"]["ttl_ms"] <= 120_000
    assert keys["circuit:splunk:failure"] == {
        "type": "string",
        "value": "17",
        "truncated": False,
    }
    assert keys["circuit:splunk:meta"] == {"type": "hash"}
    assert keys["circuit:splunk:gone"] == {"type": "none"}
    assert "circuit:splunk:state = 'open' (ttl" in result.reason
    assert "circuit:splunk:gone missing" in result.reason
    assert "circuit:splunk:meta is a hash" in result.reason


async def test_get_caps_long_values(admin, executor):
    """A huge value is cut to the cap and flagged as truncated."""
    await admin.set("big", "x" * (MAX_VALUE_CHARS * 10))
    result = await executor.run(RedisGet(redis="app", keys=["big"]), ALERT)
    entry = result.result["keys"]["big"]
    assert len(entry["value"]) == MAX_VALUE_CHARS
    assert entry["truncated"] is True


async def test_info_stats_computes_the_runbook_hit_rate(admin, executor):
    """Hit rate is keyspace_hits / (hits + misses); below 70% says raise the TTL."""
    await admin.config_resetstat()
    await admin.set("policy:decision:1", "allow")
    for _ in range(3):
        await admin.get("policy:decision:1")
    await admin.get("policy:decision:missing")
    result = await executor.run(RedisInfo(redis="app", section="stats"), ALERT)
    assert result.result["hit_rate"] == 0.75
    assert result.result["hit_rate_low"] is False
    assert result.result["threshold"] == "< 70%"
    assert "cache hit rate 75.0% (3 hits, 1 misses)" in result.reason
    assert "at or above the runbook's 70%" in result.reason

    await admin.config_resetstat()
    await admin.get("policy:decision:1")
    for i in range(3):
        await admin.get(f"policy:decision:miss{i}")
    low = await executor.run(RedisInfo(redis="app", section="stats"), ALERT)
    assert low.result["hit_rate"] == 0.25
    assert low.result["hit_rate_low"] is True
    assert "below 70%: the runbook says raise the cache TTL" in low.reason


async def test_info_without_lookups_has_no_hit_rate(admin, executor):
    """With no hits or misses the rate is unknown, not 0% or 100%."""
    await admin.config_resetstat()
    result = await executor.run(RedisInfo(redis="app"), ALERT)
    assert result.result["hit_rate"] is None
    assert "unknown" in result.reason


async def test_info_keyspace_lists_databases(admin, executor):
    """INFO keyspace reports keys per database."""
    await admin.set("a", "1")
    await admin.set("b", "2")
    result = await executor.run(RedisInfo(redis="app", section="keyspace"), ALERT)
    assert result.result["info"]["db0"]["keys"] == 2
    assert "db0: 2 keys" in result.reason


async def test_delete_keys_unlinks_only_the_named_keys(admin, executor):
    """redis.delete_keys removes exactly its keys and says which were absent."""
    await admin.mset({"cache:a": "1", "cache:b": "2", "cache:c": "3"})
    step = RedisDeleteKeys(redis="app", keys=["cache:a", "cache:b", "cache:zzz"])
    result = await executor.run(step, ALERT)
    assert result.result["deleted"] == ["cache:a", "cache:b"]
    assert result.result["missing"] == ["cache:zzz"]
    assert sorted([k async for k in admin.scan_iter(match="cache:*")]) == ["cache:c"]
    assert await admin.get("cache:c") == "3"
    assert "unlinked 2 of 3 keys" in result.reason
    assert "already absent: cache:zzz" in result.reason


async def test_delete_pattern_stops_at_max_keys_and_says_so(admin, executor):
    """SCAN + UNLINK deletes at most max_keys, reports the cap, and spares others."""
    pipe = admin.pipeline(transaction=False)
    for i in range(2500):
        pipe.set(f"policy:decision:{i}", "x")
    for i in range(50):
        pipe.set(f"policy:other:{i}", "keep")
    await pipe.execute()
    step = RedisDeletePattern(
        redis="app", pattern="policy:decision:*", max_keys=1000, scan_count=200
    )
    first = await executor.run(step, ALERT)
    assert first.result["deleted_count"] == 1000
    assert first.result["complete"] is False
    assert "stopped at max_keys=1000" in first.reason
    assert len(first.result["sample"]) == 20
    # SCAN may return a key twice while the keyspace rehashes (after mass
    # deletes): count distinct keys.
    remaining = {k async for k in admin.scan_iter(match="policy:decision:*")}
    assert len(remaining) == 1500

    big = step.model_copy(update={"max_keys": 5000})
    second = await executor.run(big, ALERT)
    assert second.result["deleted_count"] == 1500
    assert second.result["complete"] is True
    assert "stopped" not in second.reason
    assert [k async for k in admin.scan_iter(match="policy:decision:*")] == []
    assert len({k async for k in admin.scan_iter(match="policy:other:*")}) == 50


@pytest.fixture
async def raw(redis_url):
    """An admin client that keeps key names as bytes."""
    client = redis.asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def raw_keys(raw, pattern: bytes) -> set[bytes]:
    return {k async for k in raw.scan_iter(match=pattern)}


async def test_delete_pattern_unlinks_long_keys_exactly_and_spares_their_prefix(
    admin, raw, executor
):
    """A 600-byte key is unlinked whole; the key its first 512 characters name stays."""
    long_key = b"cache:" + b"x" * 600 + b":v1"
    prefix = long_key[:512]  # what a cut name would have unlinked instead
    await raw.set(long_key, b"1")
    await raw.set(prefix, b"keep")
    step = RedisDeletePattern(redis="app", pattern="cache:*:v1", max_keys=10)
    result = await executor.run(step, ALERT)
    assert result.result["deleted_count"] == 1
    assert result.result["complete"] is True
    assert await raw.exists(long_key) == 0
    assert await raw.get(prefix) == b"keep"
    [shown] = result.result["sample"]
    assert shown.startswith("cache:xxxx")
    assert shown.endswith(f"... ({len(long_key)} bytes)")


async def test_delete_pattern_unlinks_non_utf8_keys_by_their_bytes(
    admin, raw, executor
):
    """A non-UTF-8 key is deleted as its bytes, not as a replacement-character twin."""
    binary = b"cache:\xff\xfe:v1"
    twin = "cache:\ufffd\ufffd:other".encode()
    await raw.set(binary, b"1")
    await raw.set(twin, b"keep")
    step = RedisDeletePattern(redis="app", pattern="cache:*:v1", max_keys=10)
    result = await executor.run(step, ALERT)
    assert result.result["deleted_count"] == 1
    assert await raw.exists(binary) == 0
    assert await raw.get(twin) == b"keep"
    assert result.result["sample"] == ["cache:\\xff\\xfe:v1"]


@pytest.mark.parametrize(
    "case",
    [
        # (keys, max_keys, deleted, complete)
        (10, 4, 4, False),  # max_keys reached inside the only (last) SCAN batch
        (10, 9, 9, False),
        (10, 10, 10, True),  # exactly at the end of the last batch: all done
        (10, 11, 10, True),
    ],
)
async def test_delete_pattern_reports_complete_truthfully_at_the_max_keys_boundary(
    admin, raw, executor, case
):
    """'complete' is false while matching keys remain, even in the last SCAN batch."""
    keys, max_keys, deleted, complete = case
    await raw.mset({f"policy:decision:{i}".encode(): b"x" for i in range(keys)})
    step = RedisDeletePattern(
        redis="app", pattern="policy:decision:*", max_keys=max_keys, scan_count=1000
    )
    result = await executor.run(step, ALERT)
    assert result.result["scan_calls"] == 1
    assert result.result["deleted_count"] == deleted
    assert result.result["complete"] is complete
    left = len(await raw_keys(raw, b"policy:decision:*"))
    assert left == keys - deleted
    assert ("stopped at max_keys" in result.reason) is not complete
    if not complete:
        assert f"{left} more matched in the last batch" in result.reason


async def test_delete_pattern_never_decodes_even_if_the_target_url_asks(
    admin, raw, redis_url
):
    """?decode_responses=1 on a target URL cannot turn key bytes into other keys."""
    binary = b"cache:\xff:v1"
    await raw.set(binary, b"1")
    decoding = RedisExecutor({"app": f"{redis_url}?decode_responses=1"}, timeout=2.0)
    try:
        step = RedisDeletePattern(redis="app", pattern="cache:*:v1", max_keys=10)
        result = await decoding.run(step, ALERT)
    finally:
        await decoding.aclose()
    assert result.result["deleted_count"] == 1
    assert await raw.exists(binary) == 0


@pytest.mark.parametrize("pattern", ["*", "", "  ", "?olicy:*", "[p]olicy:*", "**"])
async def test_delete_pattern_refuses_patterns_without_a_prefix_at_run_time(
    admin, executor, pattern
):
    """A pattern that slipped past the loader is refused before any SCAN."""
    await admin.set("policy:decision:1", "x")
    await admin.config_resetstat()
    step = RedisDeletePattern.model_construct(
        target_name="app",
        pattern=pattern,
        max_keys=10,
        scan_count=10,
        timeout=timedelta(seconds=5),
    )
    with pytest.raises(PermanentStepError, match="no literal prefix"):
        await executor.run(step, ALERT)
    assert await admin.get("policy:decision:1") == "x"
    stats = await admin.info("commandstats")
    assert "cmdstat_scan" not in stats
    assert "cmdstat_unlink" not in stats


def test_the_loader_refuses_a_bare_star_and_templates_cannot_widen_a_pattern():
    """Bare '*' fails validation; an alert value with glob characters fails render."""
    with pytest.raises(ValueError, match="no literal prefix"):
        RedisDeletePattern(pattern="*")
    step = RedisDeletePattern(pattern="policy:{labels.tenant}:*")
    sneaky = Alert(
        source="alertmanager",
        fingerprint="x",
        status="firing",
        labels=freeze({"tenant": "*"}),
    )
    with pytest.raises(RenderError, match="the glob character '\\*'"):
        step.rendered(sneaky)


async def test_reset_circuit_breaker_reports_which_keys_existed(admin, executor):
    """The breaker reset unlinks state and failure and says what they held."""
    await admin.set("circuit:splunk:state", "open")
    await admin.set("circuit:datadog:state", "open")
    step = RedisResetCircuitBreaker(breaker="{labels.siem}", redis="app").rendered(
        ALERT
    )
    result = await executor.run(step, ALERT)
    assert result.result["existed"] == {
        "circuit:splunk:state": True,
        "circuit:splunk:failure": False,
    }
    assert result.result["previous"] == {"circuit:splunk:state": "open"}
    assert "unlinked circuit:splunk:state (was 'open')" in result.reason
    assert await admin.exists("circuit:splunk:state") == 0
    assert await admin.get("circuit:datadog:state") == "open"

    again = await executor.run(step, ALERT)
    assert "already reset" in again.reason
    assert again.result["previous"] == {}


async def test_steps_never_send_keys_or_flush(admin, executor):
    """Every redis step runs on SCAN, GET, UNLINK, INFO: never KEYS or FLUSH*."""
    await admin.mset({f"policy:decision:{i}": "x" for i in range(30)})
    await admin.set("circuit:splunk:state", "open")
    await admin.config_resetstat()
    for step in (
        RedisGet(redis="app", keys=["circuit:splunk:state"]),
        RedisInfo(redis="app", section="stats"),
        RedisInfo(redis="app", section="keyspace"),
        RedisDeleteKeys(redis="app", keys=["policy:decision:0"]),
        RedisDeletePattern(redis="app", pattern="policy:decision:*", scan_count=10),
        RedisResetCircuitBreaker(redis="app", breaker="splunk"),
    ):
        await executor.run(step, ALERT)
    stats = await admin.info("commandstats")
    used = {name.removeprefix("cmdstat_") for name in stats}
    assert {"scan", "unlink", "info"} <= used
    assert not used & {"keys", "flushdb", "flushall", "del"}, used


async def test_unknown_target_names_the_configured_ones(executor):
    """A step naming an unconfigured target fails permanently with the fix."""
    with pytest.raises(PermanentStepError, match=r"no Redis target named 'cache'.*app"):
        await executor.run(RedisGet(redis="cache", keys=["k"]), ALERT)


async def test_unreachable_target_is_transient_and_keeps_the_password_out():
    """A closed port is a transient error after bounded tries; no password shown."""
    url = f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"
    ex = RedisExecutor({"down": url}, timeout=0.5, attempts=2)
    try:
        with pytest.raises(TransientStepError) as caught:
            await ex.run(RedisGet(redis="down", keys=["k"]), ALERT)
    finally:
        await ex.aclose()
    message = str(caught.value)
    assert "unreachable" in message
    assert "after 2 tries" in message
    assert "hunter2-secret" not in message


async def test_wrong_password_is_permanent_and_never_echoed(tmp_path):
    """A target with the wrong password fails permanently, without the password."""
    with run_redis(tmp_path) as url:
        raw = redis.asyncio.Redis.from_url(url)
        await raw.config_set("requirepass", "right-pass-77a1")
        await raw.aclose()
        wrong = url.replace("redis://", "redis://:wrong-pass-3c9e@")
        right = url.replace("redis://", "redis://:right-pass-77a1@")
        ex = RedisExecutor({"bad": wrong, "good": right}, timeout=2.0)
        try:
            with pytest.raises(PermanentStepError) as caught:
                await ex.run(RedisGet(redis="bad", keys=["k"]), ALERT)
            ok = await ex.run(RedisGet(redis="good", keys=["k"]), ALERT)
        finally:
            await ex.aclose()
    assert "refused our credentials" in str(caught.value)
    assert "wrong-pass-3c9e" not in str(caught.value)
    assert ok.result["keys"]["k"] == {"type": "none"}


async def test_verify_is_not_a_redis_thing(executor):
    """Redis offers no verifications; asking for one is a permanent error."""
    check = HttpVerify(url="https://h.test/health")
    with pytest.raises(PermanentStepError, match="redis executor cannot verify http"):
        await executor.verify(check, RedisGet(keys=["k"]), ALERT)


# ------------------------------------------------------------------ settings


@pytest.mark.parametrize(
    ("store", "target"),
    [
        ("redis://127.0.0.1:6390/0", "redis://127.0.0.1:6390/0"),
        ("redis://localhost:6390", "redis://:pw-1@127.0.0.1:6390/0"),
        ("redis://127.0.0.1:6390/2", "redis://127.0.0.1:6390?db=2"),
        ("redis://redis.internal", "redis://REDIS.internal:6379/0"),
    ],
)
def test_the_state_store_is_refused_as_a_step_target(store, target):
    """The receiver's own store (same host, port and db) can never be a target."""
    env = {"RECEIVER_STORE": store, "RECEIVER_REDIS_TARGETS": f"app={target}"}
    with pytest.raises(ConfigError) as caught:
        load_settings(environ=env)
    assert "is the receiver's own state store" in str(caught.value)
    assert "pw-1" not in str(caught.value)


def test_another_database_of_the_store_server_is_allowed():
    """A different database on the store's server is a separate keyspace."""
    env = {
        "RECEIVER_STORE": "redis://127.0.0.1:6390/0",
        "RECEIVER_REDIS_TARGETS": "app=redis://127.0.0.1:6390/1,other=redis://h:1/0",
    }
    settings = load_settings(environ=env)
    assert set(settings.redis.targets) == {"app", "other"}


def test_targets_come_from_a_file_and_never_print(tmp_path):
    """RECEIVER_REDIS_TARGETS_FILE holds name=url lines; the URLs stay secret."""
    path = tmp_path / "targets"
    path.write_text(
        "app=redis://:file-pass-19@10.0.0.5:6379/0\ncache=redis://c:6379/3\n"
    )
    settings = load_settings(environ={"RECEIVER_REDIS_TARGETS_FILE": str(path)})
    assert settings.redis.targets["app"].get_secret_value().endswith("10.0.0.5:6379/0")
    assert "file-pass-19" not in repr(settings)
    assert "file-pass-19" not in settings.model_dump_json()
    assert "file-pass-19" in settings.secret_values()


def test_a_malformed_target_entry_is_refused_without_echoing_it():
    """An entry without NAME= is a config error that does not print the entry."""
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"RECEIVER_REDIS_TARGETS": "redis://:leak-9@h:1/0"})
    assert "NAME=URL" in str(caught.value)
    assert "leak-9" not in str(caught.value)


async def test_build_executors_registers_redis_per_named_target(redis_url, admin):
    """Settings redis_targets become one redis executor with a client per name."""
    settings = load_settings(
        environ={
            "RECEIVER_STORE": "sqlite:///state.db",
            "RECEIVER_REDIS_TARGETS": f"app={redis_url},second={redis_url}",
        }
    )
    executors = build_executors(settings)
    try:
        ex = executors["redis"]
        assert isinstance(ex, RedisExecutor)
        await admin.set("k", "v")
        for name in ("app", "second"):
            got = await ex.run(RedisGet(redis=name, keys=["k"]), ALERT)
            assert got.result["keys"]["k"]["value"] == "v"
    finally:
        for executor in executors.values():
            with contextlib.suppress(Exception):
                await executor.aclose()

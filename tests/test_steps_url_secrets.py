"""A step server URL that cannot be parsed never shows its password.

A password holding an unencoded ``/``, ``#`` or ``?`` (base64 passwords often
hold a ``/``) makes ``urlsplit`` read part of it as the port: Python's and
httpx's errors then quote that part (``Invalid port: 's3cret'``). Settings
find no password in such a URL, so nothing scrubs it later.
"""

from __future__ import annotations

import traceback

import httpx
import pytest

from receiver.errors import ConfigError
from receiver.steps.prometheus import PrometheusExecutor
from receiver.steps.redis import RedisExecutor

SECRET = "s3cretpart"


def _shown(exc: BaseException) -> str:
    """Everything a log line with the traceback would show."""
    return "".join(traceback.format_exception(exc))


@pytest.mark.parametrize("sep", ["/", "#", "?"])
def test_a_redis_target_url_that_cannot_be_parsed_hides_its_password(sep):
    """The error names the target, never the URL or a piece of its password."""
    url = f"redis://:{SECRET}{sep}rest@127.0.0.1:6379/0"
    with pytest.raises(ConfigError) as info:
        RedisExecutor({"cache": url})
    assert "'cache'" in str(info.value)
    assert SECRET not in _shown(info.value)


@pytest.mark.parametrize("sep", ["/", "#", "?"])
async def test_a_prometheus_url_that_cannot_be_parsed_hides_its_password(sep):
    """Refused when built, naming the server; no query ever quotes it."""
    url = f"http://user:{SECRET}{sep}rest@127.0.0.1:9"
    client = httpx.AsyncClient()
    try:
        with pytest.raises(ConfigError) as info:
            PrometheusExecutor(client, {"default": url})
    finally:
        await client.aclose()
    assert "'default'" in str(info.value)
    assert SECRET not in _shown(info.value)

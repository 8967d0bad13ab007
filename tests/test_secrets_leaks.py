"""Secrets that leaked past the scrubber, the settings errors and the auth errors."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from receiver.errors import AuthError, ConfigError
from receiver.logs import redact_processor
from receiver.scrubbing import Scrubber
from receiver.settings import load_settings
from receiver.web.auth import Authenticator

TOKEN = "s3cretTOKENvalue1234567890"
SLACK = "slackHookSecret666abcdefgh"
HOOK = "webhookTok777xyz"
STORE_PW = "Xq9vZ7kPwGGG444"


def test_a_yaml_syntax_error_does_not_quote_the_secret_on_its_line(tmp_path: Path):
    """PyYAML's message quotes the offending line; the error names line and column."""
    config = tmp_path / "receiver.yaml"
    config.write_text(f'auth:\n  tokens: [{TOKEN}, "unterminated\nserver: {{}}\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ={})
    assert TOKEN not in str(caught.value)
    assert str(config) in str(caught.value)
    assert "line " in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        f"redis:/:{STORE_PW}@cache:6379/0",  # a typo in the scheme
        f":{STORE_PW}@cache:6379",  # no scheme at all
        f"redis://:{STORE_PW[:5]}/{STORE_PW[5:]}@cache:6379/0",  # unencoded /
    ],
)
def test_a_wrong_store_url_is_refused_naming_the_setting_not_the_password(url: str):
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"RECEIVER_STORE": url})
    text = str(caught.value)
    assert "RECEIVER_STORE" in text
    assert STORE_PW[:5] not in text
    assert STORE_PW[5:] not in text


def test_store_and_basic_auth_credentials_are_known_secrets():
    """The store's Redis password, and user:password as base64, are masked."""
    settings = load_settings(
        environ={
            "RECEIVER_STORE": f"redis://:{STORE_PW}@cache:6379/0",
            "RECEIVER_BASIC_AUTH": "alice:pwBasicSecret333",
        }
    )
    found = settings.secret_values()
    assert STORE_PW in found
    assert base64.b64encode(b"alice:pwBasicSecret333").decode() in found


@pytest.mark.parametrize(
    "header", [TOKEN, f"Bearer\t{TOKEN}", f"{TOKEN[:10]}:{TOKEN[10:]}"]
)
def test_an_unsupported_authorization_header_is_never_echoed(header: str):
    """A bare token (no scheme) or a tab after Bearer: 401 without any of it."""
    settings = load_settings(environ={"RECEIVER_AUTH_TOKENS": "configured-token"})
    auth = Authenticator.from_settings(settings.auth, loopback=False)
    with pytest.raises(AuthError) as caught:
        auth.require(header, "webhook")
    assert caught.value.status == 401
    assert TOKEN[:6] not in str(caught.value)


def test_webhook_url_tokens_are_masked_as_clients_and_servers_echo_them():
    """The URL as httpx prints it, a JSON-escaped path, the token alone: masked."""
    slack = f"https://Hooks.Example:443/services/T000/B000/{SLACK}"
    hook = f"http://audit.example/hook?token={HOOK}"
    settings = load_settings(
        environ={"RECEIVER_SLACK_WEBHOOK_URL": slack, "RECEIVER_WEBHOOK_URLS": hook}
    )
    scrub = Scrubber(settings.secret_values())
    echoed = [
        f'HTTP Request: POST {httpx.URL(slack)} "HTTP/1.1 404 Not Found"',
        json.dumps({"path": f"/hook?token={HOOK}"}).replace("/", "\\/"),
        f"unknown token {HOOK}",
        f"no such webhook {SLACK}",
        f"GET {quote(hook, safe='')}",
    ]
    for text in echoed:
        assert HOOK not in scrub(text), text
        assert SLACK not in scrub(text), text


def test_the_scrubber_masks_json_escaped_and_percent_encoded_forms():
    secret = "p\u00e4ss/w<o>rd&x"
    scrub = Scrubber([secret])
    for form in (
        json.dumps(secret)[1:-1],
        json.dumps(secret)[1:-1].replace("/", "\\/"),
        json.dumps(secret, ensure_ascii=False)[1:-1]
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026"),
        quote(secret, safe=""),
    ):
        assert scrub(f"before {form} after") == "before *** after", form


def test_log_redaction_reaches_nested_values_and_exceptions():
    """A dict, a list or an exception passed as a log value is masked too."""
    process = redact_processor([TOKEN])
    event = process(
        None,
        "warning",
        {
            "event": "x",
            "detail": {"reason": f"got {TOKEN}", "headers": {"Authorization": "b"}},
            "tries": [f"first {TOKEN}", 2],
            "error": httpx.ConnectError(f"cannot reach http://h/?t={TOKEN}"),
        },
    )
    text = json.dumps(event, default=repr)
    assert TOKEN not in text
    assert event["detail"]["headers"]["Authorization"] == "***"


def test_a_secret_file_that_is_not_utf8_is_a_clear_error(tmp_path: Path):
    """RECEIVER_<NAME>_FILE with binary content: a ConfigError naming the variable."""
    secret = tmp_path / "token"
    secret.write_bytes(b"tok\xff\xfeSECRETBYTES\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"RECEIVER_AUTH_TOKENS_FILE": str(secret)})
    assert "RECEIVER_AUTH_TOKENS_FILE" in str(caught.value)
    assert "SECRETBYTES" not in str(caught.value)

"""The one rule for missing peers: skip locally, fail when CI requires end-to-end."""

from __future__ import annotations

import pytest
from _pytest.outcomes import Failed, Skipped
from peers import require_binary


def test_missing_binary_skips_locally(monkeypatch):
    """Without RECEIVER_REQUIRE_E2E a missing binary skips, naming its package."""
    monkeypatch.delenv("RECEIVER_REQUIRE_E2E", raising=False)
    with pytest.raises(Skipped, match="install Debian package nope-pkg"):
        require_binary("no-such-binary-x7", package="nope-pkg")


def test_missing_binary_fails_under_require_e2e(monkeypatch):
    """With RECEIVER_REQUIRE_E2E=1 (CI) a missing binary is a failure, not a skip."""
    monkeypatch.setenv("RECEIVER_REQUIRE_E2E", "1")
    with pytest.raises(Failed, match="RECEIVER_REQUIRE_E2E=1 but no-such-binary-x7"):
        require_binary("no-such-binary-x7")


def test_present_binary_is_found():
    """A binary on PATH is returned by path."""
    assert require_binary("sh").endswith("/sh")

"""The one secret scrubber, used by logs, sinks and step reasons."""

from __future__ import annotations

from receiver.logs import redact_processor
from receiver.scrubbing import Scrubber
from receiver.sinks.delivery import Deliverer


def test_every_secret_is_masked_longest_first():
    """A secret containing another is masked whole, never half shown."""
    scrub = Scrubber(["abc", "abcdef", ""])
    assert scrub("token=abcdef and abc") == "token=*** and ***"
    assert scrub("nothing here") == "nothing here"


def test_no_secrets_means_nothing_to_mask():
    """Empty secrets are ignored (an empty string would mask every gap)."""
    scrub = Scrubber(["", ""])
    assert not scrub
    assert scrub("plain") == "plain"


def test_logs_and_sinks_scrub_the_same_way():
    """The log processor and a sink's deliverer mask exactly alike."""
    secrets = ["s3cr3t", "s3cr3t-longer"]
    text = "failed with s3cr3t-longer then s3cr3t"
    event = redact_processor(secrets)(None, "info", {"event": "x", "detail": text})
    deliverer = Deliverer(client=None, secrets=secrets)  # type: ignore[arg-type]
    assert event["detail"] == deliverer.scrub(text) == Scrubber(secrets)(text)
    assert "s3cr3t" not in event["detail"]

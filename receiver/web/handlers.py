"""Request handlers: the three webhooks, the read API, replay and operations.

Built once in ``create_app`` with their dependencies; nothing past this module
sees raw dicts. A 202 means the payload is in the store's journal. What every
webhook goes through is ``receiver.web.edge``; the webhooks are
``receiver.web.webhooks``, the read API and operations ``receiver.web.reads``.
"""

from __future__ import annotations

from receiver.web.edge import Backpressure, EdgeLimits, redact_routing_key
from receiver.web.reads import Reads
from receiver.web.webhooks import Webhooks

__all__ = ["Backpressure", "EdgeLimits", "Handlers", "redact_routing_key"]


class Handlers(Webhooks, Reads):
    """Every route's handler, sharing the app's dependencies."""

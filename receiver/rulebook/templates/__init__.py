"""Typed template slots: alert values are substituted only where a grammar says so.

A template is a string with placeholders ``{labels.NAME}``, ``{annotations.NAME}``,
``{alert.fingerprint}``, ``{alert.status}``, ``{alert.source}`` or, in a playbook
that declares ``params``, ``{params.NAME}``; every other brace is literal, so PromQL
selectors need no escaping. A label or annotation placeholder may name a default
for an alert that lacks the value or has it empty: ``{labels.deployment|sark}``.
Only step fields that declare a ``Slot`` take templates, and the slot's grammar is
checked twice:

- when the rules load (``check_slot_template``): every placeholder must sit where
  the grammar can fill it (a PromQL placeholder inside a quoted string, a URL
  placeholder in the host, path or query), and a template without placeholders
  must already be valid, and a default must fit where it stands;
- when a playbook is bound to a rule's parameters (``bind``): each literal
  parameter value must fit where it stands, and is escaped for it as an alert
  value would be;
- when a step is rendered for an alert (``render``): each substituted value must
  fit its slot, or ``SlotError`` says which label did not and why. The planner
  turns that into a skipped step; a value never changes what a step does.

Slot grammars (``GRAMMARS`` holds their descriptions for the docs):

- ``k8s_name``: DNS-1123 subdomain (lowercase alphanumerics, ``-`` and ``.``,
  at most 253 characters), full match;
- ``namespace``: DNS-1123 label (lowercase alphanumerics and ``-``, at most 63);
- ``label_selector``: each value is a Kubernetes label value;
- ``promql``: a value inside ``"..."`` or ``'...'`` is escaped for the string;
  after ``=~`` or ``!~`` it is regex-escaped first, so it matches only itself;
- ``redis_key`` / ``redis_key_part``: no glob characters (``*?[]`` and
  backslash), no ``:`` (it would change the key's structure), no whitespace or
  control characters, at most 128 characters; a ``redis_key_part`` field is one
  part as a whole;
- ``url``: a host value is a DNS name (the allowlist is checked when the step
  runs); a path value is one path segment (no ``/``, ``..``, ``?``, ``#``,
  whitespace or control characters) and is percent-encoded; a query value is
  percent-encoded.

A playbook may narrow a label further with ``labels: {NAME: {one_of: [...]}}``.
Nothing rendered here ever reaches a shell.
"""

from __future__ import annotations

from receiver.errors import RenderError, SlotError
from receiver.rulebook.templates.durations import format_duration, parse_duration
from receiver.rulebook.templates.grammars import GRAMMARS
from receiver.rulebook.templates.parsing import (
    PARAM_TYPES,
    SlotMarker,
    bind,
    check_choice,
    check_param_value,
    check_slot_template,
    check_template,
    is_template_value,
    params_used,
    placeholders,
)
from receiver.rulebook.templates.promql import promql_string, quote_meta
from receiver.rulebook.templates.rendering import render
from receiver.rulebook.templates.slots import (
    DNS1123_LABEL,
    DNS1123_SUBDOMAIN,
    MAX_VALUE_CHARS,
    PLACEHOLDER,
    REDIS_KEY_PART_CHARS,
    BindError,
    Grammar,
    Slot,
    TemplateError,
)

__all__ = [
    "DNS1123_LABEL",
    "DNS1123_SUBDOMAIN",
    "GRAMMARS",
    "MAX_VALUE_CHARS",
    "PARAM_TYPES",
    "PLACEHOLDER",
    "REDIS_KEY_PART_CHARS",
    "BindError",
    "Grammar",
    "RenderError",
    "Slot",
    "SlotError",
    "SlotMarker",
    "TemplateError",
    "bind",
    "check_choice",
    "check_param_value",
    "check_slot_template",
    "check_template",
    "format_duration",
    "is_template_value",
    "params_used",
    "parse_duration",
    "placeholders",
    "promql_string",
    "quote_meta",
    "render",
]

"""The table of slot grammars: what each slot takes and how it is checked."""

from __future__ import annotations

from receiver.rulebook.templates.promql import (
    _promql_holes,
    _promql_insert,
    _promql_refuse,
    _promql_whole,
)
from receiver.rulebook.templates.slots import (
    _K8S_LABEL_CHARS,
    _K8S_NAME_CHARS,
    Grammar,
    Slot,
    _Hole,
    _k8s_chars,
    _k8s_name_whole,
    _label_value,
    _namespace_whole,
    _no_escape,
    _redis_key_whole,
    _redis_part,
    _redis_part_whole,
    _whole_only,
)
from receiver.rulebook.templates.urls import (
    _url_holes,
    _url_insert,
    _url_refuse,
    _url_whole,
)

# ----------------------------------------------------------------- the table


GRAMMARS: dict[Slot, Grammar] = {
    Slot.K8S_NAME: Grammar(
        Slot.K8S_NAME,
        "a Kubernetes name",
        "DNS-1123 subdomain: lowercase alphanumerics, `-` and `.`, at most 253 "
        "characters (the whole field, full match)",
        _k8s_chars(_K8S_NAME_CHARS),
        _no_escape,
        _k8s_name_whole,
        _whole_only,
    ),
    Slot.NAMESPACE: Grammar(
        Slot.NAMESPACE,
        "a Kubernetes namespace",
        "DNS-1123 label: lowercase alphanumerics and `-`, at most 63 characters "
        "(the whole field, full match)",
        _k8s_chars(_K8S_LABEL_CHARS),
        _no_escape,
        _namespace_whole,
        _whole_only,
    ),
    Slot.LABEL_SELECTOR: Grammar(
        Slot.LABEL_SELECTOR,
        "a Kubernetes label value",
        "each value is a Kubernetes label value: alphanumerics, `-`, `_`, `.`, "
        "at most 63 characters",
        _label_value,
        _no_escape,
        lambda _text: None,
        _whole_only,
    ),
    Slot.PROMQL: Grammar(
        Slot.PROMQL,
        "a PromQL string",
        "placeholders only inside quoted strings; a value is escaped for the string, "
        "and after `=~` or `!~` regex-escaped first (it matches only itself)",
        _promql_refuse,
        _promql_insert,
        _promql_whole,
        _promql_holes,
        {
            _Hole.PROMQL_REGEX: "a PromQL regex literal",
            _Hole.PROMQL_REGEX_SINGLE: "a PromQL regex literal",
        },
    ),
    Slot.REDIS_KEY: Grammar(
        Slot.REDIS_KEY,
        "a Redis key part",
        "each value is a Redis key part: no `*?[]\\`, no `:`, no whitespace or "
        "control characters, at most 128 characters",
        _redis_part,
        _no_escape,
        _redis_key_whole,
        _whole_only,
    ),
    Slot.REDIS_KEY_PART: Grammar(
        Slot.REDIS_KEY_PART,
        "a Redis key part",
        "the whole field is one Redis key part: no `*?[]\\`, no `:`, no whitespace "
        "or control characters, at most 128 characters",
        _redis_part,
        _no_escape,
        _redis_part_whole,
        _whole_only,
    ),
    Slot.URL: Grammar(
        Slot.URL,
        "a URL value",
        "an http(s) URL; placeholders only in the host (a DNS name; the allowlist "
        "decides), a path segment (no `/`, `..`, `?`, `#`, whitespace or control "
        "characters; percent-encoded) or the query (percent-encoded)",
        _url_refuse,
        _url_insert,
        _url_whole,
        _url_holes,
        {
            _Hole.URL_HOST: "a host name",
            _Hole.URL_PATH: "a URL path segment",
            _Hole.URL_QUERY: "a URL query value",
        },
    ),
}

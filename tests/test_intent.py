"""Intent data read back from a store: typed reads that name what is damaged."""

from __future__ import annotations

import pytest

from receiver.model import Intent

INTENT = Intent(
    "scale deployment/sark -n production from 2 to 4",
    {
        "from": 2,
        "to": 4,
        "up": True,
        "stamp": "2026-12-05T22:00:00Z",
        "notes": ["capped at max 10"],
        "pods": [{"name": "sark-1", "uid": "u-1"}],
    },
)


def test_typed_reads_survive_the_stores_round_trip() -> None:
    back = Intent.from_json(INTENT.to_json())
    assert back is not None
    assert back.number("from") == 2
    assert back.number("to") == 4
    assert back.flag("up") is True
    assert back.text("stamp") == "2026-12-05T22:00:00Z"
    assert back.strings("notes") == ["capped at max 10"]
    assert back.objects("pods") == [{"name": "sark-1", "uid": "u-1"}]
    assert back.strings("absent") == []
    assert back.objects("absent") == []


@pytest.mark.parametrize(
    ("data", "read", "wanted"),
    [
        ({"from": "2"}, lambda i: i.number("from"), "an integer"),
        ({"from": True}, lambda i: i.number("from"), "an integer"),
        ({"from": 2.5}, lambda i: i.number("from"), "an integer"),
        ({}, lambda i: i.number("from"), "an integer"),
        ({"up": 1}, lambda i: i.flag("up"), "true or false"),
        ({"stamp": 5}, lambda i: i.text("stamp"), "a string"),
        ({"notes": "one"}, lambda i: i.strings("notes"), "a list of strings"),
        ({"notes": ["a", 1]}, lambda i: i.strings("notes"), "a list of strings"),
        ({"pods": {"name": "x"}}, lambda i: i.objects("pods"), "a list of objects"),
        (
            {"pods": [{"name": "x"}, 3]},
            lambda i: i.objects("pods"),
            "a list of objects",
        ),
    ],
)
def test_a_damaged_value_is_refused_naming_the_key_and_the_action(
    data, read, wanted
) -> None:
    intent = Intent("delete 1 pod(s) in production: sark-1", data)
    key = next(iter(data), "from")
    with pytest.raises(ValueError, match=wanted) as caught:
        read(intent)
    assert repr(key) in str(caught.value)
    assert "delete 1 pod(s) in production" in str(caught.value)

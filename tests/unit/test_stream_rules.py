"""The order rules of one Segment stream."""

from __future__ import annotations

from polypstream.server import StreamRules


def test_increasing_indexes_with_gaps_are_fine() -> None:
    rules = StreamRules()
    assert [rules.check("s", i) for i in (0, 1, 5, 6)] == ["", "", "", ""]


def test_repeated_or_earlier_indexes_are_refused_without_moving_the_stream_on() -> None:
    rules = StreamRules()
    rules.check("s", 3)
    assert "index 3 is not after the previous index 3" in rules.check("s", 3)
    assert "index 1 is not after the previous index 3" in rules.check("s", 1)
    assert rules.check("s", 4) == ""


def test_a_stream_id_change_is_refused() -> None:
    rules = StreamRules()
    rules.check("scope-a", 0)
    assert rules.check("scope-b", 1) == "stream_id changed from 'scope-a' to 'scope-b' inside one stream"
    assert rules.check("scope-a", 1) == ""


def test_a_stream_id_of_the_longest_allowed_length_is_fine() -> None:
    assert StreamRules().check("a" * 256, 0) == ""
    assert StreamRules().check("a" * 257, 0) == "stream_id is 257 characters long; at most 256 are allowed"

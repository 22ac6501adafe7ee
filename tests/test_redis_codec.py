"""The Redis value and message codec, with bytes only (no Redis needed)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hornbeam_trio.backends.codec import (
    EncodedJSON,
    decode_message,
    decode_value,
    encode_message,
    encode_value,
)
from hornbeam_trio.pubsub import Delivery

scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | st.binary()
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=20,
)


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same type all the way down (True is not 1, 1.0 is not 1)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@given(values)
def test_every_json_like_value_with_bytes_round_trips_exactly(value: Any) -> None:
    assert same(decode_value(encode_value(value)), value)


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        (0, b"0"),
        (-42, b"-42"),
        (2**63 - 1, b"9223372036854775807"),
        (2**63, b"j9223372036854775808"),  # beyond INCRBY's range: tagged JSON
        (True, b"jtrue"),
        ("42", b"s42"),
        (b"42", b"b42"),
        (None, b"jnull"),
        ({"a": [1, 2.5]}, b'j{"a":[1,2.5]}'),
        ([b"\x00", {"k": b"\xff"}], b'x[[[0],[1,"k"]],["AA==",{"k":"/w=="}]]'),
    ],
)
def test_stored_forms(value: Any, stored: bytes) -> None:
    assert encode_value(value) == stored
    assert same(decode_value(stored), value)


def test_a_user_dict_that_looks_like_an_encoding_is_left_alone() -> None:
    value = {"$b": "AA==", "paths": [[0]]}
    assert same(decode_value(encode_value(value)), value)
    assert same(decode_value(encode_value([value, b"x"])), [value, b"x"])


def test_tuples_come_back_as_lists_and_bad_values_raise_type_error() -> None:
    assert decode_value(encode_value((1, (2, b"3")))) == [1, [2, b"3"]]
    with pytest.raises(TypeError, match="set is not a JSON-like value"):
        encode_value({1, 2})
    with pytest.raises(TypeError, match="keys of stored"):
        encode_value({1: "x"})


def test_missing_and_foreign_values() -> None:
    assert decode_value(None) is None
    assert decode_value(b"hello") == b"hello"  # not ours: the bytes as they are


@given(st.text() | st.binary() | values.filter(lambda v: not _has_bytes(v)))
def test_messages_frame_exactly_as_the_memory_backend_would(message: Any) -> None:
    received = decode_message(encode_message(message))
    local, remote = Delivery(message), Delivery(received)
    assert remote.frame == local.frame
    assert same(remote.value(), local.value())


def test_a_json_message_is_handed_on_without_decoding() -> None:
    received = decode_message(encode_message({"user": "ann", "n": [1, 2]}))
    assert isinstance(received, EncodedJSON)
    assert received.text == '{"user":"ann","n":[1,2]}'
    with pytest.raises(TypeError):
        encode_message({"nested": b"bytes"})  # as in memory: JSON or nothing
    with pytest.raises(ValueError, match="not a hornbeam_trio message"):
        decode_message(b"?")


def _has_bytes(value: Any) -> bool:
    if isinstance(value, bytes):
        return True
    if isinstance(value, dict):
        return any(_has_bytes(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_bytes(v) for v in value)
    return False


def test_json_separators_match_the_hub() -> None:
    assert (
        encode_message([1, {"a": 2}])[1:]
        == json.dumps([1, {"a": 2}], separators=(",", ":")).encode()
    )

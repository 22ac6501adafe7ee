"""The state façade's contracts (hornbeam-compat.md), on the embedded store."""

from __future__ import annotations

import pytest

import hornbeam_erlang as he
import hornbeam_trio

pytestmark = pytest.mark.usefixtures("hornbeam_state")


def test_get_missing_is_none_and_set_get_round_trips() -> None:
    assert he.state_get("nope") is None
    he.state_set("k", {"a": [1, 2, {"b": None}], "bytes": b"\x00"})
    assert he.state_get("k") == {"a": [1, 2, {"b": None}], "bytes": b"\x00"}


def test_values_are_copies_in_and_out() -> None:
    value = {"list": [1]}
    he.state_set("k", value)
    value["list"].append(2)
    assert he.state_get("k") == {"list": [1]}
    got = he.state_get("k")
    got["list"].append(3)
    assert he.state_get("k") == {"list": [1]}


def test_tuples_come_back_as_lists_as_over_redis() -> None:
    he.state_set("t", (1, 2))
    assert he.state_get("t") == [1, 2]


@pytest.mark.parametrize("bad", [{1: "int key"}, {"s": {1, 2}}, object()])
def test_non_json_like_values_are_refused_at_the_call(bad: object) -> None:
    with pytest.raises(TypeError):
        he.state_set("bad", bad)
    assert he.state_get("bad") is None


def test_delete_absent_is_not_an_error() -> None:
    he.state_delete("never")
    he.state_set("k", 1)
    he.state_delete("k")
    assert he.state_get("k") is None


def test_incr_decr_semantics() -> None:
    assert he.state_incr("n") == 1
    assert he.state_incr("n", 5) == 6
    assert he.state_incr("n", -2) == 4
    assert he.state_decr("n") == 3
    assert he.state_decr("n", 3) == 0
    assert he.state_decr("fresh") == -1
    he.state_set("text", "x")
    with pytest.raises(TypeError):
        he.state_incr("text")
    with pytest.raises(TypeError):
        he.state_incr("n", 1.5)  # type: ignore[arg-type]


def test_get_multi_and_keys_by_prefix() -> None:
    he.state_set("user:1", "a")
    he.state_set("user:2", "b")
    he.state_set("room:1", "c")
    assert he.state_get_multi(["user:1", "user:3"]) == {"user:1": "a", "user:3": None}
    assert sorted(he.state_keys("user:")) == ["user:1", "user:2"]
    assert sorted(he.state_keys()) == ["room:1", "user:1", "user:2"]


def test_short_aliases_are_the_same_functions() -> None:
    assert he.get is he.state_get and he.set is he.state_set and he.delete is he.state_delete
    assert he.incr is he.state_incr and he.decr is he.state_decr
    assert hornbeam_trio.state_incr is he.state_incr


def test_owned_outside_a_connection_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="owned=True"):
        he.state_set("k", 1, owned=True)  # type: ignore[call-arg]

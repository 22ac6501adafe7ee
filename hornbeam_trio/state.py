"""The awaitable state API: ``from hornbeam_trio import state``, then ``await state.get(k)``.

Same names and rules as the synchronous Hornbeam calls (``state_get``...), and it works
on every backend.  Over Redis (``--backend redis://``) a read has to wait for the
network, so the synchronous ``state_get``, ``state_get_multi``, ``state_keys`` and
``state_incr`` raise ``SyncUnavailable`` there and these are the calls to use::

    from hornbeam_trio import state

    visits = await state.incr("visits")
    await state.set("user:42", {"name": "Ada"}, owned=True)  # deleted when the connection ends
    profile = await state.get("user:42")
    names = await state.keys("user:")

``await state.history(topic, since=None, limit=None)`` is ``hornbeam_trio.history()``
on every backend (topic history is no state key, but over Redis it is read the same way).

Each call waits until the state writes and publishes this process made before it
(with the synchronous calls) have reached the store, so a process reads its own writes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .api import ahistory as history
from .runtime import ConnectionContext, current_connection, get_runtime

__all__ = ["decr", "delete", "get", "get_multi", "history", "incr", "keys", "presence", "set"]


def _owner(call: str) -> ConnectionContext:
    context = current_connection.get()
    if context is None:
        raise RuntimeError(
            f"state.{call}(..., owned=True) must be called while handling a connection"
        )
    context.check_open(f"state.{call}")
    return context


async def get(key: str) -> Any:
    """The value, or None when absent (a copy: mutating it never changes the store)."""
    return await get_runtime().backend.aget(key)


async def set(key: str, value: Any, *, owned: bool = False) -> None:
    context = _owner("set") if owned else None
    backend = get_runtime().backend
    await backend.aset(key, value)
    if context is not None:
        if context.ended:  # it ended while the write was on its way: take it back
            backend.delete(key)
        context.own_set(key)  # raises ConnectionEnded after the end


async def delete(key: str) -> None:
    await get_runtime().backend.adelete(key)
    context = current_connection.get()
    if context is not None:
        context.disown(key)


async def incr(key: str, delta: int = 1, *, owned: bool = False) -> int:
    """Atomic add; a missing key counts from 0; returns the new value."""
    context = _owner("incr") if owned else None
    backend = get_runtime().backend
    value = await backend.aincr(key, delta)
    if context is not None:
        if context.ended:  # it ended while the write was on its way: take it back
            backend.incr_nowait(key, -delta)
        context.own_incr(key, delta)  # raises ConnectionEnded after the end
    return value


async def decr(key: str, delta: int = 1, *, owned: bool = False) -> int:
    return await incr(key, -delta, owned=owned)


async def get_multi(keys: Iterable[str]) -> dict[str, Any]:
    return await get_runtime().backend.aget_multi(list(keys))


async def keys(prefix: str | None = None) -> list[str]:
    return await get_runtime().backend.akeys(prefix)


async def presence(topic: str) -> dict[str, Any]:
    """member id -> info of ``topic``'s members (``hornbeam_trio.presence``, awaitable).

    Over Redis, if this process has a subscriber of ``presence:<topic>`` whose Redis
    SUBSCRIBE is still in flight, it waits for it first (at most the subscribe
    timeout): "subscribe to the events, then read the members" misses no event."""
    return await get_runtime().backend.apresence(topic)

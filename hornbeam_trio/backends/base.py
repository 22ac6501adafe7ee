"""The backend interface: shared state and cross-process pub/sub transport.

Apps call the synchronous Hornbeam façade (``state_get``, ``publish``...).  A
backend that lives in this process (memory) answers those calls directly; a
networked one (Redis) cannot answer a read without waiting, so every state
operation also has an awaitable form, and the synchronous form of a read may
raise :class:`SyncUnavailable` naming the awaitable one.  Publishing is
fire-and-forget in both: the backend decides how the message reaches the
other processes; local fan-out is always the hub's job (encode once).

This module imports nothing of ours but the value codec and history types, so backends stay
swappable without touching app code.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, NamedTuple, Protocol

from .history import HistoryRule, Kept, Position

LocalDeliver = Callable[[str, Any], int]
"""hub.deliver_local(topic, message) -> subscribers reached in this process."""


class SyncUnavailable(RuntimeError):
    """A synchronous call that this backend can only answer by waiting on the network."""


class BackendUnavailable(RuntimeError):
    """The backend cannot be reached: at startup (one line, exit 3), or by an awaitable
    state call (``await hornbeam_trio.state.get(...)``) while Redis is away."""


class Backend(Protocol):
    name: str

    # -- lifecycle: run() is started in the server's nursery, task_status.started() once usable
    async def run(self, deliver_local: LocalDeliver, *, task_status: Any = ...) -> None: ...

    # -- pub/sub
    def publish(self, topic: str, message: Any) -> int: ...
    def topic_added(self, topic: str) -> None: ...
    def topic_removed(self, topic: str) -> None: ...

    # -- shared state, synchronous (may raise SyncUnavailable)
    def get(self, key: str) -> Any: ...
    def set(self, key: str, value: Any) -> None: ...
    def delete(self, key: str) -> None: ...
    def incr(self, key: str, delta: int = 1) -> int: ...
    def incr_nowait(self, key: str, delta: int) -> None:
        """Add without waiting for the result (releasing an owned increment); never raises
        SyncUnavailable."""
        ...

    def get_multi(self, keys: Iterable[str]) -> dict[str, Any]: ...
    def keys(self, prefix: str | None = None) -> list[str]: ...

    # -- connection-owned keys: what to undo if this process dies without releasing them
    def note_owned(self, connection: int, key: str, give_back: int | None) -> None:
        """``connection`` owns ``key``: on release delete it (None) or add ``-give_back``."""
        ...

    def note_released(self, connection: int, keys: Iterable[str]) -> None: ...

    # -- presence (the member model and events: backends/presence.py)
    def member_id(self, connection: int) -> str:
        """The presence member id of this process's connection ``connection``."""
        ...

    def presence_join(self, topic: str, member: str, info: Any, connection: int) -> None:
        """Add or update ``member`` (owned by ``connection``: released with it if this
        process dies), then publish the join event; TypeError for an info that is not
        JSON-like, before any change."""
        ...

    def presence_leave(self, topic: str, member: str, connection: int) -> None:
        """Remove ``member``, then publish the leave event (none if it was not in)."""
        ...

    def presence(self, topic: str) -> dict[str, Any]:
        """member -> info (copies); may raise SyncUnavailable."""
        ...

    def apresence(self, topic: str) -> Awaitable[dict[str, Any]]: ...

    # -- shared state, awaitable (always available)
    def aget(self, key: str) -> Awaitable[Any]: ...
    def aset(self, key: str, value: Any) -> Awaitable[None]: ...
    def adelete(self, key: str) -> Awaitable[None]: ...
    def aincr(self, key: str, delta: int = 1) -> Awaitable[int]: ...
    def aget_multi(self, keys: Iterable[str]) -> Awaitable[dict[str, Any]]: ...
    def akeys(self, prefix: str | None = None) -> Awaitable[list[str]]: ...


class HistoryRead(NamedTuple):
    """One read of a topic's history.

    ``messages``: the kept messages after the asked-for position, oldest first.
    ``position``: the topic's newest position (what a client holds once it has them all).
    ``recovered``: True exactly when no message after the asked-for position is missing
    from ``messages`` (same epoch, not trimmed by size or age, not cut by a limit).
    """

    messages: list[Kept]
    position: Position
    recovered: bool


class HistoryUnavailable(RuntimeError):
    """Topic history was asked of a backend that keeps none."""


class HistoryStore(Protocol):
    """What a backend with topic history (memory, Redis) adds to :class:`Backend`.

    Every message published to a topic that keeps history reaches the hub as a
    :class:`Kept` carrying its position, the same position its history entry has.
    Replay then live, with no gap and no duplicate, rests on one rule: a read made
    after a subscriber was registered holds every message that subscriber will not
    receive live.  The subscriber then drops the live ones at or below the read's
    position (``Subscription.replay``).  The memory backend reads synchronously, so
    nothing is published in between; Redis reads once its SUBSCRIBE is in place.
    """

    def configure_history(self, rules: Iterable[HistoryRule]) -> None: ...
    def keeps_history(self, topic: str) -> bool: ...
    def history_read(
        self, topic: str, since: Position | None, limit: int | None = None
    ) -> HistoryRead:
        """The read, synchronously (raises SyncUnavailable over Redis)."""
        ...

    async def ahistory_read(
        self, topic: str, since: Position | None, limit: int | None = None
    ) -> HistoryRead:
        """The read, on every backend.  The memory backend's makes no checkpoint."""
        ...

    def fetch_history(
        self,
        topic: str,
        since: Position | None,
        done: Callable[[HistoryRead | BaseException], None],
    ) -> None:
        """Start the read; ``done`` gets it (at once on the memory backend), or the
        exception that stopped it, for callers that cannot wait (push subscribers)."""
        ...

"""What a server shares with the apps it runs: backend, topic hub, live connections.

The Hornbeam façade is synchronous and takes no handle, so it finds two things
through context variables that Trio copies into every task an app spawns:

* the :class:`Runtime` (the backend and hub of the server running this code;
  outside any server, the process-wide default over the memory backend, which
  is what ETS is on one node), and
* the :class:`ConnectionContext` of the connection whose task is calling, which
  owns that connection's subscriptions, owned state keys and presence memberships
  and releases them all in :meth:`ConnectionContext.release` on every exit path.
"""

from __future__ import annotations

import itertools
import logging
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import trio

from .backends.memory import MemoryBackend
from .pubsub import Hub, Subscriber, Subscription
from .types import ConnectionEnded

if TYPE_CHECKING:
    from .backends.base import Backend
    from .config import Config

logger = logging.getLogger("hornbeam_trio")


class Runtime:
    def __init__(self, backend: Backend | None = None) -> None:
        self.backend: Backend = backend if backend is not None else MemoryBackend()
        self.hub = Hub()
        self.connections: dict[int, ConnectionContext] = {}
        self._ids = itertools.count(1)
        attach = getattr(self.backend, "attach", None)
        if attach is not None:
            attach(self.hub.deliver_local)

    def next_id(self) -> int:
        return next(self._ids)

    # -- topic registration goes through here so the backend hears of first/last subscribers
    def add_subscriber(self, topic: str, subscriber: Subscriber) -> None:
        if self.hub.add(topic, subscriber):
            self.backend.topic_added(topic)

    def remove_subscriber(self, topic: str, subscriber: Subscriber) -> None:
        if self.hub.remove(topic, subscriber):
            self.backend.topic_removed(topic)

    def stats(self) -> dict[str, Any]:
        connections = list(self.connections.values())
        per_connection = {ctx.id: ctx.task_count() for ctx in connections}
        owned = sorted({key for ctx in connections for key in ctx.owned})
        topics = self.hub.subscriber_counts()
        return {
            "connections": len(connections),
            "websocket_connections": sum(1 for c in connections if c.kind == "websocket"),
            "http_connections": sum(1 for c in connections if c.kind == "http"),
            "tasks": sum(per_connection.values()),
            "tasks_per_connection": per_connection,
            "topics": topics,
            "subscribers": sum(topics.values()),
            "owned_keys": owned,
        }


_default_runtime: Runtime | None = None


def default_runtime() -> Runtime:
    global _default_runtime
    if _default_runtime is None:
        _default_runtime = Runtime()
    return _default_runtime


current_runtime: ContextVar[Runtime | None] = ContextVar("hornbeam_trio.runtime", default=None)
current_connection: ContextVar[ConnectionContext | None] = ContextVar(
    "hornbeam_trio.connection", default=None
)


def get_runtime() -> Runtime:
    runtime = current_runtime.get()
    return runtime if runtime is not None else default_runtime()


class ConnectionContext:
    """Everything one connection owns beyond its tasks, given back in one step.

    :meth:`end` is the connection's release point: from then on the connection
    is no subscriber of anything, its ``subscription()`` iterators have ended, its
    owned keys are undone, it is no presence member of any topic, and an owned
    write or a join made for it (from a task that outlived it, say) raises
    :class:`ConnectionEnded` instead of creating what nothing would ever remove.
    :meth:`release` also takes the connection out of :meth:`Runtime.stats`, once
    nothing of it runs any more.
    """

    __slots__ = (
        "_unregistered",
        "config",
        "ended",
        "id",
        "iterators",
        "kind",
        "owned",
        "presence",
        "pusher",
        "runtime",
        "subscriptions",
        "task",
    )

    def __init__(self, runtime: Runtime, kind: str, config: Config) -> None:
        self.runtime = runtime
        self.kind = kind
        self.config = config
        self.id = runtime.next_id()
        self.task: trio.lowlevel.Task | None = trio.lowlevel.current_task()
        """The connection's own task: an HTTP app runs in it, a WebSocket app too."""
        self.pusher: Subscriber | None = None
        """Server-side push target for ``subscribe(topic)`` (the WebSocket connection)."""
        self.subscriptions: dict[tuple[str, Subscriber], None] = {}
        self.iterators: dict[Subscription, None] = {}
        """The ``subscription()`` iterators opened for this connection and not yet left."""
        self.owned: dict[str, int | None] = {}
        """key -> accumulated owned increment, or None for an owned set (deleted on exit)."""
        self.presence: dict[str, None] = {}
        """The topics this connection is a presence member of (left on exit)."""
        self.ended = False
        self._unregistered = False
        runtime.connections[self.id] = self

    def subscribe(self, topic: str, subscriber: Subscriber) -> None:
        """Register; after the end a no-op (the connection can receive nothing more)."""
        key = (topic, subscriber)
        if key in self.subscriptions or self.ended:
            return
        self.subscriptions[key] = None
        self.runtime.add_subscriber(topic, subscriber)

    def unsubscribe(self, topic: str, subscriber: Subscriber) -> None:
        key = (topic, subscriber)
        if key in self.subscriptions:
            del self.subscriptions[key]
            self.runtime.remove_subscriber(topic, subscriber)

    def open_iterator(self, subscription: Subscription) -> None:
        """A ``subscription()`` block opened for this connection: it ends with it."""
        if self.ended:
            subscription.end()
            return
        self.iterators[subscription] = None
        self.subscribe(subscription.topic, subscription)

    def close_iterator(self, subscription: Subscription) -> None:
        self.iterators.pop(subscription, None)
        self.unsubscribe(subscription.topic, subscription)

    def check_open(self, call: str) -> None:
        if self.ended:
            raise ConnectionEnded(
                f"{call}(..., owned=True): the connection this code ran for has ended, "
                "so nothing would release the key; the write was not made"
            )

    def own_set(self, key: str) -> None:
        self.check_open("state_set")
        self.owned[key] = None
        self.runtime.backend.note_owned(self.id, key, None)

    def own_incr(self, key: str, delta: int) -> None:
        self.check_open("state_incr")
        previous = self.owned.get(key, 0)
        self.owned[key] = owned = None if previous is None else previous + delta
        self.runtime.backend.note_owned(self.id, key, owned)

    def disown(self, key: str) -> None:
        if key in self.owned:
            del self.owned[key]
            self.runtime.backend.note_released(self.id, [key])

    @property
    def member_id(self) -> str:
        """This connection's presence member id (unique among the processes of a backend)."""
        return self.runtime.backend.member_id(self.id)

    def join_presence(self, topic: str, info: Any) -> str:
        """Join (or update the info in) ``topic``'s presence until :meth:`end` or a leave."""
        if self.ended:
            raise ConnectionEnded(
                "presence_join(): the connection this code ran for has ended, so nothing "
                "would make it leave; it did not join"
            )
        member = self.member_id
        # Recorded first: the join event may reach a subscriber whose overflow ends this
        # very connection, and that end must find the topic to leave.
        joined = topic in self.presence
        self.presence[topic] = None
        try:
            self.runtime.backend.presence_join(topic, member, info, self.id)
        except BaseException:
            if not joined:  # a bad info: nothing was joined
                self.presence.pop(topic, None)
            raise
        return member

    def leave_presence(self, topic: str) -> None:
        if topic in self.presence:
            del self.presence[topic]
            self.runtime.backend.presence_leave(topic, self.member_id, self.id)

    def task_count(self) -> int:
        """The connection's own task and every task below it (what its app started)."""
        task = self.task
        if task is None:
            return 0
        count = 1
        stack = list(task.child_nurseries)
        while stack:
            current = stack.pop()
            for task in current.child_tasks:
                count += 1
                stack.extend(task.child_nurseries)
        return count

    def end(self) -> None:
        """The connection is over: give back everything but its tasks, at once.

        Synchronous, idempotent, never raises: it runs on every exit path, from
        whichever task or service noticed the end first.
        """
        if self.ended:
            return
        self.ended = True
        runtime = self.runtime
        for topic, subscriber in self.subscriptions:
            try:
                runtime.remove_subscriber(topic, subscriber)
            except Exception:  # the release must go on for every other topic
                logger.exception("unsubscribing from %r failed", topic)
        self.subscriptions.clear()
        for subscription in self.iterators:
            subscription.end()
        self.iterators.clear()
        backend = runtime.backend
        for key, delta in self.owned.items():
            try:
                if delta is None:
                    backend.delete(key)
                elif delta:
                    backend.incr_nowait(key, -delta)
            except Exception:  # the release must go on for every other key
                logger.exception("releasing owned state key %r failed", key)
        if self.owned:
            try:
                backend.note_released(self.id, list(self.owned))
            except Exception:
                logger.exception("releasing the lease of owned state keys failed")
        self.owned.clear()
        for topic in self.presence:
            try:
                backend.presence_leave(topic, self.member_id, self.id)
            except Exception:  # the release must go on for every other topic
                logger.exception("leaving the presence of %r failed", topic)
        self.presence.clear()

    def release(self) -> None:
        """:meth:`end`, and out of :meth:`Runtime.stats`: nothing of it runs any more."""
        self.end()
        if not self._unregistered:
            self._unregistered = True
            self.runtime.connections.pop(self.id, None)

"""The leak check of one test server, told apart from every other server in the process.

With the memory backend every server in a process shares one :class:`Runtime` (as ETS
is shared by a node): that is what lets a test body's ``publish()``, ``state_get()``,
``stats()`` and ``subscription()`` reach the server under test, and two servers in one
test reach each other's subscribers.  So a server's leak check cannot judge the whole
runtime; it judges what belongs to its own server:

* connection contexts made with its ``Config`` object -- every ``ConnectionContext`` is
  made with its server's config, and ``run_server`` gives each server a Config object of
  its own -- with their tasks and owned state keys;
* subscriptions that appeared since the server was made and that no other server's
  connection owns: its own connections' (``subscribe()``, ``subscription()``), and
  those no connection owns (a lifespan task's, a test body's left open).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from ..pubsub import Subscriber
    from ..runtime import ConnectionContext
    from ..server import Server


class LeakError(AssertionError):
    """Something the server owned outlived the test."""


class Footprint:
    """What one server holds in its runtime, measured against the moment it was made."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._before = self._subscriptions()

    def contexts(self) -> list[ConnectionContext]:
        config = self.server.config
        return [c for c in self.server.runtime.connections.values() if c.config is config]

    def subscriptions(self) -> dict[str, int]:
        """Subscribers per topic that this server is answerable for (see the module doc)."""
        config = self.server.config
        others = {
            key
            for context in self.server.runtime.connections.values()
            if context.config is not config
            for key in context.subscriptions
        }
        counts: dict[str, int] = {}
        for topic, _ in self._subscriptions() - self._before - others:
            counts[topic] = counts.get(topic, 0) + 1
        return dict(sorted(counts.items()))

    def _subscriptions(self) -> set[tuple[str, Subscriber]]:
        topics = self.server.runtime.hub.topics
        return {(topic, sub) for topic, subscribers in topics.items() for sub in subscribers}

    async def wait_idle(self, timeout: float) -> str | None:
        """Give connections whose clients just left ``timeout`` to end; what is still open."""
        with trio.move_on_after(timeout):
            while self.server.connections or self.contexts():
                await trio.sleep(0.005)
        if self.server.connections:
            return (
                f"{len(self.server.connections)} server connection(s) still open "
                f"{timeout:g}s after every client closed"
            )
        return None

    def leftovers(self) -> list[str]:
        """What is left once the server has stopped: one phrase per kind, empty if nothing."""
        problems = []
        if self.server.connections:
            problems.append(f"{len(self.server.connections)} connection(s)")
        contexts = self.contexts()
        if contexts:
            tasks = sum(context.task_count() for context in contexts)
            problems.append(f"{len(contexts)} connection context(s) with {tasks} task(s)")
        topics = self.subscriptions()
        if topics:
            problems.append(f"subscriptions {topics}")
        owned = sorted({key for context in contexts for key in context.owned})
        if owned:
            problems.append(f"owned state keys {owned}")
        return problems

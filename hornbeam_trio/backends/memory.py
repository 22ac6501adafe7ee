"""The embedded default: state and pub/sub inside this process, nothing to start.

Like ETS on one node, the store is shared by every server in the process.
Trio runs app code on one thread, but the façade may also be called from
``trio.to_thread`` workers, so the read-modify-write of ``incr`` takes a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import trio

from .base import LocalDeliver
from .values import checked_copy


class MemoryBackend:
    name = "memory"

    def __init__(self) -> None:
        self._data: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._deliver_local: LocalDeliver | None = None

    async def run(
        self, deliver_local: LocalDeliver, *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        self._deliver_local = deliver_local
        task_status.started()

    def attach(self, deliver_local: LocalDeliver) -> None:
        self._deliver_local = deliver_local

    # -- pub/sub: in one process, publishing is local delivery
    def publish(self, topic: str, message: Any) -> int:
        if self._deliver_local is None:
            return 0
        return self._deliver_local(topic, message)

    def topic_added(self, topic: str) -> None:
        pass

    def topic_removed(self, topic: str) -> None:
        pass

    # -- state
    def get(self, key: str) -> Any:
        return checked_copy(self._data.get(key))

    def set(self, key: str, value: Any) -> None:
        self._data[key] = checked_copy(value)

    def delete(self, key: str) -> None:
        self._data.pop(key, None)

    def incr(self, key: str, delta: int = 1) -> int:
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise TypeError(f"delta must be an int, got {type(delta).__name__}")
        with self._lock:
            current = self._data.get(key, 0)
            if isinstance(current, bool) or not isinstance(current, int):
                raise TypeError(f"state key {key!r} holds a {type(current).__name__}, not an int")
            value = current + delta
            self._data[key] = value
            return value

    def incr_nowait(self, key: str, delta: int) -> None:
        self.incr(key, delta)

    # A process that dies takes its memory store along: nothing to record.
    def note_owned(self, connection: int, key: str, give_back: int | None) -> None:
        pass

    def note_released(self, connection: int, keys: Iterable[str]) -> None:
        pass

    def get_multi(self, keys: Iterable[str]) -> dict[str, Any]:
        data = self._data
        return {key: checked_copy(data.get(key)) for key in keys}

    def keys(self, prefix: str | None = None) -> list[str]:
        if prefix is None:
            return list(self._data)
        return [key for key in self._data if key.startswith(prefix)]

    async def aget(self, key: str) -> Any:
        return self.get(key)

    async def aset(self, key: str, value: Any) -> None:
        self.set(key, value)

    async def adelete(self, key: str) -> None:
        self.delete(key)

    async def aincr(self, key: str, delta: int = 1) -> int:
        return self.incr(key, delta)

    async def aget_multi(self, keys: Iterable[str]) -> dict[str, Any]:
        return self.get_multi(keys)

    async def akeys(self, prefix: str | None = None) -> list[str]:
        return self.keys(prefix)

    def clear(self) -> None:
        """Forget everything (the testing toolkit's fresh start)."""
        self._data.clear()

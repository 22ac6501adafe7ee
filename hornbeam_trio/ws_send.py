"""The send path: one non-blocking write first, queue only the rest; the delivery batcher.

A WebSocket's app, the protocol's control replies (pong, close) and pub/sub
deliveries all write through one :class:`Writer`.  Invariants:

- Bytes leave in the order they were written: a write goes straight to the
  kernel only while nothing is queued; otherwise it joins the queue's tail.
- The queue holds only what the kernel did not take.  One flusher task (started
  on the first queued item, in the connection's nursery) drains it; there is
  never more than one, so the head item is the only one ever partly sent.
- Bytes the kernel took are never sent again: the flusher cuts the head item to
  what is left before each wait, so a flush cancelled halfway (the connection
  ending) leaves ``final_flush`` exactly the rest.
- Queued deliveries may be dropped (slow-consumer policy, close), never the head.
- The app's ``send()`` waits only when more than ``SEND_HIGH_WATER`` bytes are
  queued (backpressure), and otherwise checkpoints every ``CHECKPOINT_EVERY`` sends.

:class:`DeliveryBatcher` gathers each connection's deliveries of one scheduler
pass into one write, so a broadcast costs one ``send()`` per subscriber.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import trio
from trio.lowlevel import checkpoint

from .transport import CHECKPOINT_EVERY, StreamTransport, Transport, TransportClosed

logger = logging.getLogger("hornbeam_trio")

SEND_HIGH_WATER = 256 * 1024
"""Queued bytes above which the app's send() waits for the socket to drain."""


class BatchTarget(Protocol):
    """A connection with deliveries to flush (``WebSocketConnection``)."""

    def flush_batch(self) -> None: ...


class Writer:
    """The connection's single send path: non-blocking first, queue only the rest."""

    __slots__ = (
        "_drained",
        "_flushing",
        "_nursery",
        "_unyielded",
        "pending",
        "pending_bytes",
        "pending_deliveries",
        "pong",
        "streamed",
        "transport",
    )

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.pending: list[tuple[bytes | memoryview, bool]] = []
        """A list, not a deque: an idle connection holds an empty one (a deque costs 600 B)."""
        self.pending_bytes = 0
        self.pending_deliveries = 0
        self.pong: bytes | None = None
        """The latest pong owed while earlier bytes wait: at most one is ever held."""
        self._nursery: trio.Nursery | None = None
        self._flushing = False
        self._drained: trio.lowlevel.ParkingLot | None = None  # made when first needed
        self._unyielded = 0
        self.streamed = isinstance(transport, StreamTransport)

    def attach(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def write_nowait(self, data: bytes, *, delivery: bool = False) -> None:
        """Send now what the kernel takes; queue the rest.  Raises TransportClosed."""
        if not self.pending:
            sent = self.transport.try_send(data)
            if sent == len(data):
                return
            self._enqueue(memoryview(data)[sent:] if sent else data, delivery)
        else:
            self._enqueue(data, delivery)

    def owe_pong(self, frame: bytes) -> None:
        """A pong while earlier bytes wait: hold only the latest (RFC 6455 5.5.3 lets a
        pong answer just the most recent ping), sent right after the item now going out."""
        if self.pending:
            self.pong = frame
        else:
            self.write_nowait(frame)

    def _enqueue(self, data: bytes | memoryview, delivery: bool) -> None:
        self.pending.append((data, delivery))
        self.pending_bytes += len(data)
        if delivery:
            self.pending_deliveries += 1
        if not self._flushing and self._nursery is not None:
            self._flushing = True
            self._nursery.start_soon(self._flush)

    def drop_queued_deliveries(self, *, keep_newest: int = 0) -> int:
        """Forget queued deliveries not yet started (never the head, which may be half sent)."""
        if self.pending_deliveries <= keep_newest:
            return 0
        head = self.pending.pop(0) if self.pending else None
        to_drop = self.pending_deliveries - keep_newest
        if head is not None and head[1]:
            to_drop -= 1  # the head stays even though it is a delivery
        kept: list[tuple[bytes | memoryview, bool]] = []
        dropped = 0
        for item in self.pending:
            if item[1] and dropped < to_drop:
                dropped += 1
                self.pending_bytes -= len(item[0])
                self.pending_deliveries -= 1
            else:
                kept.append(item)
        if head is not None:
            kept.insert(0, head)
        self.pending = kept
        return dropped

    async def _flush(self) -> None:
        transport = self.transport
        unyielded = 0
        try:
            while self.pending:
                data, delivery = self.pending[0]
                sent = await transport.send_some(data)
                if sent < len(data):
                    # Recorded before the next await: a cancel there resends nothing.
                    self.pending[0] = (memoryview(data)[sent:], delivery)
                    self.pending_bytes -= sent
                    continue
                del self.pending[0]
                self.pending_bytes -= len(data)
                if delivery:
                    self.pending_deliveries -= 1
                pong = self.pong
                if pong is not None:  # never behind our Close: pings are not answered after it
                    self.pong = None
                    self.pending.insert(0, (pong, False))
                    self.pending_bytes += len(pong)
                if self.pending_bytes <= SEND_HIGH_WATER // 2 and self._drained:
                    self._drained.unpark_all()
                unyielded += 1
                if unyielded >= CHECKPOINT_EVERY:  # a long queue the kernel takes at once
                    unyielded = 0
                    await checkpoint()
        except TransportClosed:
            self.pending.clear()
            self.pong = None
            self.pending_bytes = 0
            self.pending_deliveries = 0
        finally:
            self._flushing = False
            if self._drained:
                self._drained.unpark_all()

    async def write(self, data: bytes) -> None:
        """The app's send(): waits only when too much is queued (backpressure)."""
        if not self.pending and self.streamed:
            # TLS / in-memory: no non-blocking send, so write from the app's own task
            # rather than spawn a flusher per message (the stream's lock keeps order
            # with deliveries queued meanwhile).
            await self.transport.send_all(data)
            return
        if self.write_counted(data):
            await self.settle()

    def write_counted(self, data: bytes) -> bool:
        """write() without the await: True when the caller must ``await settle()``.

        The app's send() calls this directly: no coroutine per message.
        """
        self.write_nowait(data)
        if self.pending_bytes > SEND_HIGH_WATER:
            return True
        self._unyielded += 1
        return self._unyielded >= CHECKPOINT_EVERY

    async def settle(self) -> None:
        """Wait for the queue to drain below the high-water mark, or just checkpoint."""
        if self.pending_bytes > SEND_HIGH_WATER:
            while self.pending_bytes > SEND_HIGH_WATER // 2 and self._flushing:
                if self._drained is None:
                    self._drained = trio.lowlevel.ParkingLot()
                await self._drained.park()
            if self.pending and not self._flushing:
                raise TransportClosed("connection closed while sending")
            return
        self._unyielded = 0
        await checkpoint()

    async def final_flush(self, timeout: float) -> None:
        """Last bounded attempt to get queued bytes (the close frame) out.

        A peer gone meanwhile (reset) is how many connections end: nothing more can
        reach it, so that ends the flush quietly.
        """
        with trio.move_on_after(timeout):
            try:
                while self.pending:
                    data, _ = self.pending.pop(0)
                    await self.transport.send_all(data)
            except TransportClosed as exc:
                logger.debug("last flush to %s cut short: %s", self.transport.client, exc)
        self.pending.clear()
        self.pending_bytes = 0
        self.pending_deliveries = 0


class DeliveryBatcher:
    """Coalesces pub/sub deliveries: one send() per connection per scheduler pass.

    A publisher that publishes several messages before yielding (a burst read in
    one recv) would otherwise cost one syscall per message per subscriber; the
    syscall, not Python, is the price of a delivery.  Deliveries wait at most until
    the batcher's next turn, which comes right after the publishing task yields.
    One per server: serve() runs it in its own nursery, so it ends with the server.
    """

    def __init__(self) -> None:
        self.dirty: list[BatchTarget] = []
        self.task: trio.lowlevel.Task | None = None
        self.parked = False

    def mark(self, conn: BatchTarget) -> None:
        self.dirty.append(conn)
        if self.parked:
            self.parked = False
            assert self.task is not None
            trio.lowlevel.reschedule(self.task)

    def _abort(self, _: Any) -> trio.lowlevel.Abort:
        self.parked = False
        return trio.lowlevel.Abort.SUCCEEDED

    async def run(self) -> None:
        """Flush every marked connection; checkpoint every ``CHECKPOINT_EVERY`` of them.

        A publish to 1,000 subscribers is a pass of 1,000 sends: other tasks run
        between its slices.  A connection marked meanwhile joins ``self.dirty`` for
        the next round; one still waiting in this round's list just has a longer
        batch.  Either way its deliveries go out once, in order (a batch is written
        whole, and whoever writes first, the batcher or the app's send(), takes it).
        """
        self.task = trio.lowlevel.current_task()
        flushed = 0
        while True:
            while self.dirty:
                dirty, self.dirty = self.dirty, []
                for conn in dirty:
                    try:
                        conn.flush_batch()
                    except Exception:  # a system task must not die: log, go on
                        logger.exception("flushing pub/sub deliveries failed")
                    flushed += 1
                    if flushed >= CHECKPOINT_EVERY:
                        flushed = 0
                        await checkpoint()  # not parked: mark() just appends meanwhile
            flushed = 0
            self.parked = True
            await trio.lowlevel.wait_task_rescheduled(self._abort)

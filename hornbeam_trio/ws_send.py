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
- Queued deliveries may be dropped (slow-consumer policy, close), whole and only
  before they start: a list of frames is never in flight (``_start_head`` turns
  it into bytes before the flusher's await).
- The app's ``send()`` waits only when more than ``SEND_HIGH_WATER`` bytes are
  queued (backpressure), and otherwise checkpoints every ``CHECKPOINT_EVERY`` sends.

:class:`DeliveryBatcher` gathers each connection's deliveries of one scheduler
pass into one write, so a broadcast costs one ``send()`` per subscriber.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import trio
from trio.lowlevel import checkpoint

from .transport import CHECKPOINT_EVERY, SocketTransport, Transport, TransportClosed

logger = logging.getLogger("hornbeam_trio")

SEND_HIGH_WATER = 256 * 1024
"""Queued bytes above which the app's send() waits for the socket to drain."""

JOIN_LIMIT = 64 * 1024
"""Queued delivery frames the flusher joins into one send: beyond, they stay droppable."""

Chunk = bytes | memoryview

FULL, JOINED, FIRST = -1, 0, 1
"""What ``Writer.offer`` did with a delivery."""


class BatchTarget(Protocol):
    """A connection with deliveries to flush (``WebSocketConnection``)."""

    def flush_batch(self) -> None: ...


class Writer:
    """The connection's single send path: non-blocking first, queue only the rest.

    Pub/sub deliveries are accounted here, in messages and bytes, from the moment a
    publish hands one over until its last byte reaches the kernel: ``delivery_count``
    and ``delivery_bytes`` cover the batch of this scheduler pass and every queued
    delivery, however the batches were joined for the wire.  Queued deliveries not yet
    started stay separate frames (the very bytes objects every subscriber shares), so
    the slow-consumer policy can drop whole oldest messages and never half of one.
    """

    __slots__ = (
        "_drained",
        "_flushing",
        "_nursery",
        "_spare",
        "batch",
        "delivery_bytes",
        "delivery_count",
        "pending",
        "pending_bytes",
        "pong",
        "sent",
        "streamed",
        "transport",
        "yield_at",
    )

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.pending: list[tuple[Chunk | list[bytes], int]] = []
        """Items in wire order: ``(bytes or memoryview, messages)`` for bytes to send as they
        are (started, or the app's and the protocol's own: 0 messages), or ``(frames,
        len(frames))`` for deliveries not started yet.  Only the head is ever partly sent.
        A list, not a deque: an idle connection holds an empty one (a deque costs 600 B)."""
        self.pending_bytes = 0
        self.pong: bytes | None = None
        """The latest pong owed while earlier bytes wait: at most one is ever held."""
        self.batch: bytes | list[bytes] | None = None
        """This pass's deliveries: one frame as itself, several in ``_spare``."""
        self._spare: list[bytes] | None = None
        """The list several frames of one pass share, kept for the next pass (see offer)."""
        self.delivery_count = 0
        self.delivery_bytes = 0
        self._nursery: trio.Nursery | None = None
        self._flushing = False
        self._drained: trio.lowlevel.ParkingLot | None = None  # made when first needed
        self.sent = 0
        """The app's messages written (``write``, ``write_counted``): the WebSocket's
        messages out, and the app's checkpoint cadence (``yield_at``) in one count."""
        self.yield_at = CHECKPOINT_EVERY
        """The count of ``sent`` at which the app's send() checkpoints; moved on by every
        checkpoint of the app's task, forced or not (a wait in receive() is one)."""
        self.streamed = not isinstance(transport, SocketTransport)
        """Only a socket takes bytes without waiting (``try_send``); every other transport
        (TLS, memory streams, an HTTP/2 stream) sends in ``send_all``."""

    def attach(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def write_nowait(self, data: bytes) -> None:
        """Send now what the kernel takes; queue the rest.  Raises TransportClosed."""
        if not self.pending:
            sent = self.transport.try_send(data)
            if sent == len(data):
                return
            self._enqueue(memoryview(data)[sent:] if sent else data, 0, len(data) - sent)
        else:
            self._enqueue(data, 0, len(data))

    def owe_pong(self, frame: bytes) -> None:
        """A pong while earlier bytes wait: hold only the latest (RFC 6455 5.5.3 lets a
        pong answer just the most recent ping), sent right after the item now going out."""
        if self.pending:
            self.pong = frame
        else:
            self.write_nowait(frame)

    def _enqueue(self, data: Chunk | list[bytes], messages: int, size: int) -> None:
        self.pending.append((data, messages))
        self.pending_bytes += size
        if not self._flushing and self._nursery is not None:
            self._flushing = True
            self._nursery.start_soon(self._flush)

    # ------------------------------------------------------------ deliveries
    def offer(self, frame: bytes, max_messages: int, max_bytes: int) -> int:
        """Join this pass's batch if the bounds allow: ``FIRST`` (the batch was empty: the
        batcher must be told), ``JOINED``, or ``FULL`` (nothing done; the policy decides).

        A message larger than the byte bound alone still goes to an empty queue.  One
        call per delivery, allocating nothing the garbage collector tracks: one frame is
        kept as itself, several in the connection's reused list.  A broadcast that made a
        container per subscriber would push them into the old generation whenever a
        collection ran mid-pass, and bring on a full collection inside publish().
        """
        count = self.delivery_count
        size = len(frame)
        if count >= max_messages or (count and self.delivery_bytes + size > max_bytes):
            return FULL
        self.delivery_count = count + 1
        self.delivery_bytes += size
        if self.batch is None:
            self.batch = frame
            return FIRST
        self.join_batch(frame)
        return JOINED

    def join_batch(self, frame: bytes) -> None:
        """Add a second or later frame to this pass's batch (counted by the caller)."""
        batch = self.batch
        if isinstance(batch, bytes):
            spare = self._spare
            if spare is None:
                spare = self._spare = []
            spare.append(batch)
            spare.append(frame)
            self.batch = spare
        elif batch is not None:
            batch.append(frame)

    def flush_deliveries(self) -> None:
        """Write this pass's batch: one send() for all of it.  Raises TransportClosed."""
        batch = self.batch
        if batch is None:
            return
        self.batch = None
        data = batch if isinstance(batch, bytes) else b"".join(batch)
        if not self.pending:
            sent = self.transport.try_send(data)
            self.delivery_bytes -= sent
            if sent == len(data):
                if isinstance(batch, bytes):
                    self.delivery_count -= 1
                else:
                    self.delivery_count -= len(batch)
                    batch.clear()  # the spare, for the next pass
                return
        else:
            sent = 0
        # The slow path: the kernel did not take it all.  The queue keeps the frames.
        if isinstance(batch, bytes):
            frames = [batch]
        else:
            frames = batch
            self._spare = None  # handed over to the queue
        if sent:
            # Messages the kernel took whole are gone; the one it took part of is the
            # started head; the rest stay droppable frames.
            whole = 0
            offset = 0
            while offset + len(frames[whole]) <= sent:
                offset += len(frames[whole])
                whole += 1
            self.delivery_count -= whole
            if sent > offset:
                head = memoryview(frames[whole])[sent - offset :]
                self._enqueue(head, 1, len(head))
                whole += 1
            frames = frames[whole:]
        if frames:
            self._queue_frames(frames)

    def _queue_frames(self, frames: list[bytes]) -> None:
        size = sum(map(len, frames))
        pending = self.pending
        tail = pending[-1][0] if pending else None
        if isinstance(tail, list):  # never in flight: see _start_head
            # Joins the queued deliveries before it: one item, whatever the number of passes.
            tail.extend(frames)
            pending[-1] = (tail, len(tail))
            self.pending_bytes += size
        else:
            self._enqueue(frames, len(frames), size)

    def drop_oldest_delivery(self) -> bool:
        """Forget the oldest delivery not yet started on the wire; False if there is none."""
        pending = self.pending
        for index, (data, _) in enumerate(pending):
            if isinstance(data, list):
                frame = data.pop(0)
                if data:
                    pending[index] = (data, len(data))
                else:
                    del pending[index]
                self.pending_bytes -= len(frame)
                self._forget(frame)
                return True
        batch = self.batch
        if batch is None:
            return False
        if isinstance(batch, bytes):
            self.batch = None
            self._forget(batch)
        else:
            self._forget(batch.pop(0))
            if not batch:
                self.batch = None  # the list stays the spare
        return True

    def _forget(self, frame: bytes) -> None:
        self.delivery_count -= 1
        self.delivery_bytes -= len(frame)

    def drop_batch(self) -> None:
        """Forget this pass's deliveries, not yet written (what went before them still goes)."""
        batch = self.batch
        if batch is not None:
            self.batch = None
            if isinstance(batch, bytes):
                self._forget(batch)
            else:
                for frame in batch:
                    self._forget(frame)
                batch.clear()  # the spare

    def drop_queued_deliveries(self) -> int:
        """Forget every delivery not yet started (the batch too); the started head stays."""
        dropped = 0
        kept: list[tuple[Chunk | list[bytes], int]] = []
        for item in self.pending:
            data = item[0]
            if type(data) is list:
                dropped += len(data)
                size = sum(map(len, data))
                self.pending_bytes -= size
                self.delivery_count -= len(data)
                self.delivery_bytes -= size
            else:
                kept.append(item)
        self.pending = kept
        batch = self.batch
        if batch is not None:
            dropped += 1 if isinstance(batch, bytes) else len(batch)
            self.drop_batch()
        return dropped

    def _start_head(self) -> Chunk:
        """Turn queued frames at the head into bytes to send: at most ``JOIN_LIMIT`` of
        them (at least one), so most of a long queue stays droppable."""
        frames: list[bytes] = self.pending[0][0]  # type: ignore[assignment]
        size = 0
        taken = 0
        for frame in frames:
            size += len(frame)
            taken += 1
            if size >= JOIN_LIMIT:
                break
        if taken == len(frames):
            data = frames[0] if taken == 1 else b"".join(frames)
            self.pending[0] = (data, taken)
        else:
            data = b"".join(frames[:taken])
            rest = frames[taken:]
            self.pending[0] = (data, taken)
            self.pending.insert(1, (rest, len(rest)))
        return data

    async def _flush(self) -> None:
        transport = self.transport
        unyielded = 0
        try:
            while self.pending:
                pending = self.pending
                data, messages = pending[0]
                if type(data) is list:
                    data = self._start_head()
                sent = await transport.send_some(data)  # type: ignore[arg-type]
                pending = self.pending  # drop_queued_deliveries may have replaced the list
                if messages:
                    self.delivery_bytes -= sent
                if sent < len(data):
                    # Recorded before the next await: a cancel there resends nothing.
                    pending[0] = (memoryview(data)[sent:], messages)  # type: ignore[arg-type]
                    self.pending_bytes -= sent
                    continue
                del pending[0]
                self.pending_bytes -= sent
                self.delivery_count -= messages
                pong = self.pong
                if pong is not None:  # never behind our Close: pings are not answered after it
                    self.pong = None
                    pending.insert(0, (pong, 0))
                    self.pending_bytes += len(pong)
                if self.pending_bytes <= SEND_HIGH_WATER // 2 and self._drained:
                    self._drained.unpark_all()
                unyielded += 1
                if unyielded >= CHECKPOINT_EVERY:  # a long queue the kernel takes at once
                    unyielded = 0
                    await checkpoint()
        except TransportClosed:
            self._forget_all()
        finally:
            self._flushing = False
            if self._drained:
                self._drained.unpark_all()

    def _forget_all(self) -> None:
        self.pending.clear()
        self.pong = None
        self.pending_bytes = 0
        self.batch = None
        self._spare = None
        self.delivery_count = 0
        self.delivery_bytes = 0

    async def write(self, data: bytes) -> None:
        """The app's send(): waits only when too much is queued (backpressure)."""
        if not self.pending and self.streamed:
            # TLS / in-memory: no non-blocking send, so write from the app's own task
            # rather than spawn a flusher per message (the stream's lock keeps order
            # with deliveries queued meanwhile).
            await self.transport.send_all(data)
            self.sent += 1
            return
        if self.write_counted(data):
            await self.settle()

    def write_counted(self, data: bytes) -> bool:
        """write() without the await: True when the caller must ``await settle()``.

        The app's send() calls this directly: no coroutine per message.
        """
        self.write_nowait(data)
        self.sent += 1
        if self.pending_bytes > SEND_HIGH_WATER:
            return True
        return self.sent >= self.yield_at

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
        self.yield_at = self.sent + CHECKPOINT_EVERY
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
                    await self.transport.send_all(
                        b"".join(data) if type(data) is list else data  # type: ignore[arg-type]
                    )
            except TransportClosed as exc:
                logger.debug("last flush to %s cut short: %s", self.transport.client, exc)
        self._forget_all()


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
        self.observe_latency: Callable[[float], None] | None = None
        """Metrics on: told, once per round of passes, the seconds from the first delivery
        that woke the batcher to the moment every marked connection was flushed."""
        self._woken_at: float | None = None

    def mark(self, conn: BatchTarget) -> None:
        self.dirty.append(conn)
        if self.parked:
            self.parked = False
            if self.observe_latency is not None:  # once per round, not per delivery
                self._woken_at = trio.current_time()
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
        conn: BatchTarget | None = None
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
                # Parked, the batcher holds no connection: one released meanwhile (a
                # mass disconnect after a broadcast) is garbage now, not at the next publish.
                dirty.clear()
                conn = None
            if self._woken_at is not None and self.observe_latency is not None:
                self.observe_latency(trio.current_time() - self._woken_at)
                self._woken_at = None
            flushed = 0
            self.parked = True
            await trio.lowlevel.wait_task_rescheduled(self._abort)

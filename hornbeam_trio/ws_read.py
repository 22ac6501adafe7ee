"""How a WebSocket's bytes reach its session: two read strategies, one interface.

Every detail of waiting for bytes lives here: file descriptors, the readiness
hub, the "drained" hint, the reader task, its parking lot and cancel scope.
The connection (``ws_conn.WebSocketConnection``) sees only what both offer:

* :meth:`start` once the handshake is accepted;
* :meth:`interrupt` to wake a task parked for bytes (the connection ended);
* :meth:`resume` when the app took events again after falling behind;
* :meth:`stop` when reading is over.

:class:`InlineReader` (plain TCP with the hub, Linux): no task.  The app's own
task reads in ``receive()`` through :meth:`InlineReader.poll` (one wakeup per
message), and while the app is elsewhere the hub calls
:meth:`InlineReader.on_readable` for it.  :class:`TaskReader` (TLS, in-memory
streams, the hub turned off: what other platforms take): a task in the
connection's nursery reads and queues events.

Both stop reading once ``MAX_QUEUED_EVENTS`` messages, or
``--websocket-max-queue-bytes`` of them, wait for an app that is away, and while
the connection's writer holds more than ``SEND_HIGH_WATER`` bytes the peer has not
taken: the rest stays in the kernel (TCP backpressure) and nothing is lost.  A
read whose inflated output or frame count reached the protocol's per-call bound
leaves frames unparsed (``more_to_parse``): each reader goes on with them, a
checkpoint between calls that brought no message, before reading more.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Protocol

import trio
from trio.lowlevel import current_task

from .transport import CHECKPOINT_EVERY, TransportClosed
from .ws_send import SEND_HIGH_WATER
from .ws_session import CLOSED, OPEN

if TYPE_CHECKING:
    from .readiness import ReadinessHub
    from .transport import SocketTransport, Transport
    from .types import Message
    from .ws_send import Writer
    from .ws_session import ConnState


class Connection(Protocol):
    """What a reader needs of its connection (``ws_conn.WebSocketConnection``)."""

    state: ConnState
    app_done: bool
    writer: Writer
    _events: list[Message]

    def app_behind(self) -> bool:
        """Enough is queued for the app (messages or bytes), or our replies wait unsent."""
        ...

    def more_to_parse(self) -> bool:
        """The last read left frames to parse (its inflate or frame bound was reached)."""
        ...

    def _received(self, data: bytes) -> bool:
        """Bytes from the peer -> events; True when reading is over."""
        ...

    def _transport_lost(self) -> None: ...

    def _read_failed(self) -> None: ...


logger = logging.getLogger("hornbeam_trio")

MAX_QUEUED_EVENTS = 64
"""Received messages buffered for an app that is not calling receive(): then we stop reading."""


class InlineReader:
    """The app's task reads its socket itself; the hub reads while the app is away."""

    __slots__ = ("conn", "hub", "parked", "recv_nowait", "transport", "waiting")

    def __init__(self, conn: Connection, transport: SocketTransport) -> None:
        self.conn = conn
        self.transport = transport
        hub = transport.hub
        assert hub is not None
        self.hub: ReadinessHub = hub
        self.recv_nowait = transport.recv_nowait
        """Bytes now, b"" at EOF, None if the kernel has none: the read after a wakeup."""
        self.parked = transport.parked
        """This socket's parking message (its abort disarms the hub), for hub.arm()."""
        self.waiting: Awaitable[Any] | None = None
        """What the task awaits after :meth:`poll` returned None (hub.arm() gave it)."""

    def start(self, nursery: trio.Nursery) -> None:
        # Bytes that came while nobody read are the app's to read in receive().
        self.transport.drained = False
        self.hub.watch(self.transport.fd, self)

    def poll(self) -> bytes | None:
        """Bytes now (``b""`` at EOF), or None once the hub is armed for this task: park.

        Raises TransportClosed on a reset, and BusyResourceError when another task
        already waits for this socket.
        """
        transport = self.transport
        while True:
            if transport.drained:
                hub = self.hub
                transport.drained = False
                # arm() raises BusyResourceError if another task waits in receive().
                self.waiting = hub.arm(transport.fd, current_task(), self.parked)
                if self.waiting is not None:
                    return None
            data = transport.recv_nowait()
            if data is not None:
                return data

    def interrupt(self) -> None:
        self.hub.interrupt(self.transport.fd)

    def resume(self) -> None:
        """Nothing to do: the app's next receive() reads on from the kernel."""

    def stop(self) -> None:
        """Nothing to do: the hub forgets the socket when the transport closes."""

    def on_readable(self) -> bool:
        """The hub: bytes arrived while the app is not in receive().  Never blocks or raises.

        True when more may be read (after the hub's other sockets had their turn).
        """
        conn = self.conn
        if conn.state is CLOSED:
            return False
        transport = self.transport
        try:
            for _ in range(CHECKPOINT_EVERY):
                if not conn.app_done and conn.app_behind():
                    # Leave the rest in the kernel (TCP backpressure); the app's next
                    # receive() reads on from there, as does the peer's next bytes.
                    transport.drained = False
                    return False
                fresh = not conn.more_to_parse()
                data = b""  # what the last read left is parsed before reading on
                if fresh:
                    read = transport.recv_nowait()
                    if read is None:
                        return False
                    if not read:
                        conn._transport_lost()
                        return False
                    data = read
                queued = len(conn._events)
                if conn._received(data):
                    return False
                if conn.more_to_parse():
                    return True  # a full bound of frames parsed: the other sockets go first
                if fresh and transport.drained:
                    # The kernel had no more at this read: the next bytes bring an edge.
                    # (Not after parsing what an earlier read left: bytes may have come
                    # since, their edge folded into this watcher's turn.)
                    return False
                if len(conn._events) == queued:
                    # A parse that brought no message (pings, tiny fragments): the other
                    # sockets go first, or 20 such peers hold the hub for seconds.
                    return True
            return True
        except TransportClosed:
            conn._transport_lost()
        except Exception:
            conn._read_failed()
        return False


class TaskReader:
    """A task in the connection's nursery reads for the app (streams that cannot poll)."""

    __slots__ = ("_finished", "_lot", "_scope", "conn", "transport")

    def __init__(self, conn: Connection, transport: Transport) -> None:
        self.conn = conn
        self.transport = transport
        self._lot: trio.lowlevel.ParkingLot | None = None  # made when first needed
        self._scope: trio.CancelScope | None = None
        self._finished: trio.Event | None = None

    def start(self, nursery: trio.Nursery) -> None:
        self._finished = trio.Event()
        nursery.start_soon(self._run)

    def interrupt(self) -> None:
        """The app parks on the connection itself (``receive``), which wakes it."""

    def resume(self) -> None:
        if self._lot:
            self._lot.unpark_all()

    def stop(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    async def wait_finished(self) -> None:
        if self._finished is not None:
            await self._finished.wait()

    async def _run(self) -> None:
        assert self._finished is not None
        conn = self.conn
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                transport = self.transport
                events = conn._events
                while conn.state is not CLOSED:
                    if conn.app_done:
                        events.clear()  # nobody will receive() them: read on for the close
                    elif conn.state is OPEN and conn.app_behind():
                        if conn.writer.pending_bytes > SEND_HIGH_WATER:
                            await conn.writer.settle()  # our replies go first
                            continue
                        if self._lot is None:
                            self._lot = trio.lowlevel.ParkingLot()
                        await self._lot.park()
                        continue
                    if conn.more_to_parse():
                        conn._received(b"")
                        await trio.lowlevel.checkpoint()
                        continue
                    data = await transport.recv()
                    if not data:
                        conn._transport_lost()
                        break
                    conn._received(data)
                    if conn.more_to_parse():
                        await trio.lowlevel.checkpoint()  # one bound of frames per step
        except TransportClosed:
            conn._transport_lost()
        except Exception:  # as the hub's watcher does: this connection ends, 1011
            conn._read_failed()
        finally:
            self._scope = None
            self._finished.set()


Reader = InlineReader | TaskReader

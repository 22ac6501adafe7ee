"""Byte transports under a connection: the raw socket fast path and any Trio stream.

The measurements that shaped this module: going through ``trio.SocketStream``
costs ~30 % of echo throughput against calling ``socket.recv``/``send`` on a
non-blocking socket and waiting with ``trio.lowlevel.wait_readable`` only when
the call would block.  So plain TCP uses :class:`SocketTransport`; TLS and the
testing toolkit's in-memory streams use :class:`StreamTransport`, which wraps
any ``trio.abc.Stream``.

Both expose the same small surface: ``recv()``, ``try_send()`` (never blocks;
a stream transport always answers 0 so the caller queues), ``send_some()`` (waits
for room, then says how much went: a queue that records it never resends a byte),
``send_all()``, its two halves ``send_nowait()``/``send_rest()`` (no coroutine when
the kernel takes the bytes at once) and ``close()``.  Both checkpoint every few
operations that did not block, so a busy connection neither starves the others nor
ignores cancellation.
"""

from __future__ import annotations

import errno
import math
import socket
import struct
import sys
from typing import TYPE_CHECKING, Protocol

import trio
from trio.lowlevel import current_task

from .readiness import ReadinessHub, parking

if TYPE_CHECKING:
    from .timers import TimerSweeper

RECV_SIZE = 65536 + 1024
"""A 64 KiB message plus its frame header fits one recv(); still under malloc's mmap threshold."""
CHECKPOINT_EVERY = 16
"""Operations completed without blocking before we yield to the scheduler anyway."""
LINGER_RESET = struct.pack("HH" if sys.platform == "win32" else "ii", 1, 0)
"""``struct linger`` {on, 0 s} for SO_LINGER: close() then resets the connection.
Two C ints on POSIX, two u_shorts on Windows; native byte order either way."""


class TransportClosed(Exception):
    """The peer went away (reset, broken pipe) or we closed the transport."""


class Transport(Protocol):
    client: tuple[str, int] | None
    server: tuple[str, int] | None
    scheme_secure: bool
    stall_timeout: float | None
    """Seconds ``send_all`` waits for the peer to take more bytes before it gives up with
    TransportClosed (a client that stopped reading); None waits as long as it takes."""

    async def recv(self) -> bytes: ...
    def try_send(self, data: bytes | memoryview) -> int: ...
    async def send_some(self, data: bytes | memoryview) -> int:
        """Send some of ``data``, waiting for room if need be; how many bytes went.

        Cancelled only while nothing of this call has gone out, so a caller that
        records the count before its next await never sends a byte twice.
        """
        ...

    async def send_all(self, data: bytes | memoryview) -> None: ...
    def send_nowait(self, data: bytes) -> int:
        """Send ``data`` whole now if the kernel takes it and no checkpoint is due; how
        many bytes went.  ``len(data)``: done, without a coroutine.  Fewer: finish with
        ``await send_rest(data, sent)``, which waits for room and checkpoints when due."""
        ...

    async def send_rest(self, data: bytes, sent: int) -> None: ...
    async def close(self) -> None: ...
    def abort(self) -> None: ...


_RESET_ERRNOS = {errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.ECONNABORTED, errno.ETIMEDOUT}


def _address(sock: socket.socket, peer: bool) -> tuple[str, int] | None:
    try:
        address = sock.getpeername() if peer else sock.getsockname()
    except OSError:
        return None
    if isinstance(address, tuple):
        return (str(address[0]), int(address[1]))
    return None


class SocketTransport:
    """A non-blocking stdlib socket driven through Trio's I/O readiness waits."""

    __slots__ = (
        "_closed",
        "_stall_at",
        "_stalled",
        "_unyielded",
        "client",
        "drained",
        "fd",
        "hub",
        "parked",
        "scheme_secure",
        "server",
        "sock",
        "stall_timeout",
        "timer_at",
        "timer_key",
        "timers",
    )

    def __init__(
        self,
        sock: socket.socket,
        *,
        hub: ReadinessHub | None = None,
        timers: TimerSweeper | None = None,
    ) -> None:
        self.sock = sock
        self.client = _address(sock, peer=True)
        self.server = _address(sock, peer=False)
        self.scheme_secure = False
        self.stall_timeout: float | None = None
        self._unyielded = 0
        self._closed = False
        self.drained = False
        """The last recv() came back short: the kernel buffer is most likely empty."""
        self.fd = sock.fileno()
        self.hub = hub
        self.timers = timers
        """The server's timer task, which ends a write wait past ``stall_timeout`` (see
        wait_writable); None: a cancel scope per wait does."""
        self.timer_at = math.inf
        self.timer_key = 0
        self._stall_at = math.inf
        """When the write wait in progress gives up (inf: no wait in progress)."""
        self._stalled = False
        self.parked: object = None
        """This socket's wait on the hub, built once (see readiness.park)."""
        if hub is not None:
            self.parked = parking(self.abort_wait)
            hub.register(self.fd)

    async def _wait_readable(self) -> None:
        """Park until readable; only a real wait counts as this connection's checkpoint.

        A readiness edge kept while we ran returns at once without yielding, so
        the count of operations since the last yield goes on (no starving others).
        """
        hub = self.hub
        if hub is None:
            await trio.lowlevel.wait_readable(self.sock)
            self._unyielded = 0
        else:
            # Parked directly, not through hub.wait_readable: no coroutine or closure.
            waiting = hub.arm(self.fd, current_task(), self.parked)
            if waiting is not None:
                await waiting
                self._unyielded = 0

    def abort_wait(self, _: object) -> trio.lowlevel.Abort:
        """The abort of a task parked on the hub for this socket (see arm())."""
        assert self.hub is not None
        self.hub.disarm(self.fd)
        return trio.lowlevel.Abort.SUCCEEDED

    async def recv(self) -> bytes:
        """Next bytes from the peer; ``b""`` at EOF.  Raises TransportClosed on reset."""
        if self.drained:
            # The last recv() drained the kernel buffer: a second one would almost surely
            # fail with EAGAIN, so wait for readiness first and save that syscall.
            self.drained = False
            hub = self.hub
            try:
                if hub is None:
                    await self._wait_readable()
                # The hub's branch of _wait_readable, inlined: this wait is once per
                # request or message, and each coroutine level is crossed twice per wakeup.
                elif (waiting := hub.arm(self.fd, current_task(), self.parked)) is not None:
                    await waiting
                    self._unyielded = 0
            except trio.ClosedResourceError:
                raise TransportClosed("closed locally") from None
        while True:
            # recv_nowait(), inlined: one call fewer per read.
            try:
                data = self.sock.recv(RECV_SIZE)
            except BlockingIOError:
                try:
                    await self._wait_readable()
                except trio.ClosedResourceError:
                    raise TransportClosed("closed locally") from None
                continue
            except OSError as exc:
                raise self._recv_failed(exc) from None
            self.drained = len(data) < RECV_SIZE
            unyielded = self._unyielded + 1
            if unyielded >= CHECKPOINT_EVERY:
                self._unyielded = 0
                await trio.lowlevel.checkpoint()
            else:
                self._unyielded = unyielded
            return data

    def recv_nowait(self) -> bytes | None:
        """Bytes the kernel has now, ``b""`` at EOF, None if it has none (never blocks)."""
        try:
            data = self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            self.drained = True
            return None
        except OSError as exc:
            raise self._recv_failed(exc) from None
        self.drained = len(data) < RECV_SIZE
        return data

    def _recv_failed(self, exc: OSError) -> Exception:
        """What a failed recv() raises: TransportClosed for a peer that left, else ``exc``."""
        if self._closed or exc.errno in _RESET_ERRNOS or exc.errno == errno.EBADF:
            return TransportClosed(str(exc))
        return exc

    def try_send(self, data: bytes | memoryview) -> int:
        """Write what the kernel takes now; raise TransportClosed if the peer is gone."""
        if self._closed:
            raise TransportClosed("closed locally")
        try:
            return self.sock.send(data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise TransportClosed(str(exc)) from None

    async def wait_writable(self) -> None:
        """Park until the kernel takes bytes again; TransportClosed if closed or stalled.

        A response streamed faster than the client reads waits here once or twice per
        response, and a cancel scope per wait (its deadline registered and lifted) was
        ~60k instructions of a 1 MiB response (callgrind).  So within a server the
        stall is the timer task's (on_timer): the wait only notes its deadline, and a
        wait that outlives it is ended through ``notify_closing``, as the connection
        closes anyway.
        """
        timeout = self.stall_timeout
        try:
            if timeout is None:
                await trio.lowlevel.wait_writable(self.sock)
            elif (timers := self.timers) is not None:
                # A stall that came as an earlier wait was already woken left this set.
                self._stalled = False
                self._stall_at = deadline = timers.clock() + timeout
                timers.schedule(self, deadline)  # at once if an earlier entry exists
                try:
                    await trio.lowlevel.wait_writable(self.sock)
                finally:
                    self._stall_at = math.inf
            else:
                # Only here, where the kernel refused bytes: the fast path pays nothing.
                with trio.move_on_after(timeout) as timer:
                    await trio.lowlevel.wait_writable(self.sock)
                if timer.cancelled_caught:
                    raise TransportClosed(f"peer took no bytes for {timeout:g}s")
        except trio.ClosedResourceError:
            if self._stalled:
                raise TransportClosed(f"peer took no bytes for {timeout:g}s") from None
            raise TransportClosed("closed locally") from None

    def on_timer(self, now: float) -> None:
        """The timer task: end a write wait that outlived its deadline (see wait_writable).

        Entries are lazy: one pushed for an earlier wait fires here and, if a later
        wait is in progress, is pushed again for that wait's deadline (with none in
        progress, ``_stall_at`` is inf and scheduling it does nothing).  A closed
        transport is never called: abort_quietly() forgets it.
        """
        stall_at = self._stall_at
        if now < stall_at:
            assert self.timers is not None
            self.timers.schedule(self, stall_at)
            return
        self._stalled = True
        trio.lowlevel.notify_closing(self.sock)  # the waiter gets ClosedResourceError

    async def send_some(self, data: bytes | memoryview) -> int:
        # No checkpoint once bytes went: a cancel there would lose the count.
        sent = self.try_send(data)
        while not sent:
            await self.wait_writable()
            sent = self.try_send(data)
        return sent

    async def send_all(self, data: bytes | memoryview) -> None:
        await self.send_rest(data, self.try_send(data))

    def send_nowait(self, data: bytes) -> int:
        unyielded = self._unyielded + 1
        if unyielded >= CHECKPOINT_EVERY or self._closed:
            return 0  # this operation owes a checkpoint: send_rest() sends and takes it
        try:  # try_send(), inlined
            sent = self.sock.send(data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise TransportClosed(str(exc)) from None
        if sent == len(data):
            self._unyielded = unyielded
        return sent

    async def send_rest(self, data: bytes | memoryview, sent: int) -> None:
        """The rest of ``data`` once ``sent`` bytes went (send_nowait, or try_send in
        send_all), then the operation's share of a checkpoint."""
        total = len(data)
        if sent < total:
            view = memoryview(data)
            while sent < total:
                await self.wait_writable()
                sent += self.try_send(view[sent:])
        self._unyielded += 1
        if self._unyielded >= CHECKPOINT_EVERY:
            self._unyielded = 0
            await trio.lowlevel.checkpoint()

    async def close(self) -> None:
        self.abort_quietly(reset=False)
        await trio.lowlevel.checkpoint()

    def abort(self) -> None:
        self.abort_quietly(reset=True)

    def abort_quietly(self, *, reset: bool) -> None:
        if self._closed:
            return
        self._closed = True
        if reset:
            # SO_LINGER 0 turns close() into a RST: the peer learns at once.
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            except OSError:
                pass
        if self.hub is not None:
            self.hub.unregister(self.fd)
        if self.timers is not None:
            self.timers.forget(self)
        trio.lowlevel.notify_closing(self.sock)
        self.sock.close()


class StreamTransport:
    """Any ``trio.abc.Stream`` (``trio.SSLStream``, in-memory test streams)."""

    __slots__ = (
        "_closed",
        "_send_lock",
        "client",
        "scheme_secure",
        "server",
        "stall_timeout",
        "stream",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        client: tuple[str, int] | None = None,
        server: tuple[str, int] | None = None,
        secure: bool = False,
    ) -> None:
        self.stream = stream
        self.client = client
        self.server = server
        self.scheme_secure = secure
        self.stall_timeout: float | None = None
        self._closed = False
        self._send_lock = trio.StrictFIFOLock()

    async def recv(self) -> bytes:
        try:
            return bytes(await self.stream.receive_some(RECV_SIZE))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise TransportClosed(str(exc)) from None

    def try_send(self, data: bytes | memoryview) -> int:
        if self._closed:
            raise TransportClosed("closed locally")
        return 0

    def send_nowait(self, data: bytes) -> int:
        return self.try_send(data)  # 0: a stream sends only in send_rest()

    async def send_rest(self, data: bytes, sent: int) -> None:
        await self.send_all(data[sent:] if sent else data)

    async def send_some(self, data: bytes | memoryview) -> int:
        """All of ``data``: a Trio stream shows no partial progress.  Cancelled, it sent
        an unknown part and the stream is broken (Trio's contract), except the memory
        streams, which are cancelled only before taking anything."""
        await self.send_all(data)
        return len(data)

    async def send_all(self, data: bytes | memoryview) -> None:
        try:
            async with self._send_lock:
                if self.stall_timeout is None:
                    await self.stream.send_all(data)
                    return
                # A stream shows no partial progress: each 64 KiB must go within the timeout.
                view = memoryview(data)
                for start in range(0, len(view), RECV_SIZE):
                    with trio.move_on_after(self.stall_timeout) as timer:
                        await self.stream.send_all(view[start : start + RECV_SIZE])
                    if timer.cancelled_caught:
                        raise TransportClosed(f"peer took no bytes for {self.stall_timeout:g}s")
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise TransportClosed(str(exc)) from None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with trio.move_on_after(1) as scope:
            scope.shield = True
            try:
                await self.stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        # A Trio stream has no synchronous close; force it through the kernel when we can.
        sock = _underlying_socket(self.stream)
        if sock is not None:
            sock.close()  # a Trio socket wakes its waiters itself
            return
        # Fix (tests/test_serve.py): in-memory test streams are a StapledStream, which has
        # no close() of its own, so a connection cancelled at the shutdown deadline left
        # its client waiting forever; close the two halves (Memory*Stream.close is sync).
        for part in (
            self.stream,
            getattr(self.stream, "send_stream", None),
            getattr(self.stream, "receive_stream", None),
        ):
            close = getattr(part, "close", None)
            if callable(close):
                close()


def _underlying_socket(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    inner: object = stream
    while inner is not None:
        if isinstance(inner, trio.SocketStream):
            return inner.socket
        inner = getattr(inner, "transport_stream", None)
    return None

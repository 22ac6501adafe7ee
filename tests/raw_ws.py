"""A bare-bones WebSocket client over one TCP socket, for load, churn and shutdown tests.

trio-websocket costs a nursery, a task and a wsproto state machine per client; a
churn of 10,000 connections or 1,000 clients held open only needs the handshake,
masked frames out, unmasked frames in, and a way to vanish with a TCP reset.
"""

from __future__ import annotations

import os
import socket
import struct

import trio

from hornbeam_trio.transport import LINGER_RESET

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def handshake(path: str = "/", host: str = "test", extra: bytes = b"") -> bytes:
    return (
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {KEY.decode()}\r\nSec-WebSocket-Version: 13\r\n"
        ).encode()
        + extra
        + b"\r\n"
    )


def masked(opcode: int, payload: bytes) -> bytes:
    """One client frame (FIN set, masked as RFC 6455 requires of clients)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0xFE, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0xFF, n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawWebSocket:
    def __init__(self, stream: trio.SocketStream, buffered: bytes) -> None:
        self.stream = stream
        self.buffer = bytearray(buffered)

    @classmethod
    async def connect(cls, host: str, port: int, path: str = "/") -> RawWebSocket:
        stream = await trio.open_tcp_stream(host, port)
        try:
            await stream.send_all(handshake(path))
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    raise ConnectionError(f"closed during the handshake: {data!r}")
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101 "):
                raise ConnectionError(f"handshake refused: {head.splitlines()[0]!r}")
        except BaseException:
            stream.socket.close()
            raise
        return cls(stream, rest)

    async def send_text(self, text: str) -> None:
        await self.stream.send_all(masked(0x1, text.encode()))

    async def _fill(self, size: int) -> None:
        while len(self.buffer) < size:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buffer += chunk

    async def receive_frame(self) -> tuple[int, bytes]:
        """The next frame from the server: (opcode, payload)."""
        await self._fill(2)
        opcode, n = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F
        start = 2
        if n == 126:
            await self._fill(4)
            n, start = struct.unpack("!H", self.buffer[2:4])[0], 4
        elif n == 127:
            await self._fill(10)
            n, start = struct.unpack("!Q", self.buffer[2:10])[0], 10
        await self._fill(start + n)
        payload = bytes(self.buffer[start : start + n])
        del self.buffer[: start + n]
        return opcode, payload

    async def receive_text(self) -> str:
        """The next text message; pings are answered on the way, as a real client does."""
        while True:
            opcode, payload = await self.receive_frame()
            if opcode == 0x1:
                return payload.decode()
            if opcode == 0x9:
                await self.stream.send_all(masked(0xA, payload))
            elif opcode == 0x8:
                raise EOFError(f"closed by the server: {payload!r}")

    async def receive_close(self) -> int:
        """Skip data frames until the server's close frame; its code."""
        while True:
            opcode, payload = await self.receive_frame()
            if opcode == 0x8:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005

    def reset(self) -> None:
        """Vanish: SO_LINGER 0 turns close() into a TCP reset, no close frame."""
        sock = self.stream.socket
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        sock.close()

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)

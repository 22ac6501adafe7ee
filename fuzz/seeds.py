"""Writes the seed corpora (fuzz/corpus/*/seed-*): well-formed inputs the fuzzer mutates.

The request parser's syntax checks are in C (llhttp), where libFuzzer sees no
coverage, so without seeds it rarely gets past the first byte.  Run it again after
changing the harnesses' input layout: ``python fuzz/seeds.py``.
"""

from __future__ import annotations

import struct
from pathlib import Path

HERE = Path(__file__).parent

REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /p?q=1 HTTP/1.0\r\n\r\n",
    b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nTrailer: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n\x81\x80",
    b"PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 40 + b"\r\n\r\n",
]


def frame(opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False) -> bytes:
    mask = b"\x01\x02\x03\x04"
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    head = struct.pack("!BB", b0, 0x80 | n) if n < 126 else struct.pack("!BBH", b0, 0xFE, n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


FRAMES = [
    frame(1, b"hello"),
    frame(2, bytes(range(40))),
    frame(1, "h\u00e9".encode()[:2], fin=False) + frame(9, b"p") + frame(0, "h\u00e9".encode()[2:]),
    frame(8, struct.pack("!H", 1000) + b"bye"),
    frame(1, b"x" * 200),
    frame(10, b"pong") + frame(8, b""),
    frame(1, b"\xf2\x8f\x00\x00", rsv1=True),  # deflated bytes if negotiated
]


def main() -> None:
    for name, flags, items in (
        ("http_request", (0, 1, 0x80), REQUESTS),
        ("websocket_frames", (0x1C, 0x1D, 0x1E), FRAMES),
    ):
        folder = HERE / "corpus" / name
        folder.mkdir(parents=True, exist_ok=True)
        n = 0
        for item in items:
            for flag in flags:
                for split in (0, 7):
                    (folder / f"seed-{n:03d}").write_bytes(bytes((flag, split)) + item)
                    n += 1


if __name__ == "__main__":
    main()

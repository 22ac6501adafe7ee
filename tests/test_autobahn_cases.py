"""The Autobahn|Testsuite fuzzingclient cases, by case id, against a real server.

Autobahn (https://github.com/crossbario/autobahn-testsuite) is the standard WebSocket
conformance suite; it is Python 2 and wants Docker, so its server-side cases are
restated here: each test sends what the Autobahn case sends, over real TCP to an echo
app, and asserts the outcome Autobahn grades as passing.  Autobahn's grading (case.py):

* ``expected`` lists the events (messages echoed, pongs) the client must see, in order;
  an ``OK`` list and sometimes a ``NON-STRICT`` one, both passing grades.
* ``expectedClose``: who starts the closing handshake (``closedByMe``), the close codes
  the server may send, and whether the close must be clean.  When the server is to
  "fail the connection" it must send its close frame (with one of the codes; Autobahn
  also tolerates none, we require it since our server always sends one) and then close
  TCP itself; when the client closes, the server answers the close and drops TCP.

Where Autobahn waits seconds (fail-fast UTF-8, 5.19) the pauses here are shorter, and
the performance groups (9.x, 12.x, 13.x) send fewer and smaller messages: what is
checked per message is the same, only the counts are scaled (see each table).
"""

from __future__ import annotations

import json
import random
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import trio
import ws_apps
from test_websocket import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RawClient,
    client_frame,
)

from hornbeam_trio.testing import run_server

TIMEOUT = 10.0
CHOP_PAUSE = 0.001  # between the pieces of a chopped frame, so they leave as separate writes
SYNC_PAUSE = 0.01  # after a frame Autobahn sends with sync=True
WAIT = 0.3  # Autobahn's 1 s waits (6.4.x, 5.19), shortened

Event = tuple[Any, ...]
"""("message", payload bytes, is_binary) | ("pong", payload) | ("close", code, reason) | ("eof",)"""


def msg(payload: bytes | str, binary: bool = False) -> Event:
    return ("message", payload.encode() if isinstance(payload, str) else payload, binary)


def pong(payload: bytes | str = b"") -> Event:
    return ("pong", payload.encode() if isinstance(payload, str) else payload)


# --------------------------------------------------------------------------- the client


@dataclass
class Deflate:
    """The client's half of a negotiated permessage-deflate (RFC 7692), zlib raw deflate."""

    client_no_context_takeover: bool = False
    server_no_context_takeover: bool = False
    client_max_window_bits: int = 15
    server_max_window_bits: int = 15

    def __post_init__(self) -> None:
        self._compressor: Any = None
        self._decompressor: Any = None

    def compress(self, data: bytes) -> bytes:
        if self._compressor is None or self.client_no_context_takeover:
            self._compressor = zlib.compressobj(wbits=-max(self.client_max_window_bits, 9))
        out: bytes = self._compressor.compress(data) + self._compressor.flush(zlib.Z_SYNC_FLUSH)
        assert out.endswith(b"\x00\x00\xff\xff")
        return out[:-4]

    def decompress(self, payload: bytes) -> bytes:
        # Inflating with exactly the negotiated window (and a fresh inflater per message
        # under server_no_context_takeover) fails if the server broke either promise.
        if self._decompressor is None or self.server_no_context_takeover:
            self._decompressor = zlib.decompressobj(wbits=-self.server_max_window_bits)
        out: bytes = self._decompressor.decompress(payload + b"\x00\x00\xff\xff")
        return out


class AutobahnClient(RawClient):
    """test_websocket's raw client plus Autobahn's ways of sending and its event log."""

    deflate: Deflate | None = None
    close_sent = False

    async def send_chopped(self, data: bytes, chop: int | None, sync: bool = False) -> None:
        if chop is None:
            await self.send(data)
        else:
            for i in range(0, len(data), chop):
                await self.send(data[i : i + chop])
                await trio.sleep(CHOP_PAUSE)
        if sync:
            await trio.sleep(SYNC_PAUSE)

    async def send_message(
        self, payload: bytes, *, binary: bool, fragment: int | None = None
    ) -> None:
        """A whole message, compressed if deflate was negotiated, in frames of ``fragment``."""
        rsv = 0
        if self.deflate is not None:
            payload = self.deflate.compress(payload)
            rsv = 0b100
        size = fragment or max(len(payload), 1)
        pieces = [payload[i : i + size] for i in range(0, len(payload), size)] or [b""]
        frames = []
        for i, piece in enumerate(pieces):
            opcode = (OP_BINARY if binary else OP_TEXT) if i == 0 else OP_CONT
            frames.append(
                client_frame(opcode, piece, fin=i == len(pieces) - 1, rsv=rsv if i == 0 else 0)
            )
        await self.send(b"".join(frames))

    async def send_close(self, payload: bytes) -> None:
        await self.send_frame(OP_CLOSE, payload)
        self.close_sent = True

    async def event(self, timeout: float = TIMEOUT) -> Event:
        """The next thing the server did; server pings are answered and skipped."""
        parts: list[bytes] = []
        first: Any = None
        with trio.fail_after(timeout):
            while True:
                try:
                    if not await self._fill(2):
                        return ("eof",)
                except trio.BrokenResourceError:
                    return ("eof",)
                frame = await self.receive_frame(timeout)
                if frame.opcode == OP_PING:
                    if not self.close_sent:
                        await self.send_frame(OP_PONG, frame.payload)
                    continue
                if frame.opcode == OP_PONG:
                    return pong(frame.payload)
                if frame.opcode == OP_CLOSE:
                    code = frame.close_code
                    return ("close", code, frame.payload[2:])
                if first is None:
                    assert frame.opcode in (OP_TEXT, OP_BINARY), frame
                    first = frame
                else:
                    assert frame.opcode == OP_CONT, frame
                parts.append(frame.payload)
                if frame.fin:
                    payload = b"".join(parts)
                    if first.rsv & 0b100:
                        assert self.deflate is not None, "RSV1 without permessage-deflate"
                        payload = self.deflate.decompress(payload)
                    else:
                        assert first.rsv == 0, first
                    binary = first.opcode == OP_BINARY
                    if not binary:
                        payload.decode()  # the server must never send invalid UTF-8
                    return ("message", payload, binary)

    async def events_until_close(self, timeout: float = TIMEOUT) -> tuple[list[Event], Event]:
        events: list[Event] = []
        while True:
            event = await self.event(timeout)
            if event[0] in ("close", "eof"):
                return events, event
            events.append(event)

    async def expect_tcp_closed(self) -> None:
        """After its close frame the server closes TCP and sends nothing more."""
        assert not self.buffer, f"bytes after the close frame: {bytes(self.buffer)!r}"
        await self.expect_eof(TIMEOUT)


async def connect(server: Any, headers: list[tuple[str, str]] | None = None) -> AutobahnClient:
    client = await AutobahnClient.connect(server, headers=headers)
    assert isinstance(client, AutobahnClient)
    return client


async def finish_closed_by_me(client: AutobahnClient, codes: Sequence[int]) -> None:
    """closedByMe: we close (unless the case already did); the server answers and drops TCP."""
    if not client.close_sent:
        await client.send_close(struct.pack("!H", 1000))
    extra, close = await client.events_until_close()
    assert extra == [], f"events after those expected: {extra}"
    assert close[0] == "close", "TCP closed without a close frame"
    # An empty close reply is allowed too (Autobahn: remoteCloseCode None).
    assert close[1] is None or close[1] in codes, f"close code {close[1]}, expected {codes}"
    await client.expect_tcp_closed()


async def finish_failed_by_server(
    client: AutobahnClient, events: list[Event], close: Event, codes: Sequence[int]
) -> None:
    """not closedByMe: the server's close frame with an allowed code, then TCP closed by it."""
    assert close[0] == "close", f"TCP closed without a close frame after {events}"
    assert close[1] in codes, f"close code {close[1]}, expected one of {codes}"
    try:  # Autobahn answers the close, as any client would; the server may be gone already
        await client.send_close(struct.pack("!H", close[1]))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    await client.expect_tcp_closed()


# --------------------------------------------------------------------------- case tables


@dataclass(frozen=True)
class Frame:
    opcode: int
    payload: bytes = b""
    fin: bool = True
    rsv: int = 0
    chop: int | None = None
    sync: bool = False


@dataclass(frozen=True)
class Close:
    """The client's close frame, sent as a step of the case (its raw payload)."""

    payload: bytes


@dataclass(frozen=True)
class Pause:
    seconds: float


Step = Frame | Close | Pause


@dataclass(frozen=True)
class Case:
    steps: tuple[Step, ...]
    ok: tuple[Event, ...] = ()
    non_strict: tuple[Event, ...] | None = None
    """Autobahn's NON-STRICT events, also a pass."""
    closed_by_me: bool = True
    codes: tuple[int, ...] = (1000,)


NORMAL = (1000,)
PROTOCOL_ERROR = (1002,)
INVALID_PAYLOAD = (1007,)


def fails(
    *steps: Step,
    codes: tuple[int, ...] = PROTOCOL_ERROR,
    ok: Sequence[Event] = (),
    non_strict: Sequence[Event] | None = None,
) -> Case:
    return Case(
        tuple(steps),
        tuple(ok),
        None if non_strict is None else tuple(non_strict),
        closed_by_me=False,
        codes=codes,
    )


def echoes(*steps: Step, ok: Sequence[Event], codes: tuple[int, ...] = NORMAL) -> Case:
    return Case(tuple(steps), tuple(ok), codes=codes)


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


HELLO = b"Hello, world!"
BIN8 = b"\x00\xff\xfe\xfd\xfc\xfb\x00\xff"


def text_sizes(prefix: str, opcode: int, unit: bytes) -> dict[str, Case]:
    sizes = [0, 125, 126, 127, 128, 65535, 65536]
    cases = {
        f"{prefix}.{i}": echoes(Frame(opcode, unit * n), ok=[msg(unit * n, opcode == OP_BINARY)])
        for i, n in enumerate(sizes, 1)
    }
    big = unit * 65536
    cases[f"{prefix}.8"] = echoes(Frame(opcode, big, chop=997), ok=[msg(big, opcode == OP_BINARY)])
    return cases


FRAMING = {**text_sizes("1.1", OP_TEXT, b"*"), **text_sizes("1.2", OP_BINARY, b"\xfe")}

PINGS = {
    "2.1": echoes(Frame(OP_PING), ok=[pong()]),
    "2.2": echoes(Frame(OP_PING, HELLO), ok=[pong(HELLO)]),
    "2.3": echoes(Frame(OP_PING, BIN8), ok=[pong(BIN8)]),
    "2.4": echoes(Frame(OP_PING, b"\xfe" * 125), ok=[pong(b"\xfe" * 125)]),
    "2.5": fails(Frame(OP_PING, b"\xfe" * 126)),  # control frame over 125 bytes
    "2.6": echoes(Frame(OP_PING, b"\xfe" * 125, chop=1), ok=[pong(b"\xfe" * 125)]),
    # Unsolicited pongs are ignored: no event at all before the close reply.
    "2.7": echoes(Frame(OP_PONG), Close(close_payload(1000)), ok=[]),
    "2.8": echoes(Frame(OP_PONG, b"unsolicited pong payload"), Close(close_payload(1000)), ok=[]),
    "2.9": echoes(
        Frame(OP_PONG, b"unsolicited pong payload"),
        Frame(OP_PING, b"ping payload"),
        ok=[pong("ping payload")],
    ),
    "2.10": echoes(
        *(Frame(OP_PING, f"payload-{i}".encode()) for i in range(10)),
        ok=[pong(f"payload-{i}") for i in range(10)],
    ),
    "2.11": echoes(
        *(Frame(OP_PING, f"payload-{i}".encode(), chop=1) for i in range(10)),
        ok=[pong(f"payload-{i}") for i in range(10)],
    ),
}


def good_bad_ping(bad: Frame, *, sync: bool = False, chop: int | None = None) -> Case:
    """Text, then a bad frame, then a ping: the echo may come before the failure (OK) or
    not (NON-STRICT: the failure overtook it); the ping must never be answered."""
    return fails(
        Frame(OP_TEXT, HELLO, sync=sync, chop=chop),
        bad,
        Frame(OP_PING, sync=sync, chop=chop),
        ok=[msg(HELLO)],
        non_strict=[],
    )


RESERVED_BITS = {
    "3.1": fails(Frame(OP_TEXT, HELLO, rsv=1)),
    "3.2": good_bad_ping(Frame(OP_TEXT, HELLO, rsv=2)),
    "3.3": good_bad_ping(Frame(OP_TEXT, HELLO, rsv=3, sync=True), sync=True),
    # RSV1 without permessage-deflate negotiated is as reserved as the others.
    "3.4": good_bad_ping(Frame(OP_TEXT, HELLO, rsv=4, chop=1), chop=1),
    "3.5": fails(Frame(OP_BINARY, BIN8, rsv=5)),
    "3.6": fails(Frame(OP_BINARY, HELLO, rsv=6)),
    "3.7": fails(Frame(OP_CLOSE, rsv=7)),
}

RESERVED_OPCODES = {
    "4.1.1": fails(Frame(3)),
    "4.1.2": fails(Frame(4, b"reserved opcode payload")),
    "4.1.3": good_bad_ping(Frame(5)),
    "4.1.4": good_bad_ping(Frame(6, HELLO)),
    "4.1.5": good_bad_ping(Frame(7, HELLO, chop=1), chop=1),
    "4.2.1": fails(Frame(11)),
    "4.2.2": fails(Frame(12, b"reserved opcode payload")),
    "4.2.3": good_bad_ping(Frame(13)),
    "4.2.4": good_bad_ping(Frame(14, HELLO)),
    "4.2.5": good_bad_ping(Frame(15, HELLO, chop=1), chop=1),
}

F1, F2, F3, F4, F5 = (f"fragment{i}".encode() for i in range(1, 6))
NONCONT = b"non-continuation payload"


def fragmented_with_ping(sync: bool = False, chop: int | None = None) -> Case:
    return echoes(
        Frame(OP_TEXT, F1, fin=False, sync=sync, chop=chop),
        Frame(OP_PING, b"ping payload", sync=sync, chop=chop),
        Frame(OP_CONT, F2, sync=sync, chop=chop),
        ok=[pong("ping payload"), msg(F1 + F2)],
    )


def pings_between_fragments(sync: bool) -> Case:
    """5.19/5.20: a text message in five fragments with two pings between, and a pause."""
    return echoes(
        Frame(OP_TEXT, F1, fin=False, sync=sync),
        Frame(OP_CONT, F2, fin=False, sync=sync),
        Frame(OP_PING, b"pongme 1!", sync=sync),
        Pause(WAIT),
        Frame(OP_CONT, F3, fin=False, sync=sync),
        Frame(OP_CONT, F4, fin=False, sync=sync),
        Frame(OP_PING, b"pongme 2!", sync=sync),
        Frame(OP_CONT, F5, sync=sync),
        ok=[pong("pongme 1!"), pong("pongme 2!"), msg(F1 + F2 + F3 + F4 + F5)],
    )


FRAGMENTATION = {
    "5.1": fails(Frame(OP_PING, F1, fin=False), Frame(OP_CONT, F2)),
    "5.2": fails(Frame(OP_PONG, F1, fin=False), Frame(OP_CONT, F2)),
    "5.3": echoes(Frame(OP_TEXT, F1, fin=False), Frame(OP_CONT, F2), ok=[msg(F1 + F2)]),
    "5.4": echoes(
        Frame(OP_TEXT, F1, fin=False, sync=True), Frame(OP_CONT, F2, sync=True), ok=[msg(F1 + F2)]
    ),
    "5.5": echoes(
        Frame(OP_TEXT, F1, fin=False, chop=1), Frame(OP_CONT, F2, chop=1), ok=[msg(F1 + F2)]
    ),
    "5.6": fragmented_with_ping(),
    "5.7": fragmented_with_ping(sync=True),
    "5.8": fragmented_with_ping(chop=1),
    "5.9": fails(Frame(OP_CONT, NONCONT), Frame(OP_TEXT, HELLO)),
    "5.10": fails(Frame(OP_CONT, NONCONT, sync=True), Frame(OP_TEXT, HELLO, sync=True)),
    "5.11": fails(Frame(OP_CONT, NONCONT, chop=1), Frame(OP_TEXT, HELLO, chop=1)),
    "5.12": fails(Frame(OP_CONT, NONCONT, fin=False), Frame(OP_TEXT, HELLO)),
    "5.13": fails(Frame(OP_CONT, NONCONT, fin=False, sync=True), Frame(OP_TEXT, HELLO, sync=True)),
    "5.14": fails(Frame(OP_CONT, NONCONT, fin=False, chop=1), Frame(OP_TEXT, HELLO, chop=1)),
    # The first message is complete and legal, so echoing it (OK) or not (NON-STRICT) passes.
    "5.15": fails(
        Frame(OP_TEXT, F1, fin=False),
        Frame(OP_CONT, F2),
        Frame(OP_CONT, F3, fin=False),
        Frame(OP_TEXT, F4),
        ok=[msg(F1 + F2)],
        non_strict=[],
    ),
    "5.16": fails(
        *[Frame(OP_CONT, F1, fin=False), Frame(OP_TEXT, F2, fin=False), Frame(OP_CONT, F3)] * 2
    ),
    "5.17": fails(*[Frame(OP_CONT, F1), Frame(OP_TEXT, F2, fin=False), Frame(OP_CONT, F3)] * 2),
    "5.18": fails(Frame(OP_TEXT, F1, fin=False), Frame(OP_TEXT, F2)),
    "5.19": pings_between_fragments(sync=False),
    "5.20": pings_between_fragments(sync=True),
}


# --- 6.x: UTF-8 ------------------------------------------------------------------------

KOSME = bytes.fromhex("cebae1bdb9cf83cebcceb5")  # "κόσμε", the UTF-8 test file's sample
UMLAUTS = "Hello-µ@ßöäüàá-UTF-8!!".encode()
SURROGATE_IN_TEXT = KOSME + b"\xed\xa0\x80" + b"edited"  # invalid at byte 12 (0xa0)


def is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def one_octet_fragments(payload: bytes) -> list[Step]:
    if not payload:
        return [Frame(OP_TEXT)]
    last = len(payload) - 1
    return [
        Frame(OP_TEXT if i == 0 else OP_CONT, payload[i : i + 1], fin=i == last)
        for i in range(len(payload))
    ]


UTF8_HANDLING = {
    "6.1.1": echoes(Frame(OP_TEXT), ok=[msg(b"")]),
    "6.1.2": echoes(
        Frame(OP_TEXT, fin=False), Frame(OP_CONT, fin=False), Frame(OP_CONT), ok=[msg(b"")]
    ),
    "6.1.3": echoes(
        Frame(OP_TEXT, fin=False),
        Frame(OP_CONT, b"middle frame payload", fin=False),
        Frame(OP_CONT),
        ok=[msg("middle frame payload")],
    ),
    "6.2.1": echoes(Frame(OP_TEXT, UMLAUTS), ok=[msg(UMLAUTS)]),
    # Split on a code point boundary, then in 1-octet fragments splitting code points.
    "6.2.2": echoes(
        Frame(OP_TEXT, UMLAUTS[:15], fin=False), Frame(OP_CONT, UMLAUTS[15:]), ok=[msg(UMLAUTS)]
    ),
    "6.2.3": echoes(*one_octet_fragments(UMLAUTS), ok=[msg(UMLAUTS)]),
    "6.2.4": echoes(*one_octet_fragments(KOSME), ok=[msg(KOSME)]),
    "6.3.1": fails(Frame(OP_TEXT, SURROGATE_IN_TEXT), codes=INVALID_PAYLOAD),
    "6.3.2": fails(*one_octet_fragments(SURROGATE_IN_TEXT), codes=INVALID_PAYLOAD),
}
assert UMLAUTS[:15].decode() == "Hello-µ@ßöä"


def _utf8_groups() -> list[list[tuple[bool, bytes]]]:
    """Markus Kuhn's UTF-8 decoder stress test as Autobahn groups it: 6.5 to 6.23.

    Each entry is (valid, payload); Autobahn sends the payload as one text frame and
    expects the echo when valid, else the connection failed with 1007.
    """
    h = bytes.fromhex
    missing_last = [
        h(x)
        for x in (
            "c0",
            "e080",
            "f08080",
            "f8808080",
            "fc80808080",
            "df",
            "efbf",
            "f7bfbf",
            "fbbfbfbf",
            "fdbfbfbfbf",
        )
    ]
    high = ["eda080", "edadbf", "edae80", "edafbf"]
    low = ["edb080", "edbfbf"]
    noncharacters = [h("efbfbe"), h("efbfbf")]
    for lead in (0xF0, 0xF1, 0xF2, 0xF3, 0xF4):
        for second in (0x8F, 0x9F, 0xAF, 0xBF):
            if lead == 0xF4 and second != 0x8F:
                continue  # beyond U+10FFFF
            for last in (0xBE, 0xBF):
                seq = bytes((lead, second, 0xBF, last))
                if lead == 0xF0 and second == 0x8F:
                    continue  # overlong
                noncharacters.append(seq)

    def invalid(*xs: str) -> list[tuple[bool, bytes]]:
        return [(False, h(x)) for x in xs]

    def valid(*xs: str) -> list[tuple[bool, bytes]]:
        return [(True, h(x)) for x in xs]

    return [
        # 6.5 some valid UTF-8
        [
            (True, b"hello$world"),
            (True, b"hello\xc2\xa2world"),
            (True, b"hello\xe2\x82\xacworld"),
            (True, b"hello\xf0\xa4\xad\xa2world"),
            (True, KOSME),
        ],
        # 6.6 every prefix of a string with multi-byte code points
        [(is_utf8(KOSME[:i]), KOSME[:i]) for i in range(1, len(KOSME) + 1)],
        # 6.7 first sequence of each length; 6.8 the 5- and 6-byte ones (beyond U+10FFFF)
        valid("00", "c280", "e0a080", "f0908080"),
        invalid("f888808080", "fc8480808080"),
        # 6.9 last sequence of each length; 6.10 the 4/5/6-byte ones beyond U+10FFFF
        valid("7f", "dfbf", "efbfbf", "f48fbfbf"),
        invalid("f7bfbfbf", "fbbfbfbfbf", "fdbfbfbfbfbf"),
        # 6.11 other boundary conditions
        [*valid("ed9fbf", "ee8080", "efbfbd", "f48fbfbf"), *invalid("f4908080")],
        # 6.12 unexpected continuation bytes
        [
            *invalid("80", "bf", "80bf", "80bf80", "80bf80bf", "80bf80bf80", "80bf80bf80bf"),
            (False, bytes(range(0x80, 0xBF))),
        ],
        # 6.13 lonely start bytes, each followed by a space
        [
            (False, b"".join(bytes((c, 0x20)) for c in range(lo, hi)))
            for lo, hi in ((0xC0, 0xDF), (0xE0, 0xEF), (0xF0, 0xF7), (0xF8, 0xFB), (0xFC, 0xFD))
        ],
        # 6.14 sequences missing their last continuation byte; 6.15 all of them at once
        [(False, x) for x in missing_last],
        [(False, b"".join(missing_last))],
        # 6.16 bytes that never appear in UTF-8
        invalid("fe", "ff", "fefeffff"),
        # 6.17 overlong "/"; 6.18 the longest overlong forms; 6.19 overlong NUL
        invalid("c0af", "e080af", "f08080af", "f8808080af", "fc80808080af"),
        invalid("c1bf", "e09fbf", "f08fbfbf", "f887bfbfbf", "fc83bfbfbfbf"),
        invalid("c080", "e08080", "f0808080", "f880808080", "fc8080808080"),
        # 6.20 lone UTF-16 surrogates; 6.21 paired ones (still not UTF-8)
        invalid(*high, "edb080", "edbe80", "edbfbf"),
        [(False, h(a + b)) for a in high for b in low],
        # 6.22 noncharacters are valid UTF-8 (RFC 3629); 6.23 the Specials block
        [(True, x) for x in noncharacters],
        valid("efbfb9", "efbfba", "efbfbb", "efbfbc", "efbfbd", "efbfbe", "efbfbf"),
    ]


for _group, _sequences in enumerate(_utf8_groups(), 5):
    for _index, (_valid, _payload) in enumerate(_sequences, 1):
        assert _valid == is_utf8(_payload), (_group, _index, _payload)
        UTF8_HANDLING[f"6.{_group}.{_index}"] = (
            echoes(Frame(OP_TEXT, _payload), ok=[msg(_payload)])
            if _valid
            else fails(Frame(OP_TEXT, _payload), codes=INVALID_PAYLOAD)
        )
assert len([k for k in UTF8_HANDLING if k.startswith("6.22.")]) == 34


# --- 7.x: closing ------------------------------------------------------------------------

HELLO_WORLD = b"Hello World!"
VALID_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999]
INVALID_CODES = [0, 999, 1004, 1005, 1006, 1016, 1100, 2000, 2999]

CLOSING = {
    "7.1.1": echoes(Frame(OP_TEXT, HELLO_WORLD), ok=[msg(HELLO_WORLD)]),
    # After the client's close, nothing it sends is answered or echoed.
    "7.1.2": echoes(Close(close_payload(1000)), Frame(OP_CLOSE), ok=[]),
    "7.1.3": echoes(Close(close_payload(1000)), Frame(OP_PING), ok=[]),
    "7.1.4": echoes(Close(close_payload(1000)), Frame(OP_TEXT, HELLO_WORLD), ok=[]),
    "7.1.5": echoes(
        Frame(OP_TEXT, F1, fin=False), Close(close_payload(1000)), Frame(OP_CONT, F2), ok=[]
    ),
    # An empty close is answered with an empty close or 1000.
    "7.3.1": echoes(Close(b""), ok=[]),
    "7.3.2": echoes(Close(b"a"), ok=[], codes=PROTOCOL_ERROR),  # 1-byte close payload
    "7.3.3": echoes(Close(close_payload(1000)), ok=[]),
    "7.3.4": echoes(Close(close_payload(1000, HELLO_WORLD)), ok=[]),
    "7.3.5": echoes(Close(close_payload(1000, b"*" * 123)), ok=[]),
    "7.3.6": echoes(Close(close_payload(1000, b"*" * 124)), ok=[], codes=PROTOCOL_ERROR),
    "7.5.1": echoes(Close(close_payload(1000, SURROGATE_IN_TEXT)), ok=[], codes=(1002, 1007)),
    **{
        f"7.7.{i}": echoes(Close(close_payload(code)), ok=[], codes=(1000, code))
        for i, code in enumerate(VALID_CODES, 1)
    },
    **{
        f"7.9.{i}": echoes(Close(close_payload(code)), ok=[], codes=PROTOCOL_ERROR)
        for i, code in enumerate(INVALID_CODES, 1)
    },
    # INFORMATIONAL in Autobahn (codes beyond 4999 are undefined): 1000, the code, or 1002.
    "7.13.1": echoes(Close(close_payload(5000)), ok=[], codes=(1000, 5000, 1002)),
    "7.13.2": echoes(Close(close_payload(65535)), ok=[], codes=(1000, 65535, 1002)),
}


def pattern(unit: bytes, n: int) -> bytes:
    return (unit * (n // len(unit) + 1))[:n]


# --- 9.x and 10.x: sizes (a sample, 64 KiB at most, counts scaled down) -------------------

KB64 = 64 * 1024
TEXT_UNIT = b"BAsd7&jh23"
BINARY_UNIT = b"\x00\xfe\x23\xfa\xf0"


def fragmented(opcode: int, payload: bytes, size: int) -> list[Step]:
    pieces = [payload[i : i + size] for i in range(0, len(payload), size)]
    return [
        Frame(opcode if i == 0 else OP_CONT, piece, fin=i == len(pieces) - 1)
        for i, piece in enumerate(pieces)
    ]


LIMITS = {
    "9.1.1": echoes(Frame(OP_TEXT, pattern(TEXT_UNIT, KB64)), ok=[msg(pattern(TEXT_UNIT, KB64))]),
    "9.2.1": echoes(
        Frame(OP_BINARY, pattern(BINARY_UNIT, KB64)), ok=[msg(pattern(BINARY_UNIT, KB64), True)]
    ),
    # 9.3.1 / 9.4.1: 4 MiB in 64-byte fragments in Autobahn; 64 KiB here.
    "9.3.1": echoes(*fragmented(OP_TEXT, b"*" * KB64, 64), ok=[msg(b"*" * KB64)]),
    "9.4.1": echoes(*fragmented(OP_BINARY, b"\xfe" * KB64, 64), ok=[msg(b"\xfe" * KB64, True)]),
    # 9.5.1 / 9.6.1: 1 MiB in 64-octet chops in Autobahn; 16 KiB here.
    "9.5.1": echoes(
        Frame(OP_TEXT, pattern(TEXT_UNIT, 16384), chop=64), ok=[msg(pattern(TEXT_UNIT, 16384))]
    ),
    "9.6.1": echoes(
        Frame(OP_BINARY, pattern(BINARY_UNIT, 16384), chop=64),
        ok=[msg(pattern(BINARY_UNIT, 16384), True)],
    ),
    "10.1.1": echoes(*fragmented(OP_TEXT, b"*" * 65536, 1300), ok=[msg(b"*" * 65536)]),
}

ALL_CASES = {
    **FRAMING,
    **PINGS,
    **RESERVED_BITS,
    **RESERVED_OPCODES,
    **FRAGMENTATION,
    **UTF8_HANDLING,
    **CLOSING,
    **LIMITS,
}


async def perform(client: AutobahnClient, step: Step) -> None:
    if isinstance(step, Pause):
        await trio.sleep(step.seconds)
    elif isinstance(step, Close):
        await client.send_close(step.payload)
    else:
        data = client_frame(step.opcode, step.payload, fin=step.fin, rsv=step.rsv)
        await client.send_chopped(data, step.chop, step.sync)


@pytest.mark.parametrize("case_id", list(ALL_CASES))
async def test_autobahn_case(case_id: str) -> None:
    case = ALL_CASES[case_id]
    with trio.fail_after(TIMEOUT):
        async with run_server(ws_apps.echo()) as server:
            client = await connect(server)
            try:
                for step in case.steps:
                    try:
                        await perform(client, step)
                    except trio.BrokenResourceError:
                        # Only a case the server fails may see it close before we are done.
                        assert not case.closed_by_me, f"connection lost at {step}"
                        break
                if case.closed_by_me:
                    events = [await client.event() for _ in case.ok]
                    assert events == list(case.ok)
                    await finish_closed_by_me(client, case.codes)
                else:
                    events, close = await client.events_until_close()
                    allowed = [list(case.ok)]
                    if case.non_strict is not None:
                        allowed.append(list(case.non_strict))  # NON-STRICT passes too
                    assert events in allowed, f"events {events}, expected one of {allowed}"
                    await finish_failed_by_server(client, events, close, case.codes)
            finally:
                await client.stream.aclose()


# --- 6.4.x: fail fast on invalid UTF-8 ----------------------------------------------------

# Part 2 makes the text invalid: 0xF4 0x90 would encode beyond U+10FFFF.
FAIL_FAST_TEXT = KOSME + b"\xf4\x90\x80\x80" + b"edited"
FAIL_FAST = {
    # frames: valid first fragment | the invalidating fragment | the rest
    "6.4.1": ("frames", (11, 15)),
    "6.4.2": ("frames", (12, 13)),
    # the same cuts, but inside one frame (chops of its bytes)
    "6.4.3": ("chops", (11, 15)),
    "6.4.4": ("chops", (12, 13)),
}


@pytest.mark.parametrize("case_id", list(FAIL_FAST))
async def test_autobahn_fail_fast_utf8(case_id: str) -> None:
    """Autobahn grades failing right after part 2 as OK, failing only once the message is
    complete (after part 3) as NON-STRICT; we fail fast (OK).  Failing on part 1, or
    echoing, fails."""
    how, (a, b) = FAIL_FAST[case_id]
    text = FAIL_FAST_TEXT
    if how == "frames":
        parts = [
            client_frame(OP_TEXT, text[:a], fin=False),
            client_frame(OP_CONT, text[a:b], fin=False),
            client_frame(OP_CONT, text[b:]),
        ]
    else:
        whole = client_frame(OP_TEXT, text)
        header = len(whole) - len(text)
        parts = [whole[: header + a], whole[header + a : header + b], whole[header + b :]]
    with trio.fail_after(TIMEOUT):
        async with run_server(ws_apps.echo()) as server:
            client = await connect(server)
            await client.send(parts[0])
            with trio.move_on_after(WAIT):  # "timeout A": part 1 alone is valid so far
                event = await client.event()
                raise AssertionError(f"{event} after the valid first part")
            await client.send(parts[1])
            outcome = "OK"
            with trio.move_on_after(WAIT) as waited:
                events, close = await client.events_until_close()
            if waited.cancelled_caught:
                outcome = "NON-STRICT"
                try:
                    await client.send(parts[2])
                except trio.BrokenResourceError:
                    pass
                events, close = await client.events_until_close()
            assert outcome == "OK", outcome  # failing fast, not NON-STRICT
            assert events == [], events
            await finish_failed_by_server(client, events, close, INVALID_PAYLOAD)
            await client.stream.aclose()


# --- 7.1.6: close while a large message is still being echoed (INFORMATIONAL) -----------


async def test_autobahn_case_7_1_6() -> None:
    """A 256 KiB text, a small one, close, ping.  Autobahn only reports what happened;
    what we hold the server to: echoes, if any, in order and before its close reply
    (1000), no pong for the ping after the close, then TCP closed."""
    big = pattern(TEXT_UNIT, 256 * 1024)
    with trio.fail_after(TIMEOUT):
        async with run_server(ws_apps.echo()) as server:
            client = await connect(server)
            await client.send(
                client_frame(OP_TEXT, big)
                + client_frame(OP_TEXT, HELLO_WORLD)
                + client_frame(OP_CLOSE, close_payload(1000))
                + client_frame(OP_PING)
            )
            client.close_sent = True
            events, close = await client.events_until_close()
            assert events == [msg(big), msg(HELLO_WORLD)][: len(events)], events
            assert close[:2] == ("close", 1000)
            await client.expect_tcp_closed()
            await client.stream.aclose()


# --- 12.x / 13.x: permessage-deflate ------------------------------------------------------

# Autobahn's MSG_SIZES: (message size, auto-fragment size; 0 = one frame), in case order.
# It sends 1000 messages per case; we send a few (enough to exercise context takeover).
MSG_SIZES = [
    (16, 0),
    (64, 0),
    (256, 0),
    (1024, 0),
    (4096, 0),
    (8192, 0),
    (16384, 0),
    (32768, 0),
    (65536, 0),
    (131072, 0),
    (8192, 256),
    (16384, 256),
    (32768, 256),
    (65536, 256),
    (131072, 256),
    (131072, 1024),
    (131072, 4096),
    (131072, 32768),
]
SAMPLED_SIZES = [1, 3, 5, 9, 10, 11, 14, 16, 18]


def _datasets() -> list[tuple[str, bytes | str]]:
    """Stand-ins for Autobahn's five corpora (12.1 to 12.5), generated: JSON text, a
    bitmap-like image, German prose sent as binary, HTML text and incompressible bytes."""
    rng = random.Random(7692)
    words = ["Faust", "Gretchen", "Mephistopheles", "über", "Straße", "Nacht", "schön", "Geist"]
    records = [
        {"id": i, "name": rng.choice(words), "score": rng.random(), "tags": rng.sample(words, 3)}
        for i in range(2500)
    ]
    json_text = json.dumps(records, ensure_ascii=False)
    bitmap = bytes((x * y // 7 + rng.randrange(4)) & 0xFF for y in range(256) for x in range(600))
    prose = " ".join(rng.choice(words) for _ in range(30000)).encode()
    html = "".join(
        f'<div class="row r{i % 9}"><span>{rng.choice(words)}</span> µ {i}</div>\n'
        for i in range(3500)
    )
    noise = rng.randbytes(150_000)
    return [
        ("json", json_text),
        ("bitmap", bitmap),
        ("prose", prose),
        ("html", html),
        ("noise", noise),
    ]


DATASETS = _datasets()

# Autobahn's client offers for 13.1 to 13.7 (its PerMessageDeflateOffer always says it
# accepts client_no_context_takeover and client_max_window_bits).
BASE_OFFER = "permessage-deflate; client_no_context_takeover; client_max_window_bits"
OFFERS_13 = [
    BASE_OFFER,
    BASE_OFFER + "; server_no_context_takeover",
    BASE_OFFER + "; server_max_window_bits=9",
    BASE_OFFER + "; server_max_window_bits=15",
    BASE_OFFER + "; server_no_context_takeover; server_max_window_bits=9",
    BASE_OFFER + "; server_no_context_takeover; server_max_window_bits=15",
    ", ".join(
        [
            BASE_OFFER + "; server_no_context_takeover; server_max_window_bits=9",
            BASE_OFFER + "; server_no_context_takeover",
            BASE_OFFER,
        ]
    ),
]


def parse_params(extension: str) -> tuple[str, dict[str, str | None]]:
    name, *params = (p.strip() for p in extension.split(";"))
    parsed: dict[str, str | None] = {}
    for param in params:
        key, eq, value = param.partition("=")
        assert key not in parsed, f"repeated parameter {key}"
        parsed[key.strip()] = value.strip().strip('"') if eq else None
    return name, parsed


def response_fits_offer(response: dict[str, str | None], offer: dict[str, str | None]) -> bool:
    """RFC 7692 7.1: what a server may answer to one offer."""
    known = {
        "server_no_context_takeover",
        "client_no_context_takeover",
        "server_max_window_bits",
        "client_max_window_bits",
    }
    if not set(response) <= known:
        return False
    for key in ("server_no_context_takeover", "client_no_context_takeover"):
        if key in response and response[key] is not None:
            return False
    if "server_no_context_takeover" in offer and "server_no_context_takeover" not in response:
        return False
    for key in ("server_max_window_bits", "client_max_window_bits"):
        if key in response:
            value = response[key]
            if value is None or not value.isdigit() or not 8 <= int(value) <= 15:
                return False
    if "server_max_window_bits" in offer:
        limit = offer["server_max_window_bits"]
        answered = response.get("server_max_window_bits")
        if limit is not None and (answered is None or int(answered) > int(limit)):
            return False
    return not ("client_max_window_bits" in response and "client_max_window_bits" not in offer)


async def deflate_echo(offer: str, payloads: list[bytes], binary: bool, fragment: int) -> None:
    with trio.fail_after(TIMEOUT):
        async with run_server(ws_apps.echo(), websocket_compress=True) as server:
            client = await connect(server, headers=[("Sec-WebSocket-Extensions", offer)])
            answer = client.header("sec-websocket-extensions")
            # Declining is a clean answer too (Autobahn: UNIMPLEMENTED, not FAILED), but
            # every offer Autobahn makes is acceptable and our server is to take it.
            assert answer is not None, f"permessage-deflate declined for {offer!r}"
            assert "," not in answer, answer
            name, response = parse_params(answer)
            assert name == "permessage-deflate"
            offers = [parse_params(o)[1] for o in offer.split(",")]
            assert any(response_fits_offer(response, o) for o in offers), (answer, offer)
            window = response.get("client_max_window_bits")
            server_window = response.get("server_max_window_bits")
            client.deflate = Deflate(
                client_no_context_takeover="client_no_context_takeover" in response,
                server_no_context_takeover="server_no_context_takeover" in response,
                client_max_window_bits=int(window) if window else 15,
                server_max_window_bits=int(server_window) if server_window else 15,
            )
            for payload in payloads:
                await client.send_message(payload, binary=binary, fragment=fragment or None)
                event = await client.event()
                assert event == msg(payload, binary), (event[0], len(event[1]), len(payload))
            await finish_closed_by_me(client, NORMAL)
            await client.stream.aclose()


def messages(data: bytes | str, size: int) -> list[bytes]:
    """Autobahn's walk through its corpus: consecutive slices of ``size``, wrapping around."""
    count = max(2, min(40, 65536 // size))
    doubled = data + data  # type: ignore[operator]  # str + str or bytes + bytes
    out = []
    start = 0
    for _ in range(count):
        piece = doubled[start : start + size]
        out.append(piece.encode() if isinstance(piece, str) else piece)
        start = (start + size) % len(data)
    return out


CASES_12 = [
    pytest.param(j, i, id=f"12.{j}.{i}") for j in range(1, len(DATASETS) + 1) for i in SAMPLED_SIZES
]


@pytest.mark.parametrize(("dataset", "size_index"), CASES_12)
async def test_autobahn_12_deflate_echo(dataset: int, size_index: int) -> None:
    """12.x: Autobahn's default offer; compressed messages of each size echo back intact."""
    _, data = DATASETS[dataset - 1]
    size, fragment = MSG_SIZES[size_index - 1]
    await deflate_echo(
        BASE_OFFER,
        messages(data, size),
        binary=isinstance(data, bytes),
        fragment=fragment,
    )


CASES_13 = [
    pytest.param(j, i, id=f"13.{j}.{i}")
    for j in range(1, len(OFFERS_13) + 1)
    for i in (1, 5, 9, 12, 18)
]


@pytest.mark.parametrize(("offer_index", "size_index"), CASES_13)
async def test_autobahn_13_deflate_parameters(offer_index: int, size_index: int) -> None:
    """13.x: Autobahn's offers with context takeover and window parameters; the answer
    must follow RFC 7692 for one of the offers, and the server must keep to it (its
    messages are inflated with the window it announced, afresh per message under
    server_no_context_takeover)."""
    _, data = DATASETS[0]  # Autobahn uses its JSON corpus for 13.x
    size, fragment = MSG_SIZES[size_index - 1]
    await deflate_echo(OFFERS_13[offer_index - 1], messages(data, size), False, fragment)


# --- NON-STRICT no more: what was valid is handed over before the failure -------------

NON_STRICT_BEFORE = [case_id for case_id, case in ALL_CASES.items() if case.non_strict is not None]


@pytest.mark.parametrize("case_id", NON_STRICT_BEFORE)
async def test_autobahn_case_grades_ok_not_non_strict(case_id: str) -> None:
    """A valid message that arrived in the same read as a bad frame is given to the app,
    and its echo goes out before our Close: Autobahn's strict grade (OK)."""
    case = ALL_CASES[case_id]
    with trio.fail_after(TIMEOUT):
        async with run_server(ws_apps.echo()) as server:
            client = await connect(server)
            try:
                for step in case.steps:
                    try:
                        await perform(client, step)
                    except trio.BrokenResourceError:
                        break
                events, close = await client.events_until_close()
                assert events == list(case.ok)
                await finish_failed_by_server(client, events, close, case.codes)
            finally:
                await client.stream.aclose()

"""The sans-I/O WebSocket core, specified with exact frames and exact close codes.

Client frames are built by hand (``frame``) or by the ``websockets`` library, and what
the server emits is parsed back with ``websockets``' own frame parser, so both directions
are checked against an independent implementation.
"""

from __future__ import annotations

import base64
import os
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from hornbeam_trio.protocol import websocket as ws
from hornbeam_trio.protocol.websocket import (
    CloseReceived,
    DeflateParams,
    HandshakeError,
    ProtocolFailure,
    ServerProtocol,
)

MASK = b"\x37\xfa\x21\x3d"


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length_form: int | None = None,
    mask: bytes = MASK,
) -> bytes:
    """A client frame; ``length_form`` (7, 16 or 64) forces a possibly non-minimal length."""
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    form = length_form or (7 if n < 126 else 16 if n < 65536 else 64)
    mbit = 0x80 if masked else 0
    if form == 7:
        head = bytes((b0, mbit | n))
    elif form == 16:
        head = bytes((b0, mbit | 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, mbit | 127)) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    return head + mask + ws._apply_mask_py(payload, mask)


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


def server_frames(data: bytes, extensions: list[PerMessageDeflate] | None = None) -> list[Frame]:
    """Parse what the server wrote the way a client would (unmasked, extensions applied)."""
    reader = StreamReader()
    reader.feed_data(data)
    frames = []
    while reader.buffer:
        gen = Frame.parse(reader.read_exact, mask=False, extensions=extensions)
        try:
            next(gen)
        except StopIteration as stop:
            frames.append(stop.value)
        else:  # pragma: no cover - would mean a truncated frame
            raise AssertionError("incomplete server frame")
    return frames


def feed(proto: ServerProtocol, data: bytes) -> list[ws.Event]:
    """Everything ``data`` holds, over as many bounded calls as the protocol takes."""
    events = proto.receive_data(data)
    while proto.more:
        events += proto.receive_data(b"")
    return events


def feed_bytewise(proto: ServerProtocol, data: bytes) -> list[ws.Event]:
    events: list[ws.Event] = []
    for i in range(len(data)):
        events += proto.receive_data(data[i : i + 1])
    return events


def close_code_of(out: bytes | bytearray) -> int | None:
    (f,) = server_frames(bytes(out))
    assert f.opcode is Opcode.CLOSE
    return struct.unpack("!H", f.data[:2])[0] if f.data else None


# --------------------------------------------------------------------------- messages

MESSAGE_CASES = [
    pytest.param(frame(1, b"hello"), ["hello"], id="text"),
    pytest.param(frame(2, b"\x00\xff"), [b"\x00\xff"], id="binary"),
    pytest.param(frame(1, b""), [""], id="empty-text"),
    pytest.param(frame(2, b""), [b""], id="empty-binary"),
    pytest.param(frame(1, "κόσμε".encode()), ["κόσμε"], id="utf8-text"),
    pytest.param(frame(2, b"x" * 125), [b"x" * 125], id="7bit-max"),
    pytest.param(frame(2, b"x" * 126), [b"x" * 126], id="16bit-min"),
    pytest.param(frame(2, b"y" * 65535), [b"y" * 65535], id="16bit-max"),
    pytest.param(frame(2, b"z" * 65536), [b"z" * 65536], id="64bit"),
    pytest.param(frame(1, b"abc", length_form=16), ["abc"], id="non-minimal-16"),
    pytest.param(frame(1, b"abc", length_form=64), ["abc"], id="non-minimal-64"),
    pytest.param(
        frame(1, b"ab", fin=False) + frame(0, b"c", fin=False) + frame(0, b"d"),
        ["abcd"],
        id="fragmented-text",
    ),
    pytest.param(
        frame(2, b"ab", fin=False) + frame(0, b"") + frame(1, b"next"),
        [b"ab", "next"],
        id="fragmented-binary-then-text",
    ),
    pytest.param(
        # A 4-byte character split across three fragments is still valid.
        frame(1, b"\xf0\x9f", fin=False) + frame(0, b"\x98", fin=False) + frame(0, b"\x80"),
        ["\U0001f600"],
        id="utf8-split-across-fragments",
    ),
    pytest.param(
        frame(1, b"a", fin=False) + frame(9, b"p") + frame(10, b"q") + frame(0, b"b"),
        ["ab"],
        id="control-between-fragments",
    ),
    pytest.param(frame(10, b"unsolicited") + frame(2, b"x"), [b"x"], id="pong-swallowed"),
    pytest.param(
        b"".join(frame(1, str(i).encode()) for i in range(100)),
        [str(i) for i in range(100)],
        id="many-frames-one-chunk",
    ),
]


@pytest.mark.parametrize(("data", "expected"), MESSAGE_CASES)
def test_messages(data: bytes, expected: list[ws.Event]) -> None:
    assert feed(ServerProtocol(), data) == expected


@pytest.mark.parametrize(("data", "expected"), MESSAGE_CASES)
def test_messages_fed_one_byte_at_a_time(data: bytes, expected: list[ws.Event]) -> None:
    assert feed_bytewise(ServerProtocol(), data) == expected


@given(st.lists(st.integers(min_value=1, max_value=200), min_size=1, max_size=30))
@settings(max_examples=60, deadline=None)
def test_any_chunking_gives_the_same_events(cuts: list[int]) -> None:
    stream = (
        frame(1, "κόσμε".encode() * 30, fin=False)
        + frame(9, b"ping")
        + frame(0, b"tail")
        + frame(2, os.urandom(300), length_form=64)
        + frame(1, b"x" * 200)
    )
    expected = ServerProtocol().receive_data(stream)
    proto = ServerProtocol()
    events: list[ws.Event] = []
    pos = 0
    for cut in cuts:
        events += proto.receive_data(stream[pos : pos + cut])
        pos += cut
    events += proto.receive_data(stream[pos:])
    assert events == expected
    assert len(expected) == 3


def test_partial_frame_is_buffered_until_complete() -> None:
    proto = ServerProtocol()
    data = frame(2, b"q" * 1000)
    assert proto.receive_data(data[:500]) == []
    assert proto.receive_data(data[500:] + frame(1, b"x")[:3]) == [b"q" * 1000]
    assert proto.receive_data(frame(1, b"x")[3:]) == ["x"]


def test_ping_is_answered_with_a_pong_carrying_its_payload() -> None:
    proto = ServerProtocol()
    assert proto.receive_data(frame(9, b"abc") + frame(9, b"")) == []
    pongs = server_frames(bytes(proto.outgoing))
    assert [(f.opcode, f.data) for f in pongs] == [(Opcode.PONG, b"abc"), (Opcode.PONG, b"")]


def test_no_pong_after_our_close() -> None:
    proto = ServerProtocol()
    proto.send_close()
    assert proto.receive_data(frame(9, b"abc")) == []
    assert proto.outgoing == b""


def test_data_after_our_close_is_still_delivered() -> None:
    proto = ServerProtocol()
    proto.send_close(1001)
    assert proto.receive_data(frame(1, b"late")) == ["late"]
    assert not proto.closed


# --------------------------------------------------------------------------- closing

CLOSE_CASES = [
    pytest.param(b"", CloseReceived(1005, ""), 1000, id="no-status-replied-with-1000"),
    pytest.param(close_payload(1000), CloseReceived(1000, ""), 1000, id="normal"),
    pytest.param(close_payload(1001, b"bye"), CloseReceived(1001, "bye"), 1001, id="reason"),
    pytest.param(
        close_payload(4000, "κόσμε".encode()), CloseReceived(4000, "κόσμε"), 4000, id="utf8"
    ),
    *[
        pytest.param(close_payload(c), CloseReceived(c, ""), c, id=f"valid-{c}")
        for c in (1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4999)
    ],
    pytest.param(b"\x03", ProtocolFailure(1002, ""), 1002, id="one-byte-payload"),
    *[
        pytest.param(close_payload(c), ProtocolFailure(1002, ""), 1002, id=f"invalid-{c}")
        for c in (0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535)
    ],
    pytest.param(close_payload(1000, b"\xff"), ProtocolFailure(1007, ""), 1007, id="bad-utf8"),
]


@pytest.mark.parametrize(("payload", "event", "reply_code"), CLOSE_CASES)
def test_close_frames(payload: bytes, event: ws.Event, reply_code: int) -> None:
    proto = ServerProtocol()
    events = proto.receive_data(frame(8, payload) + frame(1, b"ignored"))
    assert len(events) == 1
    if isinstance(event, ProtocolFailure):
        assert isinstance(events[0], ProtocolFailure)
        assert events[0].code == event.code
    else:
        assert events == [event]
        assert proto.close_received
    assert close_code_of(proto.outgoing) == reply_code
    assert proto.close_sent
    assert proto.closed
    assert proto.receive_data(frame(1, b"later")) == []


def test_close_reply_after_our_close_is_not_repeated() -> None:
    proto = ServerProtocol()
    assert ws.encode_close(1000) == proto.send_close(1000)
    assert not proto.closed
    assert proto.receive_data(frame(8, close_payload(1000))) == [CloseReceived(1000, "")]
    assert proto.outgoing == b""
    assert proto.closed
    assert proto.send_close() == b""


def test_close_between_fragments_ends_the_connection() -> None:
    proto = ServerProtocol()
    events = proto.receive_data(frame(1, b"part", fin=False) + frame(8, close_payload(1000)))
    assert events == [CloseReceived(1000, "")]


# --------------------------------------------------------------------------- failures

DEFLATE = DeflateParams()

FAILURE_CASES = [
    pytest.param(frame(1, b"x", masked=False), 1002, None, id="unmasked"),
    pytest.param(frame(1, b"x", rsv=4), 1002, None, id="rsv1-without-deflate"),
    pytest.param(frame(1, b"x", rsv=2), 1002, DEFLATE, id="rsv2"),
    pytest.param(frame(1, b"x", rsv=1), 1002, DEFLATE, id="rsv3"),
    pytest.param(frame(9, b"", rsv=4), 1002, DEFLATE, id="rsv1-on-control"),
    pytest.param(
        frame(1, b"", fin=False, rsv=4) + frame(0, b"", rsv=4),
        1002,
        DEFLATE,
        id="rsv1-on-continuation",
    ),
    *[pytest.param(frame(op, b""), 1002, None, id=f"opcode-{op}") for op in (3, 4, 5, 6, 7)],
    *[pytest.param(frame(op, b""), 1002, None, id=f"opcode-{op}") for op in (11, 12, 13, 14, 15)],
    pytest.param(frame(9, b"", fin=False), 1002, None, id="fragmented-ping"),
    pytest.param(frame(8, b"", fin=False), 1002, None, id="fragmented-close"),
    pytest.param(frame(9, b"x" * 126), 1002, None, id="ping-too-long"),
    pytest.param(frame(10, b"x" * 126), 1002, None, id="pong-too-long"),
    pytest.param(frame(8, b"\x03\xe8" + b"x" * 124), 1002, None, id="close-too-long"),
    pytest.param(frame(0, b"x"), 1002, None, id="continuation-without-message"),
    pytest.param(frame(0, b"x", fin=False), 1002, None, id="unfinished-continuation-first"),
    pytest.param(frame(1, b"a", fin=False) + frame(1, b"b"), 1002, None, id="text-inside-message"),
    pytest.param(
        frame(2, b"a", fin=False) + frame(2, b"b"), 1002, None, id="binary-inside-message"
    ),
    pytest.param(b"\x82\xff" + b"\x80" + b"\x00" * 7, 1002, None, id="64bit-length-msb"),
    pytest.param(frame(1, b"\xff"), 1007, None, id="invalid-utf8"),
    pytest.param(frame(1, b"\xed\xa0\x80"), 1007, None, id="utf8-surrogate"),
    pytest.param(frame(1, b"\xf4\x90\x80\x80"), 1007, None, id="utf8-above-max"),
    pytest.param(frame(1, b"\xc0\xaf"), 1007, None, id="utf8-overlong"),
    pytest.param(
        frame(1, b"ok\xf0\x9f", fin=False) + frame(0, b"\x98"),
        1007,
        None,
        id="utf8-truncated-at-message-end",
    ),
    pytest.param(frame(1, b"ok\xf0\x9f\x98"), 1007, None, id="utf8-truncated-single-frame"),
]


@pytest.mark.parametrize(("data", "code", "deflate"), FAILURE_CASES)
def test_protocol_failures(data: bytes, code: int, deflate: DeflateParams | None) -> None:
    proto = ServerProtocol(deflate=deflate)
    events = proto.receive_data(data + frame(1, b"never parsed"))
    assert len(events) == 1
    assert isinstance(events[0], ProtocolFailure)
    assert events[0].code == code
    assert close_code_of(proto.outgoing) == code
    assert proto.closed and proto.close_sent and not proto.close_received
    assert proto.receive_data(frame(1, b"later")) == []


@pytest.mark.parametrize(("data", "code", "deflate"), FAILURE_CASES)
def test_protocol_failures_byte_at_a_time(
    data: bytes, code: int, deflate: DeflateParams | None
) -> None:
    events = feed_bytewise(ServerProtocol(deflate=deflate), data)
    assert [type(e) for e in events] == [ProtocolFailure]
    assert isinstance(events[0], ProtocolFailure) and events[0].code == code


def test_failure_is_reported_from_the_header_alone() -> None:
    """Bad first bytes fail at once: the peer is not waited on for a payload we will refuse."""
    for head in (b"\x81\x05", b"\x83\x85", b"\x09\x80", b"\x80\x81"):
        events = ServerProtocol().receive_data(head)
        assert [type(e) for e in events] == [ProtocolFailure], head


def test_invalid_utf8_fails_before_the_message_ends() -> None:
    proto = ServerProtocol()
    assert proto.receive_data(frame(1, "κόσμε".encode(), fin=False)) == []
    events = proto.receive_data(frame(0, b"\xf4\x90\x80\x80", fin=False))
    assert events == [ProtocolFailure(1007, "invalid UTF-8")]


def test_invalid_utf8_fails_before_the_frame_ends() -> None:
    """Autobahn 6.4.3/6.4.4: the bad bytes arrive while the frame is still incomplete."""
    proto = ServerProtocol()
    data = frame(1, "κόσμε".encode() + b"\xf4\x90\x80\x80" + b"edited")
    assert proto.receive_data(data[:8]) == []  # header + 2 valid bytes
    assert proto.receive_data(data[8:22]) == [ProtocolFailure(1007, "invalid UTF-8")]


def test_text_streamed_across_partial_frames_reassembles() -> None:
    text = "κόσμε-ü-\U0001f600" * 50
    data = frame(1, text.encode(), fin=False) + frame(0, "tail-κ".encode())
    proto = ServerProtocol()
    events: list[ws.Event] = []
    for i in range(0, len(data), 7):
        events += proto.receive_data(data[i : i + 7])
    assert events == [text + "tail-κ"]


# --------------------------------------------------------------------------- size limits


def test_oversized_frame_fails_as_soon_as_its_length_is_known() -> None:
    proto = ServerProtocol(max_message_size=1000)
    # 16-bit length 1001, no mask and no payload sent yet.
    assert proto.receive_data(b"\x82\xfe\x03\xe9") == [ProtocolFailure(1009, "message too big")]
    assert close_code_of(proto.outgoing) == 1009


def test_oversized_64bit_frame_fails_on_its_header() -> None:
    proto = ServerProtocol()
    events = proto.receive_data(b"\x82\xff" + struct.pack("!Q", 2**40))
    assert events == [ProtocolFailure(1009, "message too big")]


def test_frame_at_the_limit_is_accepted() -> None:
    proto = ServerProtocol(max_message_size=1000)
    assert proto.receive_data(frame(2, b"a" * 1000)) == [b"a" * 1000]
    small = ServerProtocol(max_message_size=3)
    assert small.receive_data(frame(1, b"abc")) == ["abc"]
    assert small.receive_data(frame(1, b"abcd")) == [ProtocolFailure(1009, "message too big")]


def test_fragmented_total_over_the_limit_fails() -> None:
    # Each fragment is charged its payload plus FRAGMENT_OVERHEAD.
    proto = ServerProtocol(max_message_size=10 + 2 * ws.FRAGMENT_OVERHEAD)
    assert proto.receive_data(frame(2, b"a" * 6, fin=False)) == []
    assert proto.receive_data(frame(9, b"control frames do not count")) == []
    assert proto.receive_data(frame(0, b"b" * 4, fin=False)) == []
    # Fails on the header of the fragment that would cross the limit.
    assert proto.receive_data(frame(0, b"c")[:2]) == [ProtocolFailure(1009, "message too big")]


def test_limit_applies_per_message() -> None:
    proto = ServerProtocol(max_message_size=10 + ws.FRAGMENT_OVERHEAD)
    for _ in range(3):
        assert proto.receive_data(frame(2, b"a" * 6, fin=False) + frame(0, b"b" * 4)) == [
            b"a" * 6 + b"b" * 4
        ]


# --------------------------------------------------------------------------- deflate


def client_pmd(params: DeflateParams) -> PerMessageDeflate:
    """websockets' client-side extension matching what the server negotiated."""
    return PerMessageDeflate(
        remote_no_context_takeover=params.server_no_context_takeover,
        local_no_context_takeover=params.client_no_context_takeover,
        remote_max_window_bits=params.server_max_window_bits,
        local_max_window_bits=max(params.client_max_window_bits, 9),
    )


def client_message(pmd: PerMessageDeflate, data: str | bytes, fragments: int = 1) -> bytes:
    """A message compressed and masked by websockets, optionally split into fragments."""
    raw = data.encode() if isinstance(data, str) else data
    opcode = Opcode.TEXT if isinstance(data, str) else Opcode.BINARY
    step = max(1, -(-len(raw) // fragments))
    chunks = [raw[i : i + step] for i in range(0, len(raw), step)] or [b""]
    out = b""
    for i, chunk in enumerate(chunks):
        f = Frame(opcode if i == 0 else Opcode.CONT, chunk, fin=i == len(chunks) - 1)
        out += f.serialize(mask=True, extensions=[pmd])
    return out


DEFLATE_VARIANTS = [
    pytest.param(DeflateParams(), id="default"),
    pytest.param(DeflateParams(server_no_context_takeover=True), id="server-nct"),
    pytest.param(DeflateParams(client_no_context_takeover=True), id="client-nct"),
    pytest.param(DeflateParams(True, True, 9, 9), id="both-nct-9bits"),
    pytest.param(DeflateParams(server_max_window_bits=8, client_max_window_bits=8), id="8bits"),
    pytest.param(DeflateParams(server_max_window_bits=12, client_max_window_bits=10), id="12-10"),
]

MESSAGES: list[str | bytes] = [
    "hello " * 50,
    "",
    b"\x00" * 3000,
    os.urandom(2000),
    "κόσμε " * 400,
    "hello " * 50,  # repeats: exercises context takeover
    b"tiny",
]


@pytest.mark.parametrize("params", DEFLATE_VARIANTS)
@pytest.mark.parametrize("fragments", [1, 3])
def test_deflate_receives_what_websockets_compresses(params: DeflateParams, fragments: int) -> None:
    proto = ServerProtocol(deflate=params)
    pmd = client_pmd(params)
    stream = b"".join(client_message(pmd, m, fragments) for m in MESSAGES)
    assert proto.receive_data(stream) == MESSAGES
    # The same stream fed byte by byte to a fresh connection.
    assert feed_bytewise(ServerProtocol(deflate=params), stream) == MESSAGES


@pytest.mark.parametrize("params", DEFLATE_VARIANTS)
def test_deflate_sends_what_websockets_decompresses(params: DeflateParams) -> None:
    proto = ServerProtocol(deflate=params)
    out = b"".join(proto.send_message(m) for m in MESSAGES)
    frames = server_frames(out, extensions=[client_pmd(params)])
    got = [bytes(f.data).decode() if f.opcode is Opcode.TEXT else f.data for f in frames]
    assert got == MESSAGES


def test_deflate_sets_rsv1_and_uses_context_takeover() -> None:
    proto = ServerProtocol(deflate=DeflateParams())
    first = proto.send_message("repeat me " * 20)
    second = proto.send_message("repeat me " * 20)
    assert first[0] == 0xC1 and second[0] == 0xC1  # FIN | RSV1 | TEXT
    assert len(second) < len(first)
    fresh = ServerProtocol(deflate=DeflateParams(server_no_context_takeover=True))
    a, b = fresh.send_message("repeat me " * 20), fresh.send_message("repeat me " * 20)
    assert a == b


def test_uncompressed_message_is_accepted_when_deflate_is_negotiated() -> None:
    proto = ServerProtocol(deflate=DeflateParams())
    assert proto.receive_data(frame(1, b"plain") + frame(2, b"raw")) == ["plain", b"raw"]


def test_decompression_bomb_is_refused_with_1009() -> None:
    bomb = zlib.compressobj(wbits=-15)
    payload = bomb.compress(b"\x00" * 10_000_000) + bomb.flush(zlib.Z_SYNC_FLUSH)
    proto = ServerProtocol(max_message_size=1_000_000, deflate=DeflateParams())
    data = frame(2, payload[:-4], rsv=4)
    assert len(data) < 20_000
    # Refused once the 1 MB limit is passed, over as many bounded calls as that takes.
    assert feed(proto, data) == [ProtocolFailure(1009, "message too big")]


def test_decompressed_size_limit_counts_across_fragments() -> None:
    params = DeflateParams()
    pmd = client_pmd(params)
    proto = ServerProtocol(max_message_size=1000, deflate=params)
    events = proto.receive_data(client_message(pmd, b"\x00" * 1001, fragments=4))
    assert events == [ProtocolFailure(1009, "message too big")]
    ok = ServerProtocol(max_message_size=1000, deflate=params)
    assert ok.receive_data(client_message(client_pmd(params), b"\x00" * 1000, 4)) == [
        b"\x00" * 1000
    ]


def test_corrupt_compressed_data_fails_with_1007() -> None:
    proto = ServerProtocol(deflate=DeflateParams())
    events = proto.receive_data(frame(2, b"\xff\xff\xff\xff", rsv=4))
    assert events == [ProtocolFailure(1007, "invalid compressed data")]


def test_compressed_text_must_be_utf8() -> None:
    c = zlib.compressobj(wbits=-15)
    payload = (c.compress(b"ok\xff") + c.flush(zlib.Z_SYNC_FLUSH))[:-4]
    proto = ServerProtocol(deflate=DeflateParams())
    assert proto.receive_data(frame(1, payload, rsv=4)) == [ProtocolFailure(1007, "invalid UTF-8")]


def test_compressed_text_fails_fast_on_first_bad_fragment() -> None:
    c = zlib.compressobj(wbits=-15)
    first = c.compress(b"\xff" * 10) + c.flush(zlib.Z_SYNC_FLUSH)
    proto = ServerProtocol(deflate=DeflateParams())
    assert proto.receive_data(frame(1, first, fin=False, rsv=4)) == [
        ProtocolFailure(1007, "invalid UTF-8")
    ]


# --------------------------------------------------------------------------- sending


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_encoders_produce_frames_websockets_parses(size: int) -> None:
    data = os.urandom(size)
    text = "é" * (size // 2)
    (b,) = server_frames(ws.encode_binary(data))
    assert (b.opcode, b.data, b.fin, b.rsv1) == (Opcode.BINARY, data, True, False)
    (t,) = server_frames(ws.encode_text(text))
    assert (t.opcode, bytes(t.data).decode()) == (Opcode.TEXT, text)
    (f,) = server_frames(ws.encode_frame(ws.OP_BINARY, data, fin=False))
    assert (f.opcode, f.data, f.fin) == (Opcode.BINARY, data, False)
    proto = ServerProtocol()
    assert proto.send_message(text) == ws.encode_text(text)
    assert proto.send_message(data) == ws.encode_binary(data)


def test_encode_frame_sets_rsv1_only_when_asked() -> None:
    assert ws.encode_frame(ws.OP_TEXT, b"a", rsv1=True)[0] == 0xC1
    assert ws.encode_frame(ws.OP_CONT, b"a", fin=False)[0] == 0x00


@pytest.mark.parametrize(
    ("code", "reason", "expected"),
    [
        (None, "", b"\x88\x00"),
        (1005, "", b"\x88\x00"),
        (1000, "", b"\x88\x02\x03\xe8"),
        (4001, "bye", b"\x88\x05\x0f\xa1bye"),
    ],
)
def test_encode_close(code: int | None, reason: str, expected: bytes) -> None:
    assert ws.encode_close(code, reason) == expected


def test_encode_close_truncates_reason_on_a_character_boundary() -> None:
    out = ws.encode_close(1000, "é" * 100)  # 200 bytes of UTF-8
    assert len(out) == 2 + 2 + 122  # 61 whole two-byte characters fit in 123 bytes
    (f,) = server_frames(out)
    assert bytes(f.data[2:]).decode() == "é" * 61


@pytest.mark.parametrize("code", [999, 1006, 1015, 5000])
def test_encode_close_refuses_codes_that_must_not_be_sent(code: int) -> None:
    with pytest.raises(ValueError):
        ws.encode_close(code)


def test_send_side_state() -> None:
    proto = ServerProtocol()
    (p,) = server_frames(proto.send_ping(b"hb"))
    assert (p.opcode, p.data) == (Opcode.PING, b"hb")
    with pytest.raises(ValueError):
        proto.send_ping(b"x" * 126)
    with pytest.raises(ValueError):
        proto.send_close(1006)
    assert not proto.close_sent
    assert close_code_of(proto.send_close(1001, "going")) == 1001
    assert proto.close_sent and not proto.closed
    assert proto.send_close() == b""
    assert proto.send_message("after close") == b""


def test_pure_python_mask_matches_the_c_helper() -> None:
    for n in (0, 1, 3, 4, 5, 1000, 4097):
        data = os.urandom(n)
        assert ws._apply_mask_py(data, MASK) == ws._apply_mask(data, MASK)
        assert ws._apply_mask_py(ws._apply_mask_py(data, MASK), MASK) == data


# --------------------------------------------------------------------------- fuzzing


def _check_events(events: list[ws.Event], proto: ServerProtocol) -> None:
    for i, e in enumerate(events):
        assert isinstance(e, str | bytes | CloseReceived | ProtocolFailure)
        if isinstance(e, CloseReceived | ProtocolFailure):
            assert i == len(events) - 1  # nothing after the end
            assert proto.closed or isinstance(e, CloseReceived)


@given(st.lists(st.binary(max_size=300), max_size=8), st.booleans())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_bytes_never_raise(chunks: list[bytes], compressed: bool) -> None:
    proto = ServerProtocol(max_message_size=4096, deflate=DEFLATE if compressed else None)
    events: list[ws.Event] = []
    for chunk in chunks:
        events += proto.receive_data(chunk)
    _check_events(events, proto)


VALID_STREAM = (
    frame(1, "κόσμε".encode(), fin=False)
    + frame(9, b"ping")
    + frame(0, b"end")
    + frame(2, b"b" * 130)
    + frame(10, b"")
    + frame(8, close_payload(1000, b"bye"))
)


@given(
    st.lists(
        st.tuples(st.integers(0, len(VALID_STREAM) - 1), st.integers(0, 255)),
        min_size=1,
        max_size=6,
    ),
    st.integers(1, 64),
)
@settings(max_examples=300, deadline=None)
def test_mutated_frames_end_in_events_or_a_failure(
    mutations: list[tuple[int, int]], chunk: int
) -> None:
    data = bytearray(VALID_STREAM)
    for index, value in mutations:
        data[index] = value
    proto = ServerProtocol(max_message_size=4096)
    events: list[ws.Event] = []
    for i in range(0, len(data), chunk):
        events += proto.receive_data(bytes(data[i : i + chunk]))
    _check_events(events, proto)
    if events and isinstance(events[-1], CloseReceived | ProtocolFailure):
        # Whatever ended the connection, our close frame is the last thing to write.
        assert server_frames(bytes(proto.outgoing))[-1].opcode is Opcode.CLOSE


# --------------------------------------------------------------------------- handshake

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
GOOD_HEADERS = [
    (b"host", b"example.com"),
    (b"upgrade", b"websocket"),
    (b"connection", b"keep-alive, Upgrade"),
    (b"sec-websocket-key", KEY),
    (b"sec-websocket-version", b"13"),
]


def _without(name: bytes) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in GOOD_HEADERS if k != name]


def _replace(name: bytes, value: bytes) -> list[tuple[bytes, bytes]]:
    return [*_without(name), (name, value)]


def test_check_handshake_returns_the_key() -> None:
    assert ws.check_handshake("GET", GOOD_HEADERS) == KEY
    assert ws.check_handshake("GET", _replace(b"upgrade", b"WebSocket")) == KEY


@pytest.mark.parametrize(
    ("method", "headers", "status"),
    [
        pytest.param("POST", GOOD_HEADERS, 400, id="not-get"),
        pytest.param("GET", _without(b"upgrade"), 400, id="no-upgrade"),
        pytest.param("GET", _replace(b"upgrade", b"h2c"), 400, id="wrong-upgrade"),
        pytest.param("GET", _without(b"connection"), 400, id="no-connection"),
        pytest.param("GET", _replace(b"connection", b"close"), 400, id="connection-close"),
        pytest.param("GET", _without(b"sec-websocket-key"), 400, id="no-key"),
        pytest.param("GET", _replace(b"sec-websocket-key", b"short"), 400, id="bad-key"),
        pytest.param(
            "GET",
            _replace(b"sec-websocket-key", base64.b64encode(b"x" * 15)),
            400,
            id="key-15-bytes",
        ),
        pytest.param("GET", [*GOOD_HEADERS, (b"sec-websocket-key", KEY)], 400, id="two-keys"),
        pytest.param("GET", _without(b"sec-websocket-version"), 426, id="no-version"),
        pytest.param("GET", _replace(b"sec-websocket-version", b"8"), 426, id="version-8"),
    ],
)
def test_check_handshake_rejects(
    method: str, headers: list[tuple[bytes, bytes]], status: int
) -> None:
    with pytest.raises(HandshakeError) as info:
        ws.check_handshake(method, headers)
    assert info.value.status == status
    assert info.value.reason
    if status == 426:
        assert info.value.headers == [(b"sec-websocket-version", b"13")]
    else:
        assert info.value.headers == []


def test_parse_subprotocols_joins_repeated_headers_in_order() -> None:
    headers = [
        (b"sec-websocket-protocol", b"graphql-ws, json"),
        (b"host", b"x"),
        (b"sec-websocket-protocol", b" chat ,"),
    ]
    assert ws.parse_subprotocols(headers) == ["graphql-ws", "json", "chat"]
    assert ws.parse_subprotocols([]) == []


def test_accept_response_matches_rfc_example() -> None:
    head = ws.accept_response(
        KEY, subprotocol="chat", extensions=b"permessage-deflate", extra_headers=[(b"x-a", b"1")]
    )
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert head.endswith(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")[1:]
    assert lines == [
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",  # RFC 6455 section 1.3
        b"Sec-WebSocket-Protocol: chat",
        b"Sec-WebSocket-Extensions: permessage-deflate",
        b"x-a: 1",
    ]


def test_accept_response_refuses_header_injection() -> None:
    with pytest.raises(ValueError):
        ws.accept_response(KEY, extra_headers=[(b"x", b"1\r\nSet-Cookie: a=b")])
    with pytest.raises(ValueError):
        ws.accept_response(KEY, subprotocol="chat\r\nx: y")


def _ext(*values: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"sec-websocket-extensions", v) for v in values]


@pytest.mark.parametrize(
    ("headers", "params", "response"),
    [
        pytest.param([], None, None, id="not-offered"),
        pytest.param(_ext(b"x-webkit-deflate-frame"), None, None, id="other-extension"),
        pytest.param(
            _ext(b"permessage-deflate"), DeflateParams(), b"permessage-deflate", id="plain"
        ),
        pytest.param(
            _ext(b"permessage-deflate; client_max_window_bits"),
            DeflateParams(),
            b"permessage-deflate",
            id="client-bits-without-value",
        ),
        pytest.param(
            _ext(b"permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
            DeflateParams(True, True),
            b"permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            id="no-context-takeover",
        ),
        pytest.param(
            _ext(b"permessage-deflate; server_max_window_bits=10; client_max_window_bits=8"),
            DeflateParams(server_max_window_bits=10, client_max_window_bits=8),
            b"permessage-deflate; server_max_window_bits=10; client_max_window_bits=8",
            id="window-bits",
        ),
        pytest.param(
            _ext(b"permessage-deflate; server_max_window_bits=8"),
            DeflateParams(server_max_window_bits=8),
            b"permessage-deflate; server_max_window_bits=8",
            id="server-8-bits",
        ),
        pytest.param(
            _ext(b"permessage-deflate; server_max_window_bits=16, permessage-deflate"),
            DeflateParams(),
            b"permessage-deflate",
            id="bad-offer-falls-back-to-next",
        ),
        pytest.param(
            _ext(b"x-foo", b"permessage-deflate; server_no_context_takeover"),
            DeflateParams(server_no_context_takeover=True),
            b"permessage-deflate; server_no_context_takeover",
            id="across-repeated-headers",
        ),
        pytest.param(_ext(b"permessage-deflate; unknown=1"), None, None, id="unknown-param"),
        pytest.param(
            _ext(b"permessage-deflate; server_no_context_takeover; server_no_context_takeover"),
            None,
            None,
            id="duplicate-param",
        ),
        pytest.param(
            _ext(b"permessage-deflate; server_max_window_bits"),
            None,
            None,
            id="server-bits-without-value",
        ),
        pytest.param(
            _ext(b"permessage-deflate; server_no_context_takeover=1"),
            None,
            None,
            id="flag-with-value",
        ),
        pytest.param(_ext(b"permessage-deflate; ;;"), None, None, id="malformed-header"),
    ],
)
def test_negotiate_deflate(
    headers: list[tuple[bytes, bytes]], params: DeflateParams | None, response: bytes | None
) -> None:
    assert ws.negotiate_deflate(headers, True) == (params, response)


def test_negotiate_deflate_disabled() -> None:
    assert ws.negotiate_deflate(_ext(b"permessage-deflate"), False) == (None, None)


# --------------------------------------------------------------------------- interop


def test_full_session_with_the_websockets_client() -> None:
    """websockets' sans-I/O client: handshake with its default deflate offer, messages, close."""
    from websockets.client import ClientProtocol
    from websockets.extensions.permessage_deflate import enable_client_permessage_deflate
    from websockets.uri import parse_uri

    client = ClientProtocol(
        parse_uri("ws://example.com/chat"), extensions=enable_client_permessage_deflate(None)
    )
    client.send_request(client.connect())
    request = b"".join(client.data_to_send())
    head_lines = request.split(b"\r\n\r\n")[0].split(b"\r\n")
    method = head_lines[0].split(b" ")[0].decode()
    headers = [
        (k.strip().lower(), v.strip()) for k, v in (line.split(b":", 1) for line in head_lines[1:])
    ]
    key = ws.check_handshake(method, headers)
    params, extensions = ws.negotiate_deflate(headers, True)
    assert params is not None and extensions is not None
    client.receive_data(ws.accept_response(key, extensions=extensions))
    assert client.handshake_exc is None
    client.events_received()  # the handshake response

    server = ServerProtocol(deflate=params)
    for message in ("hello " * 40, b"\x00\x01" * 300, "κόσμε"):
        if isinstance(message, str):
            client.send_text(message.encode())
        else:
            client.send_binary(message)
        assert server.receive_data(b"".join(client.data_to_send())) == [message]
        client.receive_data(server.send_message(message))
        (echo,) = client.events_received()
        assert isinstance(echo, Frame) and echo.rsv1 is False  # decoded by the extension
        assert (bytes(echo.data).decode() if echo.opcode is Opcode.TEXT else echo.data) == message

    client.send_ping(b"are you there")
    assert server.receive_data(b"".join(client.data_to_send())) == []
    client.receive_data(bytes(server.outgoing))
    server.outgoing.clear()
    (pong,) = client.events_received()
    assert isinstance(pong, Frame)
    assert (pong.opcode, pong.data) == (Opcode.PONG, b"are you there")

    client.send_close(1000, "done")
    assert server.receive_data(b"".join(client.data_to_send())) == [CloseReceived(1000, "done")]
    client.receive_data(bytes(server.outgoing))
    assert client.close_rcvd is not None and client.close_rcvd.code == 1000
    assert server.closed


# --------------------------------------------------------------------------- memory bounds


def test_one_byte_fragments_are_kept_in_one_buffer_not_one_object_each() -> None:
    import tracemalloc

    for opcode in (1, 2):
        proto = ServerProtocol()
        data = frame(opcode, b"a", fin=False) + frame(0, b"b", fin=False) * 20_000
        tracemalloc.start()
        assert feed(proto, data) == []
        held, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert held < 100_000, held  # a bytearray of 20 KB, not 20,000 objects
        (message,) = proto.receive_data(frame(0, b"c"))
        assert message == ("a" if opcode == 1 else b"a") + (
            "b" * 20_000 + "c" if opcode == 1 else b"b" * 20_000 + b"c"
        )


def test_a_read_of_thousands_of_tiny_frames_is_parsed_a_bounded_number_per_call() -> None:
    """One 64 KiB read of pings or one-byte fragments is ~9,000 frames: parsed in one
    call that is ~7 ms in which no other connection runs.  Each call parses at most
    FRAMES_PER_CALL of them and says ``more``; together the calls give what one would."""
    data = frame(1, b"a", fin=False) + frame(0, b"b", fin=False) * 9_000 + frame(0, b"c")
    data += frame(9, b"p") * 600 + frame(2, b"done")
    proto = ServerProtocol()
    got = proto.receive_data(data)
    calls = 1
    while proto.more:
        got += proto.receive_data(b"")
        calls += 1
    total_frames = 1 + 9_000 + 1 + 600 + 1
    assert calls == -(-total_frames // ws.FRAMES_PER_CALL)
    assert got == ["a" + "b" * 9_000 + "c", b"done"]
    assert bytes(proto.outgoing) == b"\x8a\x01p" * 600  # each ping its pong


def test_a_message_of_large_and_small_fragments_is_whole_and_in_order() -> None:
    """Fragments large and small, plain and compressed, make the same message, text split
    inside a multi-byte character included."""
    text = ("é" * 50_000).encode()  # 100,000 bytes, two per character
    pieces = [text[:70_001], text[70_001:70_011], text[70_011:]]  # cuts inside characters
    data = frame(1, pieces[0], fin=False) + frame(0, pieces[1], fin=False)
    data += frame(0, pieces[2])
    assert feed(ServerProtocol(), data) == ["é" * 50_000]
    binary = bytes(range(256)) * 1024  # 256 KiB
    data = frame(2, binary[:10], fin=False) + frame(0, binary[10:200_000], fin=False)
    data += frame(0, binary[200_000:200_005], fin=False) + frame(0, binary[200_005:])
    proto = ServerProtocol()
    assert feed(proto, data) == [binary]
    assert feed(proto, frame(2, b"next")) == [b"next"]  # nothing of the last one left over
    params = DeflateParams()
    assert feed(
        ServerProtocol(deflate=params), client_message(client_pmd(params), binary, 3)
    ) == [binary]


def test_a_control_frame_held_in_part_is_not_a_frame_being_received() -> None:
    """The frame deadline is for data frames arriving slowly; a ping cut by a read boundary
    must not start (or, ping after ping, renew) it, or a ping flood never idles out."""
    proto = ServerProtocol()
    ping = frame(9, b"p" * 125)
    proto.receive_data(ping + ping[:50])
    assert not proto.receiving_frame
    proto.receive_data(ping[50:] + frame(1, b"x" * 300)[:100])
    assert proto.receiving_frame  # a data frame in part: its deadline runs
    proto = ServerProtocol()
    proto.receive_data((ping * 300) + frame(1, b"x" * 300)[:100])  # past the bound
    assert proto.more and not proto.receiving_frame  # what is held whole starts with pings


def test_tiny_fragments_are_charged_a_per_frame_overhead_against_the_limit() -> None:
    proto = ServerProtocol(max_message_size=1000)
    data = frame(2, b"x", fin=False) + frame(0, b"y", fin=False) * 998 + frame(0, b"z")
    # 1,000 payload bytes would fit; 1,000 frames of overhead do not.
    assert feed(proto, data) == [ProtocolFailure(1009, "message too big")]
    fits = ServerProtocol(max_message_size=1000)
    assert fits.receive_data(frame(2, b"x" * 400, fin=False) + frame(0, b"y" * 400)) == [
        b"x" * 400 + b"y" * 400
    ]


def test_a_burst_of_deflate_bombs_is_inflated_one_bound_per_call() -> None:
    size = 4 * 1024 * 1024
    z = zlib.compressobj(wbits=-15)
    bomb = z.compress(b"\0" * size) + z.flush(zlib.Z_SYNC_FLUSH)
    proto = ServerProtocol(deflate=ws.DeflateParams(), max_inflate_per_call=1024 * 1024)
    events = proto.receive_data(frame(2, bomb[:-4], rsv=4) * 4)
    calls = 1
    got: list[ws.Event] = list(events)
    while proto.more:
        events = proto.receive_data(b"")
        calls += 1
        assert len(events) <= 1  # never two bombs decoded in one call
        got += events
    assert got == [b"\0" * size] * 4
    assert calls >= 16  # 16 MiB inflated 1 MiB at a time


def test_a_partial_text_frame_is_held_once_as_received_not_also_decoded() -> None:
    import tracemalloc

    proto = ServerProtocol()
    data = frame(1, b"t" * (4 * 1024 * 1024))
    tracemalloc.start()
    assert proto.receive_data(data[:-1]) == []
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert held < 6 * 1024 * 1024, held  # the raw frame (4 MiB), no decoded copy beside it
    assert proto.receive_data(data[-1:]) == ["t" * (4 * 1024 * 1024)]


def test_pings_while_earlier_output_waits_leave_only_the_latest_pong() -> None:
    proto = ServerProtocol()
    proto.hold_pongs = True
    assert proto.receive_data(frame(9, b"one") + frame(9, b"two")) == []
    assert proto.outgoing == b""
    assert proto.pong is not None
    assert [(f.opcode, f.data) for f in server_frames(proto.pong)] == [(Opcode.PONG, b"two")]


def test_only_complete_frames_other_than_pings_are_activity() -> None:
    proto = ServerProtocol()
    proto.receive_data(frame(9, b"ping"))
    assert not proto.active and not proto.receiving_frame
    proto.receive_data(frame(10, b"pong")[:3])
    assert not proto.active and not proto.receiving_frame  # a control frame: no deadline
    proto.receive_data(frame(10, b"pong")[3:])
    assert proto.active and not proto.receiving_frame
    proto.receive_data(frame(2, b"data")[:3])
    assert not proto.active and proto.receiving_frame


def test_a_deferred_failure_close_leaves_earlier_output_and_lets_answers_out_first() -> None:
    """The connection holds a failure's Close until its app answered the valid message
    that came before the bad frame (Autobahn's strict grade); the protocol takes the
    Close back out of ``outgoing`` and sends it when asked."""
    proto = ServerProtocol()
    data = frame(ws.OP_PING, b"p") + frame(ws.OP_TEXT, b"ok") + frame(ws.OP_TEXT, b"x", rsv=4)
    events = proto.receive_data(data)
    assert events[0] == "ok" and isinstance(events[-1], ProtocolFailure)
    failure = events[-1]
    pong = ws.encode_frame(ws.OP_PONG, b"p")
    assert bytes(proto.outgoing) == pong + ws.encode_close(failure.code, failure.reason)
    proto.defer_failure_close(failure)
    assert bytes(proto.outgoing) == pong  # the pong stays; the Close is taken back
    assert proto.send_message("answer") != b""  # the app's answer may still go
    assert proto.send_close(failure.code, failure.reason) == ws.encode_close(
        failure.code, failure.reason
    )
    assert proto.closed and proto.receive_data(frame(ws.OP_TEXT, b"late")) == []


def test_extended_connect_needs_only_version_13() -> None:
    """RFC 8441 5: no Upgrade, Connection or key; a wrong version is 426 as in 4.2.2."""
    ws.check_extended_connect([(b"sec-websocket-version", b"13")])
    for headers in ([], [(b"sec-websocket-version", b"8")]):
        with pytest.raises(ws.HandshakeError) as info:
            ws.check_extended_connect(headers)
        assert info.value.status == 426
        assert info.value.headers == [(b"sec-websocket-version", b"13")]


def test_http2_accept_headers_are_checked_like_the_101() -> None:
    assert ws.accept_headers(
        subprotocol="chat", extensions=b"permessage-deflate", extra_headers=[(b"x-a", b"1")]
    ) == [
        (b"sec-websocket-protocol", b"chat"),
        (b"sec-websocket-extensions", b"permessage-deflate"),
        (b"x-a", b"1"),
    ]
    for bad in ([(b"content-length", b"0")], [(b"x", b"a\r\nb")], [(b"bad name", b"v")]):
        with pytest.raises(ValueError):
            ws.accept_headers(extra_headers=bad)

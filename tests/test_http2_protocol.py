"""The sans-I/O HTTP/2 core (hornbeam_trio/protocol/http2.py) against h2's own client,
bytes in and out, no sockets: limits, the request's ASGI view, response headers,
flow control and the graceful GOAWAY."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest
from hpack import Encoder
from hyperframe.frame import Frame, GoAwayFrame, WindowUpdateFrame
from hypothesis import HealthCheck, given, settings
from hypothesis import event as outcome
from hypothesis import strategies as st

from hornbeam_trio.protocol import http2
from hornbeam_trio.protocol.http2 import H2Protocol

REQUEST = [(":method", "GET"), (":path", "/a%20b?x=1"), (":scheme", "http"), (":authority", "h")]


def pair(**limits: int | None) -> tuple[H2Protocol, h2.connection.H2Connection]:
    """A server core and an h2 client, past the preface and both SETTINGS."""
    server = H2Protocol(**limits)  # type: ignore[arg-type]
    server.initiate()
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    server.receive_data(client.data_to_send())  # its SETTINGS (the window may open)
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())  # the client's SETTINGS ACK
    return server, client


def frames(data: bytes) -> list[Frame]:
    out = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        out.append(frame)
        data = data[9 + length :]
    return out


def test_request_view_has_no_pseudo_headers_and_host_from_authority() -> None:
    server, client = pair()
    client.send_headers(1, [*REQUEST, ("x-a", "b")], end_stream=True)
    [event] = server.receive_data(client.data_to_send())
    assert event == http2.RequestReceived(
        stream_id=1,
        method="GET",
        raw_path=b"/a%20b",
        path="/a b",
        query_string=b"x=1",
        headers=[(b"host", b"h"), (b"x-a", b"b")],
        end_stream=True,
    )


@pytest.mark.parametrize(
    ("limits", "headers", "status"),
    [
        ({"max_request_line_size": 10}, [("x", "y")], 414),
        ({"max_header_size": 20}, [("x-long", "v" * 30)], 431),
        ({"max_headers": 2}, [("a", "1"), ("b", "2"), ("c", "3")], 431),
        ({"max_body_size": 5}, [("content-length", "6")], 413),
    ],
)
def test_request_over_a_limit_is_rejected_with_the_http11_status(
    limits: dict[str, int], headers: list[tuple[str, str]], status: int
) -> None:
    server, client = pair(**limits)
    request = [(n, v) for n, v in REQUEST if n != ":path"] + [(":path", "/" + "p" * 20)]
    if "max_request_line_size" not in limits:
        request = REQUEST
    client.send_headers(1, request + headers, end_stream=True)
    [event] = server.receive_data(client.data_to_send())
    assert isinstance(event, http2.RequestRejected)
    assert event.status == status


def test_body_over_the_limit_without_content_length_is_413_as_it_arrives() -> None:
    server, client = pair(max_body_size=5)
    client.send_headers(1, REQUEST)
    client.send_data(1, b"abc")
    events = server.receive_data(client.data_to_send())
    assert isinstance(events[-1], http2.BodyReceived)
    client.send_data(1, b"def")
    [event] = server.receive_data(client.data_to_send())
    assert event == http2.RequestRejected(1, 413, "request body too large")


def test_response_block_drops_connection_specific_headers_and_lowercases() -> None:
    block = http2.response_block(
        200, [(b"Content-Type", b"text/plain"), (b"Connection", b"close"), (b"TE", b"gzip")]
    )
    assert block == [(b":status", b"200"), (b"content-type", b"text/plain")]
    with pytest.raises(ValueError):
        http2.response_block(200, [(b"x", b"a\r\nb")])


def test_body_goes_only_as_far_as_the_peers_window() -> None:
    server, client = pair()
    client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 10})
    client.send_headers(1, REQUEST, end_stream=True)
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())  # our SETTINGS ACK
    server.send_headers(1, http2.response_block(200, []))
    assert server.sendable(1, 100) == 10
    server.send_data(1, b"x" * 10)
    assert server.sendable(1, 90) == 0
    client.receive_data(server.data_to_send())
    client.increment_flow_control_window(5, stream_id=1)
    [event] = server.receive_data(client.data_to_send())
    assert event == http2.WindowOpened(1)
    assert server.sendable(1, 90) == 5


def test_received_body_is_given_back_only_when_acknowledged() -> None:
    server, client = pair()
    client.send_headers(1, REQUEST)
    events = []
    for _ in range(3):  # 48 KiB: past half the stream window, where h2 gives it back
        client.send_data(1, b"x" * 16384)
        events += server.receive_data(client.data_to_send())
    updates = [f for f in frames(server.data_to_send()) if isinstance(f, WindowUpdateFrame)]
    assert updates == []  # the app has read nothing yet
    for event in events:
        if isinstance(event, http2.BodyReceived):
            server.acknowledge(1, event.flow_length)
    updates = [f for f in frames(server.data_to_send()) if isinstance(f, WindowUpdateFrame)]
    # The stream's window reopens; the connection's is large enough not to need it yet.
    assert [f.stream_id for f in updates] == [1]


def test_connection_window_covers_every_stream_window() -> None:
    """One stream's unread body can never hold up another (the module's invariant)."""
    _, client = pair(max_concurrent_streams=10)
    assert client.outbound_flow_control_window == 10 * http2.STREAM_WINDOW


def test_graceful_goaway_keeps_streams_in_flight_able_to_answer() -> None:
    server, client = pair()
    client.send_headers(1, REQUEST, end_stream=True)
    server.receive_data(client.data_to_send())
    server.go_away()
    [goaway] = [f for f in frames(server.data_to_send()) if isinstance(f, GoAwayFrame)]
    assert (goaway.last_stream_id, goaway.error_code) == (1, 0)
    # A stream opened after the GOAWAY is refused, never reported.
    client.send_headers(3, REQUEST, end_stream=True)
    assert server.receive_data(client.data_to_send()) == []
    server.send_headers(1, http2.response_block(200, []))
    server.send_data(1, b"done", end_stream=True)
    sent = frames(server.data_to_send())
    assert any(f.stream_id == 3 and type(f).__name__ == "RstStreamFrame" for f in sent)
    assert any(f.stream_id == 1 and "END_STREAM" in f.flags for f in sent)


def test_protocol_violation_raises_and_queues_goaway() -> None:
    server, _ = pair()
    with pytest.raises(http2.ProtocolError):
        server.receive_data(b"\x00\x00\x00\x04\x00\x00\x00\x00\x01")  # SETTINGS on stream 1
    assert any(isinstance(f, GoAwayFrame) for f in frames(server.data_to_send()))


# --- RFC 8441: extended CONNECT ----------------------------------------------------

WS_CONNECT = [
    (":method", "CONNECT"),
    (":protocol", "websocket"),
    (":scheme", "https"),
    (":path", "/chat?room=a"),
    (":authority", "h"),
    ("sec-websocket-version", "13"),
]


def test_settings_offer_extended_connect() -> None:
    _, client = pair()
    assert client.remote_settings.enable_connect_protocol == 1


def test_extended_connect_is_a_request_whose_data_is_not_a_body() -> None:
    """The WebSocket's bytes are outside ``max_body_size``; END_STREAM is reported."""
    server, client = pair(max_body_size=5)
    client.send_headers(1, WS_CONNECT)
    [event] = server.receive_data(client.data_to_send())
    assert event == http2.RequestReceived(
        stream_id=1,
        method="CONNECT",
        raw_path=b"/chat",
        path="/chat",
        query_string=b"room=a",
        headers=[(b"host", b"h"), (b"sec-websocket-version", b"13")],
        end_stream=False,
        protocol="websocket",
    )
    client.send_data(1, b"x" * 100)
    [data] = server.receive_data(client.data_to_send())
    assert data == http2.BodyReceived(1, b"x" * 100, 100)
    client.end_stream(1)
    assert server.receive_data(client.data_to_send())[-1] == http2.BodyEnded(1)


@pytest.mark.parametrize(
    ("headers", "end_stream", "status"),
    [
        ([(":method", "CONNECT"), (":authority", "h:443")], False, 501),  # a TCP tunnel
        ([(n, "chat" if n == ":protocol" else v) for n, v in WS_CONNECT], False, 501),
        (WS_CONNECT, True, 400),  # a WebSocket whose client side ended at once
    ],
)
def test_connect_that_is_no_websocket_is_refused(
    headers: list[tuple[str, str]], end_stream: bool, status: int
) -> None:
    server, client = pair()
    client.send_headers(1, headers, end_stream=end_stream)
    [event] = server.receive_data(client.data_to_send())
    assert isinstance(event, http2.RequestRejected)
    assert event.status == status


# --- hostile frame sequences (hypothesis) ------------------------------------------------

_stream_ids = st.sampled_from([0, 1, 2, 3, 5, 7, 9, 2**31 - 1])


def _frame_bytes(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big")
        + bytes([kind, flags])
        + stream_id.to_bytes(4, "big")
        + payload
    )


@st.composite
def _frame(draw: st.DrawFn) -> bytes:
    """One frame as a hostile client might write it: well-formed or not, any kind."""
    stream_id = draw(_stream_ids)
    choice = draw(st.sampled_from([0, 0, 0, 0, 1, 2, 2, 3, 4, 5, 6, 6, 6, 7, 8, 9]))
    if choice == 0:  # a real request head, possibly split over CONTINUATION frames
        block = Encoder().encode(
            [
                *REQUEST,
                *draw(
                    st.lists(
                        st.tuples(
                            st.sampled_from(["x-a", "content-length", "te", "host"]),
                            st.sampled_from(["1", "trailers", "", "z" * 100]),
                        ),
                        max_size=3,
                    )
                ),
            ]
        )
        flags = draw(st.sampled_from([0x4, 0x4, 0x5, 0x5, 0x0, 0x1]))
        return _frame_bytes(0x1, flags, draw(st.sampled_from([1, 3, 5, 7, 9, 0, 2])), block)
    if choice == 1:
        return _frame_bytes(
            0x9, draw(st.sampled_from([0, 4])), stream_id, draw(st.binary(max_size=40))
        )
    if choice == 2:
        return _frame_bytes(0x3, 0, stream_id, draw(st.integers(0, 14)).to_bytes(4, "big"))
    if choice == 3:
        return _frame_bytes(
            0x6, draw(st.sampled_from([0, 1])), 0, draw(st.binary(min_size=8, max_size=8))
        )
    if choice == 4:
        settings = b"".join(
            draw(st.integers(1, 9)).to_bytes(2, "big")
            + draw(st.sampled_from([0, 1, 100, 2**31, 2**32 - 1])).to_bytes(4, "big")
            for _ in range(draw(st.integers(0, 3)))
        )
        return _frame_bytes(0x4, draw(st.sampled_from([0, 1])), 0, settings)
    if choice == 5:
        increment = draw(st.sampled_from([0, 1, 65535, 2**31 - 1]))
        return _frame_bytes(0x8, 0, stream_id, increment.to_bytes(4, "big"))
    if choice == 6:
        return _frame_bytes(
            0x0, draw(st.sampled_from([0, 1, 8, 9])), stream_id, draw(st.binary(max_size=64))
        )
    if choice == 7:
        return _frame_bytes(0x2, 0, stream_id, draw(st.binary(min_size=5, max_size=5)))
    if choice == 8:
        return _frame_bytes(0x7, 0, 0, draw(st.binary(min_size=8, max_size=12)))
    return _frame_bytes(
        draw(st.integers(0, 255)),
        draw(st.integers(0, 255)),
        stream_id,
        draw(st.binary(max_size=20)),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sequence=st.lists(_frame(), max_size=40),
    repeat=st.integers(1, 40),
    opened=st.integers(0, 300),
    reset=st.booleans(),
    cut=st.integers(1, 97),
)
def test_any_frame_sequence_ends_in_a_response_a_reset_or_goaway(
    sequence: list[bytes], repeat: int, opened: int, reset: bool, cut: int
) -> None:
    """Frames of every kind, valid or not, repeated (floods) and split anywhere: no
    exception but ProtocolError escapes (and then GOAWAY is queued); every request the
    core reported is answered (the shell's part played here) or reset, and nothing the
    core holds per stream outlives its stream."""
    server, _ = pair(max_concurrent_streams=4, body_timeout=1.0)
    wire = b"".join(sequence) * repeat
    head = Encoder().encode(REQUEST)  # then streams opened (and reset: rapid reset)
    for stream_id in range(101, 101 + 2 * opened, 2):
        wire += _frame_bytes(0x1, 0x5, stream_id, head)
        if reset:
            wire += _frame_bytes(0x3, 0, stream_id, b"\x00\x00\x00\x08")
    out = b""
    reported: set[int] = set()
    try:
        for start in range(0, len(wire), cut):
            for event in server.receive_data(wire[start : start + cut]):
                assert isinstance(
                    event,
                    (
                        http2.RequestReceived,
                        http2.RequestRejected,
                        http2.BodyReceived,
                        http2.BodyEnded,
                        http2.StreamReset,
                        http2.WindowOpened,
                        http2.ConnectionLost,
                    ),
                )
                if isinstance(event, (http2.RequestReceived, http2.RequestRejected)):
                    reported.add(event.stream_id)
                    try:
                        server.send_headers(
                            event.stream_id, http2.response_block(200, []), end_stream=True
                        )
                    except http2.ProtocolError:
                        pass  # reset meanwhile
                    server.reset(event.stream_id, h2.errors.ErrorCodes.NO_ERROR)
                    server.forget(event.stream_id)
            out += server.data_to_send()
    except http2.ProtocolError:
        out += server.data_to_send()
        assert any(isinstance(f, GoAwayFrame) for f in frames(out))
        outcome("connection error")
        return
    outcome(f"no connection error, {min(len(reported), 3)}+ requests")
    answered = {
        f.stream_id for f in frames(out) if type(f).__name__ in ("HeadersFrame", "RstStreamFrame")
    }
    assert reported <= answered
    assert not server.active and not server.body_seen and not server.body_due


def test_a_body_deadline_runs_only_while_the_app_waits_for_the_client() -> None:
    """A request body's ``body_timeout`` is suspended while the app holds unread body (the
    client may be held back by our window): it restarts when the app has read it all."""
    now = [0.0]
    server = H2Protocol(body_timeout=5.0, clock=lambda: now[0])
    server.initiate()
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.send_headers(1, [(":method", "POST"), *REQUEST[1:]])
    server.receive_data(client.data_to_send())
    assert server.next_deadline() == 5.0
    client.send_data(1, b"x" * 100)
    now[0] = 4.0
    [body] = server.receive_data(client.data_to_send())
    assert isinstance(body, http2.BodyReceived)
    now[0] = 100.0  # the app is away: not the client's fault
    assert server.expired() == []
    server.acknowledge(1, body.flow_length)
    assert server.next_deadline() == 105.0
    now[0] = 105.0
    assert server.expired() == [http2.RequestRejected(1, 408, "request body timeout")]
    assert server.next_deadline() == float("inf")


# --- malformed requests (RFC 9113 8.1.1, 8.2, 8.3) --------------------------------------

_GOOD = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"h")]


def _without(name: bytes) -> list[tuple[bytes, bytes]]:
    return [(n, v) for n, v in _GOOD if n != name]


@pytest.mark.parametrize(
    "block",
    [
        pytest.param([*_GOOD, (b"X-Upper", b"1")], id="uppercase name"),
        pytest.param([*_GOOD, (b"a:b", b"1")], id="colon in a name"),
        pytest.param([*_GOOD, (b"", b"1")], id="empty name"),
        pytest.param([*_GOOD, (b"x a", b"1")], id="space in a name"),
        pytest.param([*_GOOD, (b"x", b"a\x00b")], id="NUL in a value"),
        pytest.param([*_GOOD, (b"x", b" a")], id="value with leading space"),
        pytest.param([*_GOOD, (b"x", b"a\t")], id="value with trailing tab"),
        pytest.param([*_GOOD, (b"connection", b"keep-alive")], id="connection"),
        pytest.param([*_GOOD, (b"transfer-encoding", b"chunked")], id="transfer-encoding"),
        pytest.param([*_GOOD, (b"te", b"gzip")], id="te other than trailers"),
        pytest.param([(b"x", b"1"), *_GOOD], id="pseudo-header after a field"),
        pytest.param([*_GOOD, (b":foo", b"1")], id="unknown pseudo-header"),
        pytest.param([*_GOOD, (b":status", b"200")], id="response pseudo-header"),
        pytest.param([*_GOOD, (b":path", b"/x")], id="repeated :path"),
        pytest.param(_without(b":method"), id="no :method"),
        pytest.param(_without(b":scheme"), id="no :scheme"),
        pytest.param(_without(b":path"), id="no :path"),
        pytest.param([*_without(b":path"), (b":path", b"")], id="empty :path"),
        pytest.param([*_GOOD, (b":protocol", b"websocket")], id=":protocol without CONNECT"),
        pytest.param(
            [(b":method", b"CONNECT"), (b":authority", b"h:1"), (b":path", b"/")],
            id="plain CONNECT with :path",
        ),
        pytest.param([(b":method", b"CONNECT")], id="plain CONNECT without :authority"),
        pytest.param(_without(b":authority"), id="neither :authority nor host"),
        pytest.param([*_GOOD, (b"host", b"other")], id="host differs from :authority"),
        pytest.param(
            [*_without(b":authority"), (b"host", b"h"), (b"host", b"h")], id="repeated host"
        ),
    ],
)
def test_malformed_request_is_a_stream_error_and_the_connection_goes_on(
    block: list[tuple[bytes, bytes]],
) -> None:
    """RFC 9113 8.1.1: RST_STREAM(PROTOCOL_ERROR) for the malformed request, no app
    sees it, and the connection's next request is served."""
    server, _ = pair()
    encoder = Encoder()
    events = server.receive_data(_frame_bytes(0x1, 0x5, 1, encoder.encode(block)))
    assert events == []
    [reset] = [f for f in frames(server.data_to_send()) if type(f).__name__ != "SettingsFrame"]
    assert type(reset).__name__ == "RstStreamFrame"
    assert (reset.stream_id, reset.error_code) == (1, h2.errors.ErrorCodes.PROTOCOL_ERROR)
    [event] = server.receive_data(_frame_bytes(0x1, 0x5, 3, encoder.encode(_GOOD)))
    assert isinstance(event, http2.RequestReceived)
    assert event.stream_id == 3


def test_split_cookie_fields_reach_the_app_joined() -> None:
    """RFC 9113 8.2.3: cookie fields split for compression are one field again."""
    server, client = pair()
    client.send_headers(1, [*REQUEST, ("cookie", "a=1"), ("x", "y"), ("cookie", "b=2")])
    [event] = server.receive_data(client.data_to_send())
    assert isinstance(event, http2.RequestReceived)
    assert event.headers == [(b"host", b"h"), (b"cookie", b"a=1; b=2"), (b"x", b"y")]


def test_a_clients_goaway_leaves_its_streams_in_flight_answerable() -> None:
    """RFC 9113 6.8: the client's GOAWAY says it opens no more streams; the ones it
    opened still get their responses."""
    server, client = pair()
    client.send_headers(1, REQUEST, end_stream=True)
    [request] = server.receive_data(client.data_to_send())
    client.close_connection()
    [lost] = server.receive_data(client.data_to_send())
    assert (request.stream_id, lost) == (1, http2.ConnectionLost(0))
    server.send_headers(1, http2.response_block(200, []))
    server.send_data(1, b"late", end_stream=True)
    sent = frames(server.data_to_send())
    assert [(type(f).__name__, f.stream_id, "END_STREAM" in f.flags) for f in sent] == [
        ("HeadersFrame", 1, False),
        ("DataFrame", 1, True),
    ]


def test_a_stream_whose_response_is_complete_leaves_room_before_its_app_returns() -> None:
    """A client may open a new stream as soon as it has a response (h2load -m at the
    limit does): the stream's app may not have returned yet, and is not counted."""
    server, client = pair(max_concurrent_streams=2)
    for stream_id in (1, 3):
        client.send_headers(stream_id, REQUEST, end_stream=True)
    assert len(server.receive_data(client.data_to_send())) == 2
    for stream_id in (1, 3):
        server.send_headers(stream_id, http2.response_block(200, []), end_stream=True)
    client.receive_data(server.data_to_send())
    client.send_headers(5, REQUEST, end_stream=True)
    [event] = server.receive_data(client.data_to_send())
    assert isinstance(event, http2.RequestReceived)
    # Apps still running without a complete response do count.
    client.send_headers(7, REQUEST, end_stream=True)
    block = Encoder().encode(REQUEST)  # the h2 client keeps to the limit itself
    events = server.receive_data(client.data_to_send() + _frame_bytes(0x1, 0x5, 9, block))
    assert [type(e).__name__ for e in events] == ["RequestReceived"]
    refused = [f for f in frames(server.data_to_send()) if type(f).__name__ == "RstStreamFrame"]
    assert [(f.stream_id, f.error_code) for f in refused] == [(9, 7)]


def test_a_repeated_header_block_decodes_against_the_table_as_it_is_now() -> None:
    """The same bytes of an all-indexed block (h2load, browsers: every request after the
    first) mean other fields once the HPACK table has changed: remembered decodes must
    not outlive the table they were made with."""
    server, _ = pair()
    static = b"\x82\x86\x84"  # :method GET, :scheme http, :path /
    indexed = static + b"\xbe"  # + dynamic entry 62: the newest
    blocks = [
        static + b"\x41\x01a",  # :authority a, added to the table (62)
        indexed,
        static + b"\x41\x01b",  # :authority b, now 62 (a is 63)
        indexed,
    ]
    hosts = []
    for stream_id, block in zip((1, 3, 5, 7), blocks, strict=True):
        [event] = server.receive_data(_frame_bytes(0x1, 0x5, stream_id, block))
        assert isinstance(event, http2.RequestReceived)
        hosts.append(dict(event.headers)[b"host"])
    assert hosts == [b"a", b"a", b"b", b"b"]


@pytest.mark.parametrize(
    ("first", "again", "code"),
    [
        (5, 3, h2.errors.ErrorCodes.PROTOCOL_ERROR),  # an id skipped: unexpected (5.1.1)
        (1, 1, h2.errors.ErrorCodes.STREAM_CLOSED),  # a closed stream's HEADERS (5.1)
    ],
)
def test_headers_on_a_lower_stream_id_is_a_connection_error(
    first: int, again: int, code: int
) -> None:
    server, _ = pair()
    block = Encoder().encode(REQUEST)
    [event] = server.receive_data(_frame_bytes(0x1, 0x5, first, block))
    assert isinstance(event, http2.RequestReceived)
    server.send_headers(first, http2.response_block(200, []), end_stream=True)
    with pytest.raises(http2.ProtocolError):
        server.receive_data(_frame_bytes(0x1, 0x5, again, block))
    [goaway] = [f for f in frames(server.data_to_send()) if isinstance(f, GoAwayFrame)]
    assert (goaway.error_code, goaway.last_stream_id) == (code, first)


@pytest.mark.parametrize("body", [b"abc", b"abcdefg"])
def test_a_body_unlike_its_content_length_is_a_stream_error(body: bytes) -> None:
    """RFC 9113 8.1.1: DATA that adds up to more, or ends at less, than
    ``content-length`` makes the request malformed: RST_STREAM(PROTOCOL_ERROR), the app
    learns the stream is gone, the connection goes on."""
    server, client = pair()
    client.send_headers(1, [(":method", "POST"), *REQUEST[1:], ("content-length", "5")])
    [request] = server.receive_data(client.data_to_send())
    assert isinstance(request, http2.RequestReceived)
    events = server.receive_data(_frame_bytes(0x0, 0x1, 1, body))
    assert events[-1] == http2.StreamReset(1)
    [reset] = [f for f in frames(server.data_to_send()) if type(f).__name__ == "RstStreamFrame"]
    assert (reset.stream_id, reset.error_code) == (1, h2.errors.ErrorCodes.PROTOCOL_ERROR)
    client.send_headers(3, REQUEST, end_stream=True)
    [event] = server.receive_data(client.data_to_send())
    assert isinstance(event, http2.RequestReceived)


def test_a_response_head_over_the_frame_size_goes_on_in_continuation_frames() -> None:
    server, client = pair()
    client.send_headers(1, REQUEST, end_stream=True)
    server.receive_data(client.data_to_send())
    big = b"v" * 40000
    server.send_headers(1, http2.response_block(200, [(b"x-big", big)]), end_stream=True)
    data = server.data_to_send()
    assert [type(f).__name__ for f in frames(data)] == [
        "HeadersFrame",
        "ContinuationFrame",
        "ContinuationFrame",
    ]
    [response, ended] = client.receive_data(data)
    assert isinstance(response, h2.events.ResponseReceived)
    assert dict(response.headers)[b"x-big"] == big
    assert isinstance(ended, h2.events.StreamEnded)


def test_streams_that_repeat_a_header_block_each_get_their_own_headers() -> None:
    """A repeated block's checks are remembered, not its list: an app that changes its
    scope's headers changes nothing for the next request; a rejected block is rejected
    again."""
    server, _ = pair(max_request_line_size=10)
    long_path = [(n, "/" + "p" * 20 if n == ":path" else v) for n, v in REQUEST]
    encoder = Encoder()  # a field's first block adds it to the table, later ones index it
    first, again = encoder.encode(REQUEST), encoder.encode(REQUEST)
    long_first, long_again = encoder.encode(long_path), encoder.encode(long_path)
    blocks = [first, again, again, long_first, long_again, long_again]
    events = []
    for stream_id, block in zip(range(1, 12, 2), blocks, strict=True):
        events += server.receive_data(_frame_bytes(0x1, 0x5, stream_id, block))
    one, two, three = events[:3]
    assert isinstance(one, http2.RequestReceived) and isinstance(two, http2.RequestReceived)
    assert isinstance(three, http2.RequestReceived)
    two.headers.append((b"x-added", b"by the app"))
    assert three.headers == [(b"host", b"h")]
    assert [(e.stream_id, e.status) for e in events[3:]] == [(7, 414), (9, 414), (11, 414)]


def test_remembered_header_blocks_stay_few_and_small() -> None:
    """Distinct blocks that leave the HPACK table alone (a client could send endless
    ones) are remembered at most ``BLOCKS_REMEMBERED`` at a time, and none that is large."""
    server, _ = pair()
    static = b"\x82\x86\x84\x41\x01h"  # GET http / , :authority h (added to the table once)
    server.receive_data(_frame_bytes(0x1, 0x5, 1, static))
    indexed = b"\x82\x86\x84\xbe"  # the same request, :authority from the table
    for stream_id, repeat in zip(range(3, 203, 2), range(100), strict=True):
        # accept-encoding: gzip, deflate (static 16), repeated: each block a new one
        block = indexed + b"\x90" * (repeat % 40 if stream_id % 4 == 1 else repeat * 3)
        server.receive_data(_frame_bytes(0x1, 0x5, stream_id, block))
        server.send_headers(stream_id, http2.response_block(200, []), end_stream=True)
        server.forget(stream_id)
        assert len(server.blocks) <= http2.BLOCKS_REMEMBERED
        assert all(len(b) <= http2.BLOCK_REMEMBERED_MAX for b in server.blocks)
        assert set(server.views) <= set(server.blocks)


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"content-type", b"text/plain"), (b"content-length", b"5")],
        [(b"Content-Type", b"text/plain"), (b"Connection", b"close"), (b"TE", b"gzip")],
        [(b"te", b"Trailers"), (b"keep-alive", b"5"), (b"x-long", b"v" * 300)],
        [(bytearray(b"X-Ba"), bytearray(b"ba")), [b"x-list", b"1"]],  # type: ignore[list-item]
        [(b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"server", b"hornbeam")],
        [(b"x", b"a\r\nb")],
        [(b"bad name", b"1")],
    ],
)
def test_encode_response_head_is_response_block_encoded(
    headers: list[tuple[bytes, bytes]],
) -> None:
    """The one-pass encoder of a response head (what a stream sends) is the checked block
    (``response_block``, what the server's own answers use), encoded: the same bytes, or
    the same ValueError; twice, so the remembered fields are checked too."""
    from hornbeam_trio.protocol.h2_frames import encode_block

    for _ in range(2):
        try:
            expected = encode_block(http2.response_block(404, headers))
        except ValueError:
            with pytest.raises(ValueError):
                http2.encode_response_head(404, headers)
            continue
        assert http2.encode_response_head(404, headers) == expected

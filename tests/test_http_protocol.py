"""The sans-I/O HTTP/1.1 core, specified with byte strings (no sockets, no event loop)."""

from __future__ import annotations

from collections.abc import Iterator

import h11
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hornbeam_trio.protocol import http11
from hornbeam_trio.protocol.http11 import (
    CONTINUE_RESPONSE,
    END_OF_MESSAGE,
    LINES_PER_STEP,
    NEED_DATA,
    SLICE,
    Event,
    HTTPError,
    HTTPParser,
    Request,
    ResponseEncoder,
    simple_response,
)

DATE = b"date: Thu, 01 Jan 2026 00:00:00 GMT\r\n"
STAMP = DATE + b"server: hornbeam-trio\r\n"


@pytest.fixture(autouse=True)
def fixed_date(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http11, "_date_header", lambda: DATE)


def drain(parser: HTTPParser) -> list[Event]:
    events = []
    while (event := parser.next_event()) is not NEED_DATA:
        events.append(event)
    return events


def parse(data: bytes, **limits: int) -> list[Event]:
    parser = HTTPParser(**limits)
    parser.feed(data)
    return drain(parser)


def merged(events: list[Event]) -> list[Event]:
    """Joins adjacent body chunks: how a body is split is not part of the contract."""
    out: list[Event] = []
    for event in events:
        if isinstance(event, bytes) and out and isinstance(out[-1], bytes):
            out[-1] += event
        else:
            out.append(event)
    return out


def parse_bytewise(data: bytes, **limits: int) -> list[Event]:
    parser = HTTPParser(**limits)
    events = []
    for i in range(len(data)):
        parser.feed(data[i : i + 1])
        events += drain(parser)
    return merged(events)


def request(**overrides: object) -> Request:
    fields: dict[str, object] = {
        "method": "GET",
        "raw_path": b"/",
        "path": "/",
        "query_string": b"",
        "http_version": "1.1",
        "headers": [],
        "keep_alive": True,
        "upgrade": None,
        "expect_continue": False,
    }
    fields.update(overrides)
    return Request(**fields)  # type: ignore[arg-type]


def raises_status(status: int, data: bytes, **limits: int) -> HTTPError:
    parser = HTTPParser(**limits)
    with pytest.raises(HTTPError) as info:
        parser.feed(data)
    assert info.value.status == status, info.value.reason
    return info.value


# -- requests --------------------------------------------------------------------


def test_simple_get_produces_head_then_end() -> None:
    events = parse(b"GET /index.html?a=1&b=2 HTTP/1.1\r\nHost: example.com\r\nX-Empty:\r\n\r\n")
    assert events == [
        request(
            raw_path=b"/index.html",
            path="/index.html",
            query_string=b"a=1&b=2",
            headers=[(b"host", b"example.com"), (b"x-empty", b"")],
        ),
        END_OF_MESSAGE,
    ]


def test_header_names_lowercased_values_kept_order_kept_duplicates_kept() -> None:
    (req, _) = parse(
        b"GET / HTTP/1.1\r\nX-B: One\r\nHOST: h\r\nx-b:   Two\tWords\r\nCookie: a=1\r\n\r\n"
    )
    assert isinstance(req, Request)
    assert req.headers == [
        (b"x-b", b"One"),
        (b"host", b"h"),
        (b"x-b", b"Two\tWords"),
        (b"cookie", b"a=1"),
    ]


@pytest.mark.parametrize(
    ("target", "raw_path", "path", "query"),
    [
        (b"/a%20b/%E2%82%AC", b"/a%20b/%E2%82%AC", "/a b/\u20ac", b""),
        (b"/bad%FFutf8", b"/bad%FFutf8", "/bad\udcffutf8", b""),
        (b"/p?q=%20&r#frag", b"/p", "/p", b"q=%20&r"),
        (b"/p#frag", b"/p", "/p", b""),
        (b"/a%2Fb", b"/a%2Fb", "/a/b", b""),
        (b"http://example.com/x/y?z=1", b"/x/y", "/x/y", b"z=1"),
        (b"http://example.com", b"/", "/", b""),
        (b"*", b"*", "*", b""),
    ],
)
def test_request_target_forms(target: bytes, raw_path: bytes, path: str, query: bytes) -> None:
    (req, _) = parse(b"OPTIONS " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n")
    assert isinstance(req, Request)
    assert (req.raw_path, req.path, req.query_string) == (raw_path, path, query)


@pytest.mark.parametrize(
    ("version", "connection", "keep_alive"),
    [
        (b"1.1", b"", True),
        (b"1.1", b"Connection: close\r\n", False),
        (b"1.1", b"Connection: keep-alive, Close\r\n", False),
        (b"1.0", b"", False),
        (b"1.0", b"Connection: Keep-Alive\r\n", True),
    ],
)
def test_keep_alive_decision(version: bytes, connection: bytes, keep_alive: bool) -> None:
    (req, _) = parse(b"GET / HTTP/" + version + b"\r\nHost: h\r\n" + connection + b"\r\n")
    assert isinstance(req, Request)
    assert req.http_version == version.decode()
    assert req.keep_alive is keep_alive


def test_expect_continue_only_for_http11() -> None:
    head = b"POST / HTTP/%s\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 2\r\n\r\n"
    (req11,) = parse(head % b"1.1")
    (req10,) = parse(head % b"1.0")
    assert isinstance(req11, Request) and isinstance(req10, Request)
    assert req11.expect_continue is True
    assert req10.expect_continue is False
    assert CONTINUE_RESPONSE == b"HTTP/1.1 100 Continue\r\n\r\n"


PIPELINE = (
    b"GET /one HTTP/1.1\r\nHost: h\r\n\r\n"
    b"POST /two HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
    b"POST /three HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n1;ext=1\r\nd\r\n0\r\nTrailer-Field: x\r\n\r\n"
    b"GET /four HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
)


def expected_pipeline() -> list[Event]:
    return [
        request(raw_path=b"/one", path="/one", headers=[(b"host", b"h")]),
        END_OF_MESSAGE,
        request(
            method="POST",
            raw_path=b"/two",
            path="/two",
            headers=[(b"host", b"h"), (b"content-length", b"5")],
        ),
        b"hello",
        END_OF_MESSAGE,
        request(
            method="POST",
            raw_path=b"/three",
            path="/three",
            headers=[(b"host", b"h"), (b"transfer-encoding", b"chunked")],
        ),
        b"abcd",
        END_OF_MESSAGE,
        request(
            raw_path=b"/four",
            path="/four",
            headers=[(b"host", b"h"), (b"connection", b"close")],
            keep_alive=False,
        ),
        END_OF_MESSAGE,
    ]


def test_pipelined_requests_in_one_feed_come_out_in_order() -> None:
    parser = HTTPParser()
    parser.feed(PIPELINE)
    # The chunked body's two chunks come as one event: what one feed completed.
    assert drain(parser) == expected_pipeline()
    assert parser.at_message_boundary


def test_byte_at_a_time_gives_the_same_events() -> None:
    assert parse_bytewise(PIPELINE) == expected_pipeline()


def test_chunked_body_chunks_are_streamed_and_trailers_dropped() -> None:
    parser = HTTPParser()
    parser.feed(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
    assert isinstance(parser.next_event(), Request)
    assert parser.next_event() == b"hel"
    assert parser.next_event() is NEED_DATA
    assert not parser.at_message_boundary
    parser.feed(b"lo\r\n0\r\nX-Trailer: 1\r\n\r\n")
    assert drain(parser) == [b"lo", END_OF_MESSAGE]
    assert parser.at_message_boundary


def test_body_events_are_never_empty() -> None:
    events = parse(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
    assert events[1:] == [END_OF_MESSAGE]


def test_bytes_after_a_closing_request_are_ignored() -> None:
    parser = HTTPParser()
    parser.feed(b"GET / HTTP/1.0\r\n\r\nGET /next HTTP/1.1\r\nHost: h\r\n\r\n")
    parser.feed(b"garbage that is never parsed")
    parser.feed(b"")
    events = drain(parser)
    assert len(events) == 2 and events[1] is END_OF_MESSAGE


# -- malformed requests and limits -------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc",
        b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXX",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"FOO / HTTP/1.1\r\nHost: h\r\n\r\n",
        b"get / HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nBad Header: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\nHost: h\n\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
    ],
)
def test_malformed_requests_are_400(data: bytes) -> None:
    raises_status(400, data)


@pytest.mark.parametrize("version", [b"0.9", b"2.0"])
def test_unsupported_versions_are_505(version: bytes) -> None:
    raises_status(505, b"GET / HTTP/" + version + b"\r\n\r\n")


def test_connect_is_501() -> None:
    raises_status(501, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n")


def test_error_is_sticky_and_earlier_events_survive() -> None:
    parser = HTTPParser()
    with pytest.raises(HTTPError) as first:
        parser.feed(b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\nFOO / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert [type(e) for e in drain(parser)] == [Request, type(END_OF_MESSAGE)]
    with pytest.raises(HTTPError) as second:
        parser.feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert second.value is first.value


def request_line(target_len: int) -> bytes:
    # "GET " + target + " HTTP/1.1" is target_len + 13 bytes
    return b"GET /" + b"a" * (target_len - 1) + b" HTTP/1.1\r\n"


@pytest.mark.parametrize("bytewise", [False, True])
def test_request_line_limit_is_414(bytewise: bool) -> None:
    limit = 100
    ok = request_line(limit - 13) + b"Host: h\r\n\r\n"
    too_long = request_line(limit - 12) + b"Host: h\r\n\r\n"
    assert len(ok) == limit + 4 + 9
    if bytewise:
        assert isinstance(parse_bytewise(ok, max_request_line_size=limit)[0], Request)
        with pytest.raises(HTTPError) as info:
            parse_bytewise(too_long, max_request_line_size=limit)
        assert info.value.status == 414
    else:
        assert isinstance(parse(ok, max_request_line_size=limit)[0], Request)
        raises_status(414, too_long, max_request_line_size=limit)


def test_unfinished_request_line_is_cut_off_at_the_limit() -> None:
    parser = HTTPParser(max_request_line_size=4094)
    parser.feed(b"GET /")
    with pytest.raises(HTTPError) as info:
        for _ in range(10):
            parser.feed(b"a" * 1000)  # never terminated
    assert info.value.status == 414


@pytest.mark.parametrize("bytewise", [False, True])
def test_header_size_limit_is_431(bytewise: bool) -> None:
    limit = 200
    ok = b"GET / HTTP/1.1\r\nHost: h\r\nX-Long: " + b"v" * (limit - 6) + b"\r\n\r\n"
    too_big = b"GET / HTTP/1.1\r\nHost: h\r\nX-Long: " + b"v" * (limit - 5) + b"\r\n\r\n"
    run = parse_bytewise if bytewise else parse
    assert isinstance(run(ok, max_header_size=limit)[0], Request)
    with pytest.raises(HTTPError) as info:
        run(too_big, max_header_size=limit)
    assert info.value.status == 431


def test_unfinished_header_is_cut_off_near_the_limit() -> None:
    """httptools buffers a partial header invisibly; it must not grow without bound."""
    parser = HTTPParser(max_header_size=8190)
    parser.feed(b"GET / HTTP/1.1\r\nHost: h\r\nX-Endless: ")
    fed = 0
    with pytest.raises(HTTPError) as info:
        while fed < 100_000:
            parser.feed(b"v" * 512)
            fed += 512
    assert info.value.status == 431
    assert fed <= 8190 + 1024


def test_unfinished_trailer_is_cut_off_too() -> None:
    parser = HTTPParser(max_header_size=1000)
    parser.feed(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: ")
    with pytest.raises(HTTPError) as info:
        for _ in range(100):
            parser.feed(b"v" * 100)
    assert info.value.status == 431


def test_header_count_limit_is_431() -> None:
    head = b"GET / HTTP/1.1\r\nHost: h\r\n%s\r\n"
    ok = head % b"".join(b"X-%d: v\r\n" % i for i in range(9))  # Host is the 10th
    too_many = head % b"".join(b"X-%d: v\r\n" % i for i in range(10))
    assert isinstance(parse(ok, max_headers=10)[0], Request)
    raises_status(431, too_many, max_headers=10)


def test_trailer_count_is_limited() -> None:
    trailers = b"".join(b"T-%d: v\r\n" % i for i in range(11))
    data = (
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
        + trailers
        + b"\r\n"
    )
    raises_status(431, data, max_headers=10)


def test_declared_body_over_the_limit_is_413_before_any_body() -> None:
    parser = HTTPParser(max_body_size=10)
    with pytest.raises(HTTPError) as info:
        parser.feed(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n")
    assert info.value.status == 413
    assert parser.next_event() is NEED_DATA  # no Request handed out to run the app


def test_chunked_body_over_the_limit_is_413() -> None:
    parser = HTTPParser(max_body_size=10)
    parser.feed(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n12345\r\n")
    parser.feed(b"5\r\n67890\r\n")
    with pytest.raises(HTTPError) as info:
        parser.feed(b"1\r\nX\r\n0\r\n\r\n")
    assert info.value.status == 413


def test_body_exactly_at_the_limit_is_accepted() -> None:
    events = parse(
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789", max_body_size=10
    )
    assert events[1:] == [b"0123456789", END_OF_MESSAGE]


# -- EOF ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "partial",
    [
        b"G",
        b"GET / HTTP/1.1\r\nHost: h\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
    ],
)
def test_eof_mid_request_is_400(partial: bytes) -> None:
    parser = HTTPParser()
    parser.feed(partial)
    assert not parser.at_message_boundary
    with pytest.raises(HTTPError) as info:
        parser.feed(b"")
    assert info.value.status == 400


def test_eof_between_requests_is_clean() -> None:
    parser = HTTPParser()
    assert parser.at_message_boundary
    parser.feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert parser.at_message_boundary
    parser.feed(b"")
    assert len(drain(parser)) == 2


# -- upgrade -------------------------------------------------------------------------

WS_HEAD = (
    b"GET /chat HTTP/1.1\r\nHost: h\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def test_upgrade_stops_parsing_and_hands_over_the_tail() -> None:
    frame = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"
    parser = HTTPParser()
    parser.feed(WS_HEAD + frame + b"GET / HTTP/1.1\r\n")
    req, end = drain(parser)
    assert isinstance(req, Request)
    assert req.upgrade == b"websocket"
    assert req.path == "/chat"
    assert end is END_OF_MESSAGE
    assert parser.upgrade_tail == frame + b"GET / HTTP/1.1\r\n"
    parser.feed(b"more")
    assert parser.upgrade_tail.endswith(b"\r\nmore")
    assert drain(parser) == []


def test_upgrade_tail_empty_when_head_arrives_alone() -> None:
    parser = HTTPParser()
    for i in range(len(WS_HEAD)):
        parser.feed(WS_HEAD[i : i + 1])
    assert [type(e) for e in drain(parser)] == [Request, type(END_OF_MESSAGE)]
    assert parser.upgrade_tail == b""
    parser.feed(b"\x88\x80")
    assert parser.upgrade_tail == b"\x88\x80"


def test_upgrade_header_without_connection_upgrade_is_plain_http() -> None:
    parser = HTTPParser()
    parser.feed(
        b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    events = drain(parser)
    assert isinstance(events[0], Request) and events[0].upgrade is None
    assert isinstance(events[2], Request) and events[2].path == "/2"
    assert parser.upgrade_tail == b""


def test_websocket_offered_among_others_is_taken() -> None:
    head = WS_HEAD.replace(b"Upgrade: WebSocket", b"Upgrade: h2c, WebSocket")
    (req, _) = parse(head)
    assert isinstance(req, Request) and req.upgrade == b"websocket"


def test_upgrade_tail_is_bounded_by_the_head_size() -> None:
    parser = HTTPParser(max_head_size=1000)
    parser.feed(WS_HEAD + b"x" * 600)
    parser.feed(b"x" * 400)
    with pytest.raises(HTTPError) as info:
        parser.feed(b"x")
    assert info.value.status == 400
    assert len(parser.upgrade_tail) == 1000


DECLINED = b"POST /d HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 5\r\n\r\nhello",
        b"Transfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n3;x=y\r\nllo\r\n0\r\nT: 1\r\n\r\n",
    ],
    ids=["content-length", "chunked"],
)
@pytest.mark.parametrize("bytewise", [False, True])
def test_declined_upgrade_is_served_with_its_body_then_parsing_stops(
    framing: bytes, bytewise: bool
) -> None:
    """llhttp skips the body of any upgrade request; a declined one still gets it."""
    data = DECLINED + framing + b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n"
    events = parse_bytewise(data) if bytewise else parse(data)
    req, body, end = events
    assert isinstance(req, Request)
    assert req.upgrade is None and req.keep_alive is False
    assert (body, end) == (b"hello", END_OF_MESSAGE)


def test_declined_upgrade_discards_what_follows() -> None:
    parser = HTTPParser()
    parser.feed(DECLINED + b"\r\nanything")
    assert [type(e) for e in drain(parser)] == [Request, type(END_OF_MESSAGE)]
    for _ in range(100):
        parser.feed(b"x" * 65536)
    assert parser.upgrade_tail == b""
    assert parser.buffered == 0
    assert parser.at_message_boundary


def test_declined_upgrade_body_cut_by_eof_is_400() -> None:
    parser = HTTPParser()
    parser.feed(DECLINED + b"Content-Length: 5\r\n\r\nhel")
    with pytest.raises(HTTPError) as info:
        parser.feed(b"")
    assert info.value.status == 400


def test_body_chunks_of_one_feed_are_one_event() -> None:
    parser = HTTPParser()
    parser.feed(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert isinstance(parser.next_event(), Request)
    parser.feed(b"1\r\nx\r\n" * 100)
    assert drain(parser) == [b"x" * 100]
    parser.feed(b"1\r\ny\r\n" * 3 + b"0\r\n\r\n")
    assert drain(parser) == [b"yyy", END_OF_MESSAGE]


def test_a_read_of_tiny_chunks_is_parsed_one_bounded_slice_per_call() -> None:
    """64 KiB of one-byte chunks (~10,000 callbacks from httptools): ``feed`` and each
    ``resume`` parse one slice, so the connection can checkpoint between them."""
    parser = HTTPParser()
    parser.feed(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert isinstance(parser.next_event(), Request)
    read = b"1\r\nx\r\n" * 10_000 + b"0\r\n\r\n" + b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    parser.feed(read)
    assert parser.more
    body = drain(parser)
    assert body == []
    calls = 0
    while parser.more:
        assert parser.buffered > 0  # the unparsed rest of the read counts as held
        parser.resume()
        body += drain(parser)
        calls += 1
    assert calls == -(-len(read) // SLICE)
    assert all(len(part) <= SLICE // 6 + 1 for part in body[:-3] if isinstance(part, bytes))
    assert b"".join(p for p in body if isinstance(p, bytes)) == b"x" * 10_000
    assert body[-3] is END_OF_MESSAGE and isinstance(body[-2], Request)
    assert body[-1] is END_OF_MESSAGE


def test_a_read_of_large_chunks_is_parsed_at_once() -> None:
    parser = HTTPParser()
    parser.feed(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert isinstance(parser.next_event(), Request)
    parser.feed((b"1000\r\n" + b"x" * 4096 + b"\r\n") * 16)
    assert not parser.more
    assert drain(parser) == [b"x" * 4096 * 16]


def test_a_content_length_body_of_short_lines_is_parsed_at_once_but_what_follows_is_not() -> None:
    """httptools hands a Content-Length body over in one call per read, newlines or not:
    an upload of text lines must not be sliced (nor its newlines counted: that alone
    halved the 1 MiB upload row), but short lines after the body still are."""
    parser = HTTPParser()
    body = b"line\n" * 12_000
    parser.feed(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(body))
    assert isinstance(parser.next_event(), Request)
    parser.feed(body[:30_000])
    assert not parser.more
    pipelined = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n" * 300
    parser.feed(body[30_000:] + pipelined)
    assert parser.more  # the requests after the body are many short lines
    events = drain(parser)
    while parser.more:
        parser.resume()
        events += drain(parser)
    assert b"".join(e for e in events if isinstance(e, bytes)) == body
    assert sum(isinstance(e, Request) for e in events) == 300


def test_an_upgrade_in_a_sliced_read_keeps_the_rest_of_the_read_as_its_tail() -> None:
    parser = HTTPParser()
    frames = b"\n" * (LINES_PER_STEP + 1) + b"f" * (3 * SLICE)
    parser.feed(
        b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n" + frames
    )
    while parser.more:
        parser.resume()
    assert parser.upgrade_tail == frames


# -- the whole head ------------------------------------------------------------------


# -- a connection's exact repeat of its last request ------------------------------

REPEATED_GET = b"GET /poll?n=1 HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n"
REPEATED_POST = b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"


class _NoHttptools:
    """Stands in for httptools' parser: any parse through it fails the test."""

    def feed_data(self, data: bytes) -> None:
        raise AssertionError(f"parsed again: {data!r}")


@pytest.mark.parametrize("read", [REPEATED_GET, REPEATED_POST])
def test_an_exact_repeat_of_the_last_request_is_served_without_parsing(read: bytes) -> None:
    parser = HTTPParser()
    parser.feed(read)
    first = drain(parser)
    parser.feed(read)  # the read before again: parsed, and remembered
    assert drain(parser) == first
    parser._parser = _NoHttptools()  # type: ignore[assignment]
    for _ in range(3):
        parser.feed(read)
        assert drain(parser) == first
    with pytest.raises(AssertionError, match="parsed again"):
        parser.feed(read.replace(b"h", b"H", 1))  # one byte differs: parsed


def test_a_repeat_with_another_body_of_the_same_size_hands_out_that_body() -> None:
    parser = HTTPParser()
    for _ in range(2):
        parser.feed(REPEATED_POST)
        drain(parser)
    parser.feed(REPEATED_POST[:-5] + b"world")
    assert drain(parser)[1:] == [b"world", END_OF_MESSAGE]


def test_an_app_that_changes_its_scopes_headers_does_not_change_the_next_request() -> None:
    parser = HTTPParser()
    parser.feed(REPEATED_GET)
    drain(parser)
    parser.feed(REPEATED_GET)
    first = parser.next_event()
    assert isinstance(first, Request)
    first.headers.append((b"x-added-by", b"middleware"))
    first.headers[0] = (b"host", b"elsewhere")
    drain(parser)
    parser.feed(REPEATED_GET)
    again = parser.next_event()
    assert isinstance(again, Request)
    assert again.headers == [(b"host", b"h"), (b"accept", b"*/*")]
    assert again.headers is not first.headers


@pytest.mark.parametrize(
    "read",
    [
        b"GET / HTTP/1.0\r\n\r\n",  # not keep-alive: nothing is parsed after it
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
        REPEATED_GET * 2,  # two requests in one read
        b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"v" * http11.REPEAT_READ_MAX + b"\r\n\r\n",
    ],
)
def test_reads_that_are_not_one_plain_keep_alive_request_are_never_served_as_repeats(
    read: bytes,
) -> None:
    parser = HTTPParser()
    for _ in range(2):
        parser.feed(read)
        drain(parser)
    parser._parser = _NoHttptools()  # type: ignore[assignment]
    try:
        parser.feed(read)
    except AssertionError:
        return  # parsed again
    assert drain(parser) == []  # after the last request, or an upgrade: nothing more


REPEAT_POOL = [
    REPEATED_GET,
    REPEATED_POST,
    REPEATED_POST[:-5] + b"12345",
    REPEATED_GET[:20],  # a head cut in two reads
    REPEATED_GET[20:],
    REPEATED_POST[:-2],  # a body cut in two reads
    REPEATED_POST[-2:],
    REPEATED_GET * 2,
    b"\r\n" + REPEATED_GET,
    REPEATED_GET + b"\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nframes",
    b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
    b"Content-Length: 2\r\n\r\nab",
    b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx",
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 60\r\n\r\n" + b"y" * 60,  # over the body limit
    b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X: v\r\n" * 300 + b"\r\n",  # sliced, then 431
    b"GET / HTTP/1.1\r\n\r\n",  # no Host: 400
    b"",  # EOF
]


def _step(parser: HTTPParser, read: bytes) -> tuple[object, ...]:
    """Feed one read (and every slice it leaves); everything a caller can observe."""
    events: list[Event] = []
    error = None
    try:
        parser.feed(read)
        events += drain(parser)
        while parser.more:
            parser.resume()
            events += drain(parser)
    except HTTPError as exc:
        error = exc.status
    events += drain(parser)
    return (events, error, parser.more, parser.at_message_boundary, parser.upgrade_tail)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(REPEAT_POOL), min_size=1, max_size=12))
@example([REPEATED_GET[:20], REPEATED_GET[20:], REPEATED_GET[20:]])  # the tail of a head
def test_serving_repeats_unparsed_changes_nothing_a_caller_sees(reads: list[bytes]) -> None:
    limits = {"max_body_size": 50, "max_headers": 100}
    remembering = HTTPParser(**limits)
    parsing = HTTPParser(repeat_read_max=0, **limits)
    for read in reads:
        assert _step(remembering, read) == _step(parsing, read)


def test_a_head_over_max_head_size_is_431_even_in_one_feed() -> None:
    ok = b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"v" * 900 + b"\r\n\r\n"
    assert isinstance(parse(ok, max_head_size=1000)[0], Request)
    error = raises_status(431, ok.replace(b"v" * 900, b"v" * 1000), max_head_size=1000)
    assert error.reason == "request head too large"


def test_an_unfinished_head_is_cut_off_at_max_head_size() -> None:
    """Many headers each under max_header_size, never finished: held up to the cap only."""
    parser = HTTPParser(max_head_size=65536)
    parser.feed(b"GET / HTTP/1.1\r\nHost: h\r\n")
    fed = 0
    with pytest.raises(HTTPError) as info:
        for i in range(100):
            parser.feed(b"X-%d: %s\r\n" % (i, b"v" * 8000))
            fed += 8000
    assert info.value.status == 431
    assert fed <= 65536 + 8192


def test_trailers_count_against_the_head_size_apart() -> None:
    head = b"POST / HTTP/1.1\r\nHost: h\r\nX: " + b"v" * 600 + b"\r\n"
    body = b"Transfer-Encoding: chunked\r\n\r\n0\r\n"
    ok = head + body + b"T: " + b"t" * 600 + b"\r\n\r\n"
    assert parse(ok, max_head_size=1000)[-1] is END_OF_MESSAGE
    parser = HTTPParser(max_head_size=1000)
    parser.feed(head + body + b"T: " + b"t" * 600 + b"\r\n")
    with pytest.raises(HTTPError) as info:
        parser.feed(b"U: " + b"u" * 600 + b"\r\nV: v\r\n")  # U is reported once V starts
    assert info.value.status == 431


# -- framing rules of RFC 9112 -----------------------------------------------------


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", "no Host header"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", "more than one Host header"),
        (b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", "more than one Host header"),
    ],
)
def test_host_must_appear_exactly_once(head: bytes, reason: str) -> None:
    assert raises_status(400, head).reason == reason


def test_http10_may_omit_host() -> None:
    assert isinstance(parse(b"GET / HTTP/1.0\r\n\r\n")[0], Request)


def test_chunked_http10_request_is_served_then_the_connection_closes() -> None:
    parser = HTTPParser()
    parser.feed(
        b"POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nhi\r\n0\r\n\r\nGET /next HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    )
    req, body, end = drain(parser)
    assert isinstance(req, Request) and req.keep_alive is False
    assert (body, end) == (b"hi", END_OF_MESSAGE)


# -- cross-check against h11 -----------------------------------------------------------


Parsed = tuple[bytes, bytes, bytes, list[tuple[bytes, bytes]], bytearray]


def h11_parse(data: bytes) -> list[Parsed]:
    """(method, path, query, headers, body) per request, as h11 sees them."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    conn.receive_data(b"")
    out: list[Parsed] = []
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Request):
            path, _, query = event.target.partition(b"?")
            out.append((event.method, path, query, list(event.headers), bytearray()))
        elif isinstance(event, h11.Data):
            out[-1][4].extend(event.data)
        elif isinstance(event, h11.EndOfMessage):
            conn.send(h11.Response(status_code=204, headers=[]))
            conn.send(h11.EndOfMessage())
            if conn.our_state is not h11.DONE:
                return out
            conn.start_next_cycle()
        else:
            assert event in (h11.NEED_DATA, h11.PAUSED) or isinstance(event, h11.ConnectionClosed)
            return out


def ours_parse(data: bytes) -> list[Parsed]:
    out: list[Parsed] = []
    for event in parse(data):
        if isinstance(event, Request):
            out.append(
                (
                    event.method.encode(),
                    event.raw_path,
                    event.query_string,
                    event.headers,
                    bytearray(),
                )
            )
        elif isinstance(event, bytes):
            out[-1][4].extend(event)
    return out


@pytest.mark.parametrize(
    "data",
    [
        PIPELINE,
        b"PUT /x?y=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nX:  pad  \r\n\r\nabc",
        b"DELETE /a%20b HTTP/1.1\r\nHost: h\r\nAccept: */*\r\nAccept: text/html\r\n\r\n",
        b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"A\r\n0123456789\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n",
    ],
)
def test_agrees_with_h11(data: bytes) -> None:
    assert ours_parse(data) == h11_parse(data)


TOKEN = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~!#$&'*+^`|", min_size=1
)
VALUE = st.binary(max_size=30).map(
    lambda b: bytes(c for c in b if c == 0x09 or 0x20 <= c <= 0x7E).strip(b" \t")
)
PATH = st.text("abcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/%", max_size=30)


@st.composite
def valid_requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"]))
    path = b"/" + draw(PATH).replace("%", "%25").encode()
    query = draw(st.one_of(st.just(b""), PATH.map(lambda q: b"?" + q.replace("%", "%25").encode())))
    names = draw(st.lists(TOKEN.map(str.encode), max_size=8))
    names = [
        n
        for n in names
        if n.lower()
        not in (
            b"content-length",
            b"transfer-encoding",
            b"connection",
            b"upgrade",
            b"expect",
            b"host",  # a second Host header is an error to h11
        )
    ]
    headers = b"".join(b"%s: %s\r\n" % (n, draw(VALUE)) for n in names)
    body = draw(st.binary(max_size=50))
    framing = draw(st.sampled_from(["length", "chunked"]))
    if framing == "length":
        headers += b"Content-Length: %d\r\n" % len(body)
        encoded = body
    else:
        headers += b"Transfer-Encoding: chunked\r\n"
        encoded = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    return method + b" " + path + query + b" HTTP/1.1\r\nHost: h\r\n" + headers + b"\r\n" + encoded


@settings(max_examples=200, deadline=None)
@given(st.lists(valid_requests(), min_size=1, max_size=3))
def test_random_valid_pipelines_agree_with_h11(requests: list[bytes]) -> None:
    data = b"".join(requests)
    assert ours_parse(data) == h11_parse(data)


def splits(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    positions = sorted({c % (len(data) + 1) for c in cuts})
    start = 0
    for pos in [*positions, len(data)]:
        yield data[start:pos]
        start = pos


@st.composite
def mutated_requests(draw: st.DrawFn) -> bytes:
    data = bytearray(b"".join(draw(st.lists(valid_requests(), min_size=1, max_size=2))))
    for _ in range(draw(st.integers(0, 4))):
        pos = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "insert", "delete"]))
        if action == "insert":
            noise = [b"\r\n", b"\n", b" ", b":", b"\x00", b"\xff", b"0"]
            data[pos:pos] = draw(st.sampled_from(noise))
        elif action == "delete":
            del data[pos : pos + draw(st.integers(1, 5))]
        elif pos < len(data):
            data[pos] = draw(st.integers(0, 255))
    return bytes(data)


def check_grammar(events: list[Event]) -> None:
    """Request, bytes..., END_OF_MESSAGE, repeated; body chunks never empty."""
    in_message = False
    for event in events:
        if isinstance(event, Request):
            assert not in_message
            in_message = True
        elif isinstance(event, bytes):
            assert in_message and event
        else:
            assert event is END_OF_MESSAGE and in_message
            in_message = False


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(mutated_requests(), st.binary(max_size=200)),
    st.lists(st.integers(0, 10_000), max_size=6),
)
def test_arbitrary_bytes_raise_nothing_but_http_error(data: bytes, cuts: list[int]) -> None:
    parser = HTTPParser(
        max_request_line_size=64, max_header_size=64, max_headers=6, max_body_size=40
    )
    events: list[Event] = []
    try:
        for piece in splits(data, cuts):
            if piece:
                parser.feed(piece)
            events += drain(parser)
        parser.feed(b"")
    except HTTPError as exc:
        assert exc.status in (400, 413, 414, 431, 501, 505)
    events += drain(parser)
    check_grammar(events)


# -- responses -------------------------------------------------------------------------


def respond(
    req: Request, status: int, headers: list[tuple[bytes, bytes]], *bodies: tuple[bytes, bool]
) -> tuple[list[bytes], ResponseEncoder]:
    enc = ResponseEncoder(req)
    assert not enc.started
    enc.start(status, headers)
    assert enc.started and not enc.complete
    writes = [enc.body(data, more) for data, more in bodies]
    return writes, enc


def test_single_body_gets_content_length_in_one_write() -> None:
    writes, enc = respond(request(), 200, [(b"content-type", b"text/plain")], (b"hello", False))
    assert writes == [
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
        + STAMP
        + b"content-length: 5\r\n\r\nhello"
    ]
    assert enc.complete and enc.keep_alive


def test_streamed_body_is_chunked_on_http11() -> None:
    writes, enc = respond(
        request(), 200, [], (b"ab", True), (b"", True), (b"cde", True), (b"", False)
    )
    assert writes == [
        b"HTTP/1.1 200 OK\r\n" + STAMP + b"transfer-encoding: chunked\r\n\r\n2\r\nab\r\n",
        b"",
        b"3\r\ncde\r\n",
        b"0\r\n\r\n",
    ]
    assert enc.keep_alive


@pytest.mark.parametrize(
    ("req", "headers"),
    [
        (request(), [(b"content-length", b"7")]),  # framed by the app's length
        (request(), []),  # chunked
        (request(http_version="1.0", keep_alive=True), []),  # close-delimited
        (request(method="HEAD"), []),  # no body at all
    ],
)
def test_a_streams_head_asked_for_alone_changes_no_byte(
    req: Request, headers: list[tuple[bytes, bytes]]
) -> None:
    """``body(b"", True)`` then ``body(chunk, True)`` writes what ``body(chunk, True)`` does:
    the connection sends a large first chunk after its head instead of copying it behind."""
    chunk = b"abcd"
    joined, _ = respond(req, 200, headers, (chunk, True), (b"efg", False))
    apart, _ = respond(req, 200, headers, (b"", True), (chunk, True), (b"efg", False))
    assert b"".join(apart) == b"".join(joined)
    if req.http_version == "1.0" or headers:
        assert apart[1] is chunk  # sent from the app's own bytes: no copy


def test_streamed_body_with_data_in_the_last_message() -> None:
    writes, _ = respond(request(), 200, [], (b"", True), (b"end", False))
    assert writes[1] == b"3\r\nend\r\n0\r\n\r\n"


def test_streamed_body_is_close_delimited_on_http10() -> None:
    req = request(http_version="1.0", keep_alive=True)
    writes, enc = respond(req, 200, [], (b"ab", True), (b"c", False))
    assert writes == [
        b"HTTP/1.1 200 OK\r\n" + STAMP + b"connection: close\r\n\r\nab",
        b"c",
    ]
    assert not enc.keep_alive


def test_http10_keep_alive_is_confirmed_when_length_is_known() -> None:
    req = request(http_version="1.0", keep_alive=True)
    writes, enc = respond(req, 200, [], (b"x", False))
    assert writes == [
        b"HTTP/1.1 200 OK\r\n" + STAMP + b"content-length: 1\r\nconnection: keep-alive\r\n\r\nx"
    ]
    assert enc.keep_alive


def test_app_transfer_encoding_chunked_is_honoured_once() -> None:
    writes, _ = respond(request(), 200, [(b"Transfer-Encoding", b"chunked")], (b"a", False))
    assert writes == [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n" + STAMP + b"\r\n1\r\na\r\n0\r\n\r\n"
    ]


def test_head_sends_head_only_with_computed_length() -> None:
    writes, enc = respond(request(method="HEAD"), 200, [], (b"would-be body", False))
    assert writes == [b"HTTP/1.1 200 OK\r\n" + STAMP + b"content-length: 13\r\n\r\n"]
    assert enc.keep_alive


def test_head_keeps_app_content_length_and_drops_body() -> None:
    writes, enc = respond(request(method="HEAD"), 200, [(b"content-length", b"1000")], (b"", False))
    assert writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n" + STAMP + b"\r\n"]
    assert enc.keep_alive


def test_head_of_a_streamed_response_announces_chunking_without_body() -> None:
    writes, _ = respond(request(method="HEAD"), 200, [], (b"abc", True), (b"def", False))
    assert writes == [b"HTTP/1.1 200 OK\r\n" + STAMP + b"transfer-encoding: chunked\r\n\r\n", b""]


@pytest.mark.parametrize("status", [204, 304, 103])
def test_bodyless_statuses_never_carry_a_body(status: int) -> None:
    writes, enc = respond(request(), status, [], (b"ignored", False))
    assert writes == [http11._status_line(status) + STAMP + b"\r\n"]
    assert enc.keep_alive


def test_app_content_length_is_enforced() -> None:
    enc = ResponseEncoder(request())
    enc.start(200, [(b"content-length", b"4")])
    assert enc.body(b"abc", True) == (
        b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n" + STAMP + b"\r\nabc"
    )
    with pytest.raises(ValueError, match="content-length"):
        enc.body(b"de", False)


def test_a_content_length_streams_chunks_go_out_as_they_are_and_are_counted() -> None:
    enc = ResponseEncoder(request())
    enc.start(200, [(b"content-length", b"6")])
    assert enc.body(b"", True).endswith(b"\r\n\r\n")  # the head alone
    chunk = b"abc"
    assert enc.body(chunk, True) is chunk  # no copy, no join
    with pytest.raises(ValueError, match="content-length"):
        enc.body(b"defg", True)  # past the declared length, more still to come
    done = ResponseEncoder(request())
    done.start(200, [(b"content-length", b"3")])
    done.body(b"", True)
    assert done.body(b"abc", False) == b"abc" and done.complete
    with pytest.raises(RuntimeError, match="complete"):
        done.body(b"", True)


def test_short_body_for_app_content_length_closes_the_connection() -> None:
    writes, enc = respond(request(), 200, [(b"content-length", b"4")], (b"abc", False))
    assert writes[0].endswith(b"\r\n\r\nabc")
    assert enc.complete and not enc.keep_alive


@pytest.mark.parametrize(
    ("req", "headers", "keep_alive", "close_header"),
    [
        (request(), [], True, False),
        (request(keep_alive=False), [], False, True),
        (request(), [(b"Connection", b"Close")], False, False),
        (request(upgrade=b"h2c"), [], False, True),
        (request(http_version="1.0", keep_alive=False), [], False, True),
    ],
)
def test_keep_alive_decisions(
    req: Request, headers: list[tuple[bytes, bytes]], keep_alive: bool, close_header: bool
) -> None:
    writes, enc = respond(req, 200, headers, (b"ok", False))
    assert enc.keep_alive is keep_alive
    assert (b"\r\nconnection: close\r\n" in writes[0]) is close_header
    assert writes[0].lower().count(b"connection:") <= 1


def test_app_date_and_server_are_not_duplicated() -> None:
    writes, _ = respond(
        request(), 200, [(b"Date", b"yesterday"), (b"Server", b"mine")], (b"", False)
    )
    assert writes == [
        b"HTTP/1.1 200 OK\r\nDate: yesterday\r\nServer: mine\r\ncontent-length: 0\r\n\r\n"
    ]


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        (99, []),
        (1000, []),
        (True, []),
        (200, [(b"x", b"a\r\nInjected: 1")]),
        (200, [(b"x", b"a\nb")]),
        (200, [(b"x", b"a\x00b")]),
        (200, [(b"bad name", b"v")]),
        (200, [(b"bad:name", b"v")]),
        (200, [(b"", b"v")]),
        (200, [(b"content-length", b"-1")]),
        (200, [(b"content-length", b"1"), (b"content-length", b"2")]),
        (200, [(b"content-length", b"1"), (b"transfer-encoding", b"chunked")]),
    ],
)
def test_invalid_response_heads_are_value_errors(
    status: int, headers: list[tuple[bytes, bytes]]
) -> None:
    with pytest.raises(ValueError):
        ResponseEncoder(request()).start(status, headers)


def test_a_remembered_head_frames_and_validates_like_the_first() -> None:
    """Heads are remembered whole (by their pairs): the second response with the same
    pairs is byte for byte the first, a changed list is a new head, and what the cache
    never holds (connection: close, transfer codings, unhashable pairs) is decided anew."""
    pairs = [(b"content-type", b"text/x-remembered"), (b"content-length", b"2")]
    first, _ = respond(request(), 200, pairs, (b"ok", False))
    again, enc = respond(request(), 200, pairs, (b"ok", False))
    assert again == first and enc.keep_alive
    pairs.append((b"x-extra", b"1"))  # same list object, other pairs: another head
    (changed,), _ = respond(request(), 200, pairs, (b"ok", False))
    assert b"x-extra: 1\r\n" in changed
    with pytest.raises(ValueError):  # the remembered length still bounds the body
        respond(request(), 200, pairs[:2], (b"too long", False))
    closing = [(b"content-type", b"text/x-remembered"), (b"connection", b"close")]
    for _ in range(2):
        _, enc = respond(request(), 200, closing, (b"ok", False))
        assert not enc.keep_alive
    coded = [(b"content-type", b"text/x-remembered"), (b"transfer-encoding", b"chunked")]
    for version in ("1.1", "1.0", "1.1"):
        (head, *_), _ = respond(request(http_version=version), 200, coded, (b"ab", True))
        assert (b"transfer-encoding: chunked" in head) == (version == "1.1")
    unhashable = [[b"content-type", b"text/x-remembered"]]
    for _ in range(2):
        (body,), _ = respond(request(), 200, unhashable, (b"ok", False))  # type: ignore[arg-type]
        assert b"content-type: text/x-remembered\r\n" in body


def test_misuse_is_a_runtime_error() -> None:
    enc = ResponseEncoder(request())
    with pytest.raises(RuntimeError):
        enc.body(b"", False)
    enc.start(200, [])
    with pytest.raises(RuntimeError):
        enc.start(200, [])
    enc.body(b"", False)
    with pytest.raises(RuntimeError):
        enc.body(b"", False)


def test_unknown_status_gets_an_empty_reason() -> None:
    writes, _ = respond(request(), 599, [], (b"", False))
    assert writes[0].startswith(b"HTTP/1.1 599 \r\n")


def test_simple_response_bytes() -> None:
    assert simple_response(400, b"Bad request") == (
        b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n"
        + STAMP
        + b"connection: close\r\ncontent-length: 11\r\n\r\nBad request"
    )
    assert simple_response(204, keep_alive=True, headers=[(b"x-a", b"1")]) == (
        b"HTTP/1.1 204 No Content\r\nx-a: 1\r\n" + STAMP + b"\r\n"
    )


def test_real_date_header_is_an_imf_fixdate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()
    line = http11._date_header()
    assert line.startswith(b"date: ") and line.endswith(b" GMT\r\n")
    assert http11._date_header() is line  # cached within the second


@pytest.mark.parametrize(
    ("method", "version", "bodies"),
    [
        ("GET", "1.1", [(b"hello", False)]),
        ("GET", "1.1", [(b"he", True), (b"", True), (b"llo", False)]),
        ("GET", "1.0", [(b"he", True), (b"llo", False)]),
        ("HEAD", "1.1", [(b"hello", False)]),
    ],
)
def test_h11_client_reads_our_responses(
    method: str, version: str, bodies: list[tuple[bytes, bool]]
) -> None:
    client = h11.Connection(h11.CLIENT)  # h11 only speaks 1.1; our side acts as if 1.0
    client.send(h11.Request(method=method, target="/", headers=[("Host", "h")]))
    client.send(h11.EndOfMessage())
    writes, enc = respond(
        request(method=method, http_version=version, keep_alive=version == "1.1"), 200, [], *bodies
    )
    client.receive_data(b"".join(writes))
    if not enc.keep_alive:
        client.receive_data(b"")
    response = client.next_event()
    assert isinstance(response, h11.Response) and response.status_code == 200
    body = b""
    while isinstance(event := client.next_event(), h11.Data):
        body += event.data
    assert isinstance(event, h11.EndOfMessage)
    assert body == (b"" if method == "HEAD" else b"hello")


def test_app_transfer_encoding_is_dropped_for_http10_and_body_close_delimited() -> None:
    req = request(http_version="1.0", keep_alive=True)
    writes, enc = respond(req, 200, [(b"transfer-encoding", b"chunked")], (b"raw", False))
    assert writes == [b"HTTP/1.1 200 OK\r\n" + STAMP + b"connection: close\r\n\r\nraw"]
    assert not enc.keep_alive


def test_a_bug_in_the_parser_is_not_disguised_as_a_bad_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: object) -> Request:
        raise ZeroDivisionError

    monkeypatch.setattr(http11, "Request", broken)
    with pytest.raises(ZeroDivisionError):
        HTTPParser().feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")

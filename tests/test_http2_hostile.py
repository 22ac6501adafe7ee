"""HTTP/2 under hostile input, over a real socket: each flood of CVE-2019-9512..9518 and
CVE-2023-44487 ends the connection with GOAWAY(ENHANCE_YOUR_CALM), streams over the
concurrency limit are refused one by one, and the preface and request bodies have
deadlines.  Frames are written with hyperframe (an honest client would not send them)
after an ``h2`` client's preface."""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import http_apps
import trio
import trio.testing
from hpack import Decoder, Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from test_http2 import frames_in

from hornbeam_trio.testing import run_server

ENHANCE_YOUR_CALM = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
REFUSED_STREAM = h2.errors.ErrorCodes.REFUSED_STREAM
REQUEST = [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "x")]
POST = [(":method", "POST"), (":path", "/"), (":scheme", "http"), (":authority", "x")]


class Raw:
    """A client that writes any frame: an h2 preface and SETTINGS, then bytes we make."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.encoder = Encoder()
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        self.preface = client.data_to_send()
        self.frames: list[Frame] = []
        self.rest = b""

    @classmethod
    async def connect(cls, port: int) -> Raw:
        raw = cls(await trio.open_tcp_stream("127.0.0.1", port))
        await raw.stream.send_all(raw.preface)
        return raw

    def headers(self, stream_id: int, headers: list[tuple[str, str]], *, end: bool) -> bytes:
        frame = HeadersFrame(stream_id)
        frame.data = self.encoder.encode(headers)
        frame.flags.add("END_HEADERS")
        if end:
            frame.flags.add("END_STREAM")
        return frame.serialize()

    async def send(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except trio.BrokenResourceError:
            pass  # the server closed first; what it sent before is still readable

    async def read_until_closed(self) -> list[Frame]:
        """Every frame until the server closes (fails after 10 s)."""
        with trio.fail_after(10):
            while True:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    data = b""
                if not data:
                    return self.frames
                new, self.rest = frames_in(self.rest + data)
                self.frames += new

    async def read_until(self, done: Any) -> None:
        with trio.fail_after(10):
            while not done(self.frames):
                data = await self.stream.receive_some(65536)
                assert data, "the server closed the connection"
                new, self.rest = frames_in(self.rest + data)
                self.frames += new


def goaway(frames: list[Frame]) -> GoAwayFrame:
    found = [f for f in frames if isinstance(f, GoAwayFrame)]
    assert found, f"no GOAWAY among {len(frames)} frames"
    return found[-1]


def ping(i: int) -> bytes:
    return PingFrame(0, opaque_data=i.to_bytes(8, "big")).serialize()


async def test_rapid_reset_is_answered_with_goaway_enhance_your_calm() -> None:
    """HEADERS then RST_STREAM, 2000 times (CVE-2023-44487): GOAWAY(ENHANCE_YOUR_CALM)
    and close after the reset budget (1000); no app runs for a stream reset in the read
    that opened it."""
    calls = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal calls
        if scope["type"] == "http":
            calls += 1
            await http_apps.respond(send, body=b"x")

    async with run_server(app) as server:
        raw = await Raw.connect(server.port)
        burst = b"".join(
            raw.headers(sid, REQUEST, end=True) + RstStreamFrame(sid, error_code=8).serialize()
            for sid in range(1, 4001, 2)
        )
        await raw.send(burst)
        frames = await raw.read_until_closed()
    assert goaway(frames).error_code == ENHANCE_YOUR_CALM
    assert calls < 100


async def test_reset_streams_count_against_the_limit_while_their_apps_run() -> None:
    """Streams reset by the client whose apps have not ended still hold their place: a
    new stream beyond ``--http2-max-concurrent-streams`` gets REFUSED_STREAM, so resets
    cannot pile up running apps."""
    started = 0
    all_started = trio.Event()
    release = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal started
        if scope["type"] != "http":
            return
        started += 1
        if started == 5:
            all_started.set()
        await release.wait()  # ignores the disconnect, as a busy app does

    async with run_server(app, http2_max_concurrent_streams=5) as server:
        raw = await Raw.connect(server.port)
        await raw.send(b"".join(raw.headers(sid, REQUEST, end=True) for sid in range(1, 11, 2)))
        with trio.fail_after(10):
            await all_started.wait()
        await raw.send(
            b"".join(RstStreamFrame(sid, error_code=8).serialize() for sid in range(1, 11, 2))
        )
        await raw.send(raw.headers(11, REQUEST, end=True))
        await raw.read_until(
            lambda frames: any(isinstance(f, RstStreamFrame) and f.stream_id == 11 for f in frames)
        )
        refused = [f for f in raw.frames if isinstance(f, RstStreamFrame) and f.stream_id == 11]
        assert refused[0].error_code == REFUSED_STREAM
        assert started == 5
        release.set()
        await raw.stream.aclose()


async def test_streams_over_the_limit_in_one_write_are_refused_not_the_connection() -> None:
    """15 requests at once with a limit of 10: 5 RST_STREAM(REFUSED_STREAM), a stream
    error (RFC 9113 5.1.2); the 10 others are answered on the same connection."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await http_apps.respond(send, body=b"ok")

    async with run_server(app, http2_max_concurrent_streams=10) as server:
        raw = await Raw.connect(server.port)
        await raw.send(b"".join(raw.headers(sid, REQUEST, end=True) for sid in range(1, 31, 2)))

        def settled(frames: list[Frame]) -> bool:
            ended = {f.stream_id for f in frames if "END_STREAM" in f.flags}
            reset = {f.stream_id for f in frames if isinstance(f, RstStreamFrame)}
            return len(ended | reset) == 15

        await raw.read_until(settled)
        await raw.stream.aclose()
    refused = [f for f in raw.frames if isinstance(f, RstStreamFrame)]
    assert len(refused) == 5
    assert {f.error_code for f in refused} == {REFUSED_STREAM}
    assert not any(isinstance(f, GoAwayFrame) for f in raw.frames)


async def test_ping_flood_is_answered_with_goaway() -> None:
    async with run_server(http_apps.hello) as server:
        raw = await Raw.connect(server.port)
        await raw.send(b"".join(ping(i) for i in range(1000)))
        frames = await raw.read_until_closed()
    assert goaway(frames).error_code == ENHANCE_YOUR_CALM
    assert sum(isinstance(f, PingFrame) for f in frames) <= 100


async def test_settings_flood_is_answered_with_goaway() -> None:
    async with run_server(http_apps.hello) as server:
        raw = await Raw.connect(server.port)
        await raw.send(SettingsFrame(0).serialize() * 1000)
        frames = await raw.read_until_closed()
    assert goaway(frames).error_code == ENHANCE_YOUR_CALM
    assert sum(isinstance(f, SettingsFrame) and "ACK" in f.flags for f in frames) <= 101


async def test_continuation_flood_is_cut_off_at_the_header_size_limit() -> None:
    """A header block in endless 16 KiB CONTINUATION frames: GOAWAY(ENHANCE_YOUR_CALM) once
    the block passes ``--max-request-head-size`` (plus one frame), long before h2's own
    bound of 64 frames (1 MiB)."""
    async with run_server(http_apps.hello, max_request_head_size=16384) as server:
        raw = await Raw.connect(server.port)
        head = HeadersFrame(1)
        head.data = raw.encoder.encode(REQUEST)
        await raw.send(head.serialize())
        sent = 0
        with trio.move_on_after(10):
            while sent < 60:  # under h2's 64-frame bound
                await raw.send(ContinuationFrame(1, data=b"\x00" * 16384).serialize())
                sent += 1
        frames = await raw.read_until_closed()
    assert goaway(frames).error_code == ENHANCE_YOUR_CALM


async def test_empty_data_frame_flood_is_answered_with_goaway() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await http_apps.read_body(receive)
            await http_apps.respond(send, body=b"x")

    async with run_server(app) as server:
        raw = await Raw.connect(server.port)
        await raw.send(raw.headers(1, POST, end=False))
        await raw.send(DataFrame(1, data=b"").serialize() * 1000)
        frames = await raw.read_until_closed()
    assert goaway(frames).error_code == ENHANCE_YOUR_CALM


async def test_priority_flood_is_answered_with_goaway() -> None:
    async with run_server(http_apps.hello) as server:
        raw = await Raw.connect(server.port)
        await raw.send(PriorityFrame(1, depends_on=0, stream_weight=15).serialize() * 5000)
        frames = await raw.read_until_closed()
    assert goaway(frames).error_code == ENHANCE_YOUR_CALM


async def test_window_update_flood_is_answered_with_goaway() -> None:
    async with run_server(http_apps.hello) as server:
        raw = await Raw.connect(server.port)
        await raw.send(WindowUpdateFrame(0, window_increment=1).serialize() * 5000)
        frames = await raw.read_until_closed()
    assert goaway(frames).error_code == ENHANCE_YOUR_CALM


async def test_window_update_overflow_is_a_flow_control_error() -> None:
    async with run_server(http_apps.hello) as server:
        raw = await Raw.connect(server.port)
        await raw.send(WindowUpdateFrame(0, window_increment=2**31 - 1).serialize())
        frames = await raw.read_until_closed()
    assert goaway(frames).error_code == h2.errors.ErrorCodes.FLOW_CONTROL_ERROR


async def test_a_client_that_never_completes_its_preface_is_closed_at_the_timeout() -> None:
    """The preface's magic but no SETTINGS: closed after ``--timeout``, even with the idle
    timeout off (``--keepalive 0``)."""
    async with run_server(http_apps.hello, timeout=300, keepalive=0) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        await stream.send_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        with trio.fail_after(5):
            while await stream.receive_some(65536):
                pass


async def test_a_stalled_request_body_gets_408_and_the_connection_goes_on() -> None:
    """A POST whose body stops coming for ``--timeout`` while its app waits: 408 on that
    stream; the app's receive() gives http.disconnect; the connection serves another
    request."""
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "POST":
            message = await receive()
            seen.append(message["type"])
            message = await receive()
            seen.append(message["type"])
            return
        await http_apps.respond(send, body=b"fine")

    async with run_server(app, timeout=300) as server:
        raw = await Raw.connect(server.port)
        await raw.send(raw.headers(1, POST, end=False) + DataFrame(1, data=b"abc").serialize())
        await raw.read_until(
            lambda fs: any("END_STREAM" in f.flags for f in fs if f.stream_id == 1)
        )
        await raw.send(raw.headers(3, REQUEST, end=True))
        await raw.read_until(
            lambda fs: any("END_STREAM" in f.flags for f in fs if f.stream_id == 3)
        )
        await raw.stream.aclose()
    decoder = Decoder()  # the server's header blocks, in the order it sent them
    statuses = {
        f.stream_id: dict(decoder.decode(f.data))[":status"]
        for f in raw.frames
        if isinstance(f, HeadersFrame)
    }
    assert statuses == {1: "408", 3: "200"}
    assert seen == ["http.request", "http.disconnect"]


async def test_a_stream_the_client_reset_logs_no_error_when_its_app_returns(
    caplog: Any,
) -> None:
    """An app that sees http.disconnect (its client reset the stream) and returns without
    a response did what it should: no "returned without a complete response" ERROR, or a
    rapid reset under the limits writes ~100 ERROR lines a second per connection."""
    ended = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive())["type"] != "http.disconnect":
            pass
        ended.set()

    async with run_server(app) as server:
        raw = await Raw.connect(server.port)
        await raw.send(raw.headers(1, REQUEST, end=False))
        await trio.testing.wait_all_tasks_blocked()
        await raw.send(RstStreamFrame(1, error_code=8).serialize())
        with trio.fail_after(5):
            await ended.wait()
        await trio.testing.wait_all_tasks_blocked()
        await raw.stream.aclose()
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.records


async def test_the_servers_own_answer_ends_its_stream_when_the_window_is_shut() -> None:
    """A client whose stream window is 0 (SETTINGS_INITIAL_WINDOW_SIZE) asks for more than
    ``--max-request-body-size``: the 413 head ends the stream (no body, content-length 0),
    instead of a head with a body that may never go (the stream left half answered)."""
    async with run_server(http_apps.hello, max_request_body_size=10) as server:
        raw = await Raw.connect(server.port)
        await raw.send(
            SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0}).serialize()
        )
        post = [(":method", "POST"), (":path", "/"), (":scheme", "http"), (":authority", "x")]
        await raw.send(raw.headers(1, [*post, ("content-length", "100")], end=False))
        await raw.read_until(
            lambda frames: any(isinstance(f, HeadersFrame) and f.stream_id == 1 for f in frames)
        )
        head = next(f for f in raw.frames if isinstance(f, HeadersFrame) and f.stream_id == 1)
        assert "END_STREAM" in head.flags
        fields = dict(Decoder().decode(head.data))
        assert fields[":status"] == "413" and fields["content-length"] == "0"
        assert not [f for f in raw.frames if isinstance(f, DataFrame) and f.stream_id == 1]
        await raw.stream.aclose()

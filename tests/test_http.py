"""HTTP/1.1 end to end: real sockets (or in-memory streams with a mock clock for timeouts),
exact bytes where a client library would hide the behaviour, stdlib http.client and h11
(through the toolkit) for ordinary requests, Starlette and FastAPI on top.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

import http_apps
import pytest
import trio
import trio.testing
from http_apps import RawHTTP

from hornbeam_trio.testing import AppFailed, run_server
from hornbeam_trio.transport import CHECKPOINT_EVERY, LINGER_RESET


def get(path: bytes = b"/", *, extra: bytes = b"") -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: test\r\n%s\r\n" % (path, extra)


async def raw(server: Any) -> RawHTTP:
    return RawHTTP(await server.open_stream())


# -- the http scope ------------------------------------------------------------------------


async def test_scope_carries_every_field() -> None:
    async with run_server(http_apps.scope_echo) as server:
        stream = await server.open_stream()
        client = RawHTTP(stream)
        await client.send(
            b"GET /caf%C3%A9/a%2Fb?x=1&y=%20z HTTP/1.1\r\n"
            b"Host: example.test\r\nX-Custom: Some Value\r\nConnection: close\r\n\r\n"
        )
        response = await client.read_response()
        assert isinstance(stream, trio.SocketStream)
        local = stream.socket.getsockname()

    assert response.status == 200
    scope = response.json()
    assert scope["type"] == "http"
    assert scope["asgi"]["version"] == "3.0"
    assert scope["method"] == "GET"
    assert scope["path"] == "/café/a/b"  # percent-decoded, UTF-8
    assert scope["raw_path"] == "/caf%C3%A9/a%2Fb"  # as sent
    assert scope["query_string"] == "x=1&y=%20z"  # not decoded
    assert scope["root_path"] == ""
    assert scope["scheme"] == "http"
    assert scope["http_version"] == "1.1"
    assert ["host", "example.test"] in scope["headers"]
    assert ["x-custom", "Some Value"] in scope["headers"]  # lower-case names, values kept
    assert scope["client"] == [local[0], local[1]]
    assert scope["server"] == ["127.0.0.1", server.port]


async def test_root_path_is_prefixed_to_path() -> None:
    async with run_server(http_apps.scope_echo, root_path="/api") as server:
        response = await server.get("/users?id=3")
    scope = response.json()
    assert scope["root_path"] == "/api"
    assert scope["path"] == "/api/users"
    assert scope["raw_path"] == "/users"
    assert scope["query_string"] == "id=3"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PURGE"])
async def test_method_is_passed_through(method: str) -> None:
    async with run_server(http_apps.scope_echo) as server:
        response = await server.request(method, "/m", body=b"x")
    assert response.status == 200
    assert response.json()["method"] == method


async def test_http_10_request() -> None:
    async with run_server(http_apps.scope_echo) as server:
        client = await raw(server)
        await client.send(b"GET /old HTTP/1.0\r\n\r\n")
        response = await client.read_response()
        # HTTP/1.0 without keep-alive: one response, then the server closes.
        await client.assert_closed()
    assert response.json()["http_version"] == "1.0"
    assert response.header("content-length") == str(len(response.body))


async def test_http_10_streamed_response_is_close_delimited() -> None:
    async with run_server(http_apps.streamer) as server:
        client = await raw(server)
        await client.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        response = await client.read_response()  # no length, no chunking: body runs to EOF
    assert response.header("transfer-encoding") is None
    assert response.header("content-length") is None
    assert response.body == b"one,two,three"


async def test_http_10_keep_alive_is_honoured() -> None:
    async with run_server(http_apps.hello) as server:
        client = await raw(server)
        for _ in range(2):
            await client.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            response = await client.read_response()
            assert response.body == b"hello"
            assert response.header("connection") == "keep-alive"


# -- request bodies ------------------------------------------------------------------------


async def test_chunked_upload_arrives_in_many_receive_calls() -> None:
    app = http_apps.BodyRecorder()
    async with run_server(app) as server:
        client = await raw(server)
        await client.send(b"POST /up HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in (b"first", b"second", b"third"):
            await client.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            # The app has this piece before the client writes the next one.
            with trio.fail_after(5):
                message = await app.messages.receive()
            assert message == {"type": "http.request", "body": piece, "more_body": True}
        await client.send(b"0\r\n\r\n")
        with trio.fail_after(5):
            last = await app.messages.receive()
        assert last == {"type": "http.request", "body": b"", "more_body": False}
        response = await client.read_response()
    assert response.status == 200
    assert response.body == b"firstsecondthird"


async def test_content_length_body_in_several_writes() -> None:
    app = http_apps.BodyRecorder()
    async with run_server(app) as server:
        client = await raw(server)
        await client.send(b"PUT / HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\nabcd")
        with trio.fail_after(5):
            first = await app.messages.receive()
        assert first == {"type": "http.request", "body": b"abcd", "more_body": True}
        await client.send(b"efghij")
        with trio.fail_after(5):
            second = await app.messages.receive()
        assert second["body"] == b"efghij"
        response = await client.read_response()
    # The final message may carry the last bytes or be empty; either way it says "no more".
    assert response.body == b"abcdefghij"


async def test_request_without_body_is_one_empty_message() -> None:
    async with run_server(http_apps.body_echo) as server:
        response = await server.get("/")
    assert response.json() == {"body": "", "messages": [["http.request", 0, False]]}


async def test_large_body_is_delivered_whole() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    async with run_server(http_apps.body_echo) as server:
        response = await server.request("POST", "/", body=body, timeout=10)
    report = response.json()
    assert report["body"].encode("latin-1") == body
    *data, last = report["messages"]
    assert all(more for _, _, more in data)
    assert last[2] is False


# -- responses -----------------------------------------------------------------------------


async def test_single_body_gets_content_length() -> None:
    async with run_server(http_apps.hello) as server:
        client = await raw(server)
        await client.send(get())
        response = await client.read_response()
    assert response.header("content-length") == "5"
    assert response.header("transfer-encoding") is None
    assert response.header("server") == "hornbeam-trio"
    assert response.header("date") is not None
    assert response.body == b"hello"


async def test_streamed_response_is_chunked() -> None:
    async with run_server(http_apps.streamer) as server:
        client = await raw(server)
        await client.send(get())
        response = await client.read_response()
        # Still usable afterwards: the last chunk ended the response.
        await client.send(get())
        again = await client.read_response()
    assert response.chunked
    assert response.header("content-length") is None
    assert response.body == b"one,two,three"
    assert again.body == b"one,two,three"


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_a_stream_whose_first_chunk_is_large_arrives_whole_and_the_connection_goes_on(
    declared: bool,
) -> None:
    """A first chunk of HEAD_APART_AT bytes or more goes out after its head, not copied
    behind it: the client still reads one well-framed response, twice on one connection."""
    from hornbeam_trio.http_conn import HEAD_APART_AT

    chunks = [b"a" * HEAD_APART_AT, b"b" * 1000, b"c" * (2 * HEAD_APART_AT)]
    total = sum(map(len, chunks))

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-length", b"%d" % total)] if declared else []
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async with run_server(app) as server:
        client = await raw(server)
        for _ in range(2):
            await client.send(get())
            response = await client.read_response()
            assert response.status == 200
            assert response.body == b"".join(chunks)
            assert response.chunked is not declared


async def test_a_response_streamed_without_blocking_still_lets_other_tasks_run() -> None:
    """Each body write the kernel takes at once skips the coroutine of send_all(), but
    every CHECKPOINT_EVERY writes still yield: a fast stream never starves the server."""
    chunks = 8 * CHECKPOINT_EVERY
    ticks = 0
    seen: list[int] = []

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        before = ticks
        for _ in range(chunks):
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
        seen.append(ticks - before)
        await send({"type": "http.response.body", "body": b""})

    async with run_server(app) as server, trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        client = await raw(server)
        await client.send(get())
        response = await client.read_response()
        nursery.cancel_scope.cancel()
    assert response.body == b"x" * chunks
    assert seen and seen[0] >= chunks // CHECKPOINT_EVERY - 1


async def test_head_has_headers_but_no_body() -> None:
    async with run_server(http_apps.hello) as server:
        client = await raw(server)
        # HEAD then GET in one write: a stray body after the HEAD response would be
        # read as the start of the second response and break it.
        await client.send(
            b"HEAD / HTTP/1.1\r\nHost: test\r\n\r\n" + get(extra=b"Connection: close\r\n")
        )
        head = await client.read_response(method="HEAD")
        response = await client.read_response()
        await client.assert_closed()
    assert head.status == 200
    assert head.header("content-length") == "5"
    assert head.body == b""
    assert response.body == b"hello"


# -- connection reuse ----------------------------------------------------------------------


async def test_keep_alive_two_requests_on_one_connection() -> None:
    async with run_server(http_apps.scope_echo) as server:
        client = await raw(server)
        await client.send(get(b"/one"))
        first = await client.read_response()
        await client.send(get(b"/two"))
        second = await client.read_response()
        assert server.stats()["server_connections"] == 1
    assert first.header("connection") is None  # HTTP/1.1 default: keep-alive
    assert (first.json()["path"], second.json()["path"]) == ("/one", "/two")
    assert first.json()["client"] == second.json()["client"]


async def test_pipelined_requests_answered_in_order() -> None:
    async with run_server(http_apps.scope_echo) as server:
        client = await raw(server)
        await client.send(
            get(b"/first")
            + b"POST /second HTTP/1.1\r\nHost: test\r\nContent-Length: 3\r\n\r\nabc"
            + get(b"/third", extra=b"Connection: close\r\n")
        )
        responses = [await client.read_response() for _ in range(3)]
        await client.assert_closed()
    assert [r.json()["path"] for r in responses] == ["/first", "/second", "/third"]
    assert [r.json()["method"] for r in responses] == ["GET", "POST", "GET"]
    assert responses[2].header("connection") == "close"


async def test_unread_body_is_skipped_before_the_next_request() -> None:
    async with run_server(http_apps.answers_without_reading) as server:
        client = await raw(server)
        await client.send(
            b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\nhello" + get()
        )
        first = await client.read_response()
        second = await client.read_response()
    assert (first.status, second.status) == (413, 413)


async def test_stdlib_http_client_keep_alive_and_chunked_upload() -> None:
    async with run_server(http_apps.body_echo) as server:

        def talk() -> list[tuple[int, Any]]:
            conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
            try:
                conn.request("GET", "/a")
                first = conn.getresponse()
                results = [(first.status, json.loads(first.read()))]
                sock = conn.sock
                conn.request("POST", "/b", body=iter([b"ab", b"cd", b"ef"]), encode_chunked=True)
                second = conn.getresponse()
                results.append((second.status, json.loads(second.read())))
                assert conn.sock is sock, "the second request needed a new connection"
                return results
            finally:
                conn.close()

        with trio.fail_after(10):
            results = await trio.to_thread.run_sync(talk)
    assert results[0] == (200, {"body": "", "messages": [["http.request", 0, False]]})
    assert results[1][0] == 200
    assert results[1][1]["body"] == "abcdef"
    assert results[1][1]["messages"][-1][2] is False


# -- Expect: 100-continue ------------------------------------------------------------------


async def test_expect_100_continue_before_the_body_is_read() -> None:
    async with run_server(http_apps.body_echo) as server:
        client = await raw(server)
        await client.send(
            b"POST / HTTP/1.1\r\nHost: test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        )
        interim = await client.read_response()  # sent before any body byte exists
        assert interim.status == 100
        await client.send(b"hello")
        response = await client.read_response()
    assert response.status == 200
    assert response.json()["body"] == "hello"


async def test_no_100_continue_when_app_answers_without_reading(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with run_server(http_apps.answers_without_reading, transport="memory") as server:
        client = await raw(server)
        await client.send(
            b"POST / HTTP/1.1\r\nHost: test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        )
        response = await client.read_response()
        assert response.status == 413
        # The body will never come (the client was told not to send it), so the server
        # must not wait for it: it closes the connection, with nothing after the 413.
        start = trio.current_time()
        await client.assert_closed()
        assert trio.current_time() - start < 1


# -- errors answered by the server ---------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"NOT HTTP AT ALL\r\n\r\n", id="garbage"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: test\r\nNo colon here\r\n\r\n", id="bad-header"),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            id="double-length",
        ),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            id="bad-chunk",
        ),
    ],
)
async def test_malformed_request_gets_400_and_close(request_bytes: bytes) -> None:
    async with run_server(http_apps.hello) as server:
        client = await raw(server)
        await client.send(request_bytes)
        response = await client.read_response()
        await client.assert_closed()
    assert response.status == 400
    assert response.header("connection") == "close"


async def test_malformed_request_after_a_good_one() -> None:
    async with run_server(http_apps.hello) as server:
        client = await raw(server)
        await client.send(get() + b"\x00\x01\x02 garbage\r\n\r\n")
        good = await client.read_response()
        bad = await client.read_response()
        await client.assert_closed()
    assert (good.status, bad.status) == (200, 400)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        pytest.param(b"GET /" + b"a" * 300 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414, id="line"),
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"b" * 300 + b"\r\n\r\n", 431, id="header"
        ),
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: t\r\n"
            + b"".join(b"X-H%d: v\r\n" % i for i in range(10))
            + b"\r\n",
            431,
            id="count",
        ),
    ],
)
async def test_limits(request_bytes: bytes, status: int) -> None:
    options: dict[str, Any] = {
        "max_request_line_size": 200,
        "max_header_size": 200,
        "max_headers": 10,
    }
    async with run_server(http_apps.hello, **options) as server:
        client = await raw(server)
        await client.send(request_bytes)
        response = await client.read_response()
        await client.assert_closed()
    assert response.status == status
    assert response.header("connection") == "close"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        pytest.param(b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 200, id="line"),
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"b" * 150 + b"\r\n\r\n", 200, id="header"
        ),
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: t\r\n"
            + b"".join(b"X-H%d: v\r\n" % i for i in range(9))
            + b"\r\n",
            200,
            id="count",
        ),
    ],
)
async def test_requests_just_under_the_limits_are_served(request_bytes: bytes, status: int) -> None:
    """Just under each limit is served: the limits do not cut off normal requests."""
    options: dict[str, Any] = {
        "max_request_line_size": 220,
        "max_header_size": 200,
        "max_headers": 10,
    }
    async with run_server(http_apps.hello, **options) as server:
        client = await raw(server)
        await client.send(request_bytes)
        response = await client.read_response()
    assert response.status == status


async def test_error_status_survives_a_large_unread_request() -> None:
    """431 for a 256 KiB header: the server stops reading early, yet the client gets the
    answer (a plain close with unread input would reset the connection and lose it)."""
    async with run_server(http_apps.hello) as server:
        client = await raw(server)
        head = b"GET / HTTP/1.1\r\nHost: t\r\nX-Huge: " + b"h" * 262144 + b"\r\n\r\n"
        async with trio.open_nursery() as nursery:
            # The server may stop reading before all of it is sent; don't block on that.
            async def write() -> None:
                try:
                    await client.send(head)
                except trio.BrokenResourceError:
                    pass

            nursery.start_soon(write)
            response = await client.read_response()
            nursery.cancel_scope.cancel()
    assert response.status == 431


# -- app failures --------------------------------------------------------------------------


async def test_app_raising_before_start_gets_500() -> None:
    async with run_server(http_apps.raises_before_start, raise_app_errors=False) as server:
        client = await raw(server)
        await client.send(get())
        response = await client.read_response()
        await client.assert_closed()
    assert response.status == 500
    assert response.header("connection") == "close"
    assert [type(e) for e in server.app_errors] == [RuntimeError]
    assert "before the response" in str(server.app_errors[0])


async def test_app_raising_mid_body_cuts_the_response_off() -> None:
    async with run_server(http_apps.raises_mid_body, raise_app_errors=False) as server:
        client = await raw(server)
        await client.send(get())
        with pytest.raises(http_apps.IncompleteResponse) as info:
            await client.read_response()
    # Head and the first chunk went out; the terminating chunk never does, so the client
    # can tell the response is broken.
    assert info.value.partial == b"partial"
    assert [type(e) for e in server.app_errors] == [RuntimeError]


async def test_app_raising_is_reported_by_the_toolkit() -> None:
    with pytest.raises(AppFailed, match="boom before the response"):
        async with run_server(http_apps.raises_before_start) as server:
            response = await server.get("/")
            assert response.status == 500


async def test_app_returning_without_response_gets_500() -> None:
    async with run_server(http_apps.no_response) as server:
        client = await raw(server)
        await client.send(get())
        response = await client.read_response()
        await client.assert_closed()
    assert response.status == 500


# -- timeouts (in-memory streams, mock clock) ------------------------------------------------


async def test_keepalive_timeout_closes_an_idle_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with run_server(http_apps.hello, transport="memory", keepalive=5) as server:
        client = await raw(server)
        await client.send(get())
        assert (await client.read_response()).status == 200
        idle_since = trio.current_time()
        await client.assert_closed()
        waited = trio.current_time() - idle_since
    assert 5 <= waited < 5.5


async def test_keepalive_timer_restarts_after_each_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with run_server(http_apps.hello, transport="memory", keepalive=2) as server:
        client = await raw(server)
        for _ in range(3):  # 1.5 s apart: each request resets the 2 s idle timer
            await client.send(get())
            assert (await client.read_response()).status == 200
            await trio.sleep(1.5)
        await client.send(get())
        assert (await client.read_response()).status == 200


async def test_request_head_timeout_gets_408(autojump_clock: trio.testing.MockClock) -> None:
    async with run_server(http_apps.hello, transport="memory", timeout=3000) as server:
        client = await raw(server)
        start = trio.current_time()
        await client.send(b"GET / HTTP/1.1\r\nHost: te")  # ... and nothing more
        response = await client.read_response()
        elapsed = trio.current_time() - start
        await client.assert_closed()
    assert response.status == 408
    assert 3 <= elapsed < 3.5


async def test_silent_connection_closed_quietly_after_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with run_server(http_apps.hello, transport="memory", timeout=3000) as server:
        client = await raw(server)
        start = trio.current_time()
        await client.assert_closed()  # nothing was asked, so nothing is answered
        assert 3 <= trio.current_time() - start < 3.5


async def test_stalled_body_times_out_without_a_second_response(
    autojump_clock: trio.testing.MockClock,
) -> None:
    app = http_apps.BodyRecorder()
    async with run_server(app, transport="memory", timeout=3000) as server:
        client = await raw(server)
        await client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        response = await client.read_response()
        # After the 408 the app's own late answer must not reach the wire.
        await client.assert_closed()
    assert response.status == 408


# -- client disconnects --------------------------------------------------------------------


async def test_long_poll_sees_http_disconnect() -> None:
    app = http_apps.LongPoll()
    async with run_server(app) as server:
        stream = await server.open_stream()
        await stream.send_all(get(b"/poll"))
        with trio.fail_after(5):
            await app.waiting.wait()
        await stream.aclose()
        with trio.fail_after(5):
            await app.disconnected.wait()
    assert app.after_body == {"type": "http.disconnect"}


async def test_long_poll_disconnect_on_reset() -> None:
    app = http_apps.LongPoll()
    async with run_server(app) as server:
        stream = await server.open_stream()
        await stream.send_all(get(b"/poll"))
        with trio.fail_after(5):
            await app.waiting.wait()
        assert isinstance(stream, trio.SocketStream)
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        await trio.aclose_forcefully(stream)
        with trio.fail_after(5):
            await app.disconnected.wait()
    assert app.after_body == {"type": "http.disconnect"}


# -- frameworks ----------------------------------------------------------------------------


async def test_starlette_app() -> None:
    events: list[str] = []
    app = http_apps.starlette_app(events)
    async with run_server(app) as server:
        assert events == ["startup"]
        home = await server.get("/")
        echo = await server.request(
            "POST", "/echo?a=1&b=two", body=b"x" * 1000, headers=[("X-Test", "yes")]
        )
        missing = await server.get("/nope")
        client = await raw(server)
        await client.send(get(b"/stream"))
        stream = await client.read_response()
    assert events == ["startup", "shutdown"]
    assert (home.status, home.text) == (200, "hi from lifespan /")
    assert echo.json() == {
        "method": "POST",
        "query": {"a": "1", "b": "two"},
        "length": 1000,
        "header": "yes",
    }
    assert missing.status == 404
    assert stream.chunked
    assert stream.body == b"part0;part1;part2;"


async def test_fastapi_app() -> None:
    async with run_server(http_apps.fastapi_app()) as server:
        item = await server.get("/items/3?q=blue")
        missing = await server.get("/items/404")
        invalid = await server.get("/items/abc")
        created = await server.request(
            "POST",
            "/items",
            body=json.dumps({"name": "pen", "price": 2.5}).encode(),
            headers=[("Content-Type", "application/json")],
        )
        rejected = await server.request(
            "POST",
            "/items",
            body=b'{"name": "pen"}',
            headers=[("Content-Type", "application/json")],
        )
    assert (item.status, item.json()) == (200, {"item_id": 3, "q": "blue"})
    assert (missing.status, missing.json()) == (404, {"detail": "no such item"})
    assert invalid.status == 422
    assert (created.status, created.json()) == (200, {"name": "pen", "price_with_tax": 3.0})
    assert rejected.status == 422
    assert rejected.json()["detail"][0]["loc"] == ["body", "price"]

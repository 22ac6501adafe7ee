"""HTTP/2 end to end with real clients: httpx (h2c by prior knowledge and h2 over TLS),
curl (``--http2-prior-knowledge`` and ``--http2`` over TLS), many streams on one
connection, Starlette and FastAPI unchanged, graceful GOAWAY, a crash in one stream.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import http_apps
import httpx
import pytest
import trio
import trustme
from hyperframe.frame import DataFrame, Frame, GoAwayFrame

from hornbeam_trio import Config, serve
from hornbeam_trio.testing import AppFailed, run_server
from hornbeam_trio.transport import StreamTransport

CURL = shutil.which("curl")


def h2c_client() -> httpx.AsyncClient:
    """httpx speaking HTTP/2 by prior knowledge on a cleartext port (h2c)."""
    return httpx.AsyncClient(http1=False, http2=True, timeout=10)


@pytest.fixture
def tls(tmp_path: Path) -> tuple[str, str, ssl.SSLContext, str]:
    """certfile, keyfile, a client context trusting them, and the CA's PEM path."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile, cafile = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(cafile))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return str(certfile), str(keyfile), context, str(cafile)


async def echo(scope: Any, receive: Any, send: Any) -> None:
    """The request body back, with what the scope said about the request in headers."""
    if scope["type"] != "http":
        return  # lifespan
    body, _ = await http_apps.read_body(receive)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"x-http-version", scope["http_version"].encode()),
                (b"x-scheme", scope["scheme"].encode()),
                (b"x-path", scope["path"].encode()),
                (b"x-query", scope["query_string"]),
                (b"x-method", scope["method"].encode()),
                (b"x-host", dict(scope["headers"]).get(b"host", b"-")),
                (b"connection", b"keep-alive"),  # HTTP/1.1-only: must be dropped
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def test_h2c_prior_knowledge_full_scope_with_httpx() -> None:
    async with run_server(http_apps.scope_echo) as server, h2c_client() as client:
        response = await client.get(f"http://127.0.0.1:{server.port}/caf%C3%A9/x?a=1&b=%20")
    assert response.http_version == "HTTP/2"
    scope = response.json()
    assert scope["http_version"] == "2"
    assert scope["type"] == "http"
    assert scope["method"] == "GET"
    assert scope["scheme"] == "http"
    assert scope["path"] == "/café/x"
    assert scope["raw_path"] == "/caf%C3%A9/x"
    assert scope["query_string"] == "a=1&b=%20"
    assert ["host", f"127.0.0.1:{server.port}"] in scope["headers"]
    assert not any(name.startswith(":") for name, _ in scope["headers"])
    assert scope["server"] == ["127.0.0.1", server.port]


async def test_h2c_streams_bodies_both_ways() -> None:
    """A 1 MiB upload (16x the stream window: the app's reads must reopen it) comes back
    streamed in many messages (more than the peer's initial window: WINDOW_UPDATE waits)."""
    chunks_seen: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return  # lifespan
        body, messages = await http_apps.read_body(receive)
        chunks_seen.append(len(messages))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for start in range(0, len(body), 50_000):
            await send(
                {
                    "type": "http.response.body",
                    "body": body[start : start + 50_000],
                    "more_body": True,
                }
            )
        await send({"type": "http.response.body", "body": b""})

    payload = bytes(range(256)) * 4096
    async with run_server(app) as server, h2c_client() as client:
        response = await client.post(f"http://127.0.0.1:{server.port}/", content=payload)
    assert response.http_version == "HTTP/2"
    assert response.content == payload
    assert chunks_seen[0] > 1


async def test_many_concurrent_streams_on_one_connection() -> None:
    """100 requests at once over one connection; each app waits until all have started,
    so they can only finish if every stream runs as its own task."""
    started = 0
    all_started = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return  # lifespan
        nonlocal started
        started += 1
        if started == 100:
            all_started.set()
        await all_started.wait()
        await http_apps.respond(send, body=scope["path"].encode())

    async with run_server(app, http2_max_concurrent_streams=128) as server, h2c_client() as client:
        results: dict[int, str] = {}

        async def one(i: int) -> None:
            response = await client.get(f"http://127.0.0.1:{server.port}/{i}")
            assert response.http_version == "HTTP/2"
            results[i] = response.text

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for i in range(100):
                    nursery.start_soon(one, i)
        connections = server.server.runtime.stats()["connections"]
    assert results == {i: f"/{i}" for i in range(100)}
    assert connections == 1


async def test_app_crash_in_one_stream_is_500_and_others_go_on() -> None:
    release = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return  # lifespan
        if scope["path"] == "/crash":
            raise RuntimeError("boom")
        if scope["path"] == "/crash-midway":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"part", "more_body": True})
            raise RuntimeError("boom midway")
        await release.wait()
        await http_apps.respond(send, body=b"fine")

    with pytest.raises(AppFailed):
        async with run_server(app) as server, h2c_client() as client:
            url = f"http://127.0.0.1:{server.port}"
            async with trio.open_nursery() as nursery:
                fine: list[httpx.Response] = []

                async def slow() -> None:
                    fine.append(await client.get(f"{url}/slow"))

                nursery.start_soon(slow)
                crashed = await client.get(f"{url}/crash")
                with pytest.raises(httpx.RemoteProtocolError):
                    await client.get(f"{url}/crash-midway")  # RST_STREAM after the head
                release.set()
            assert crashed.status_code == 500
            assert fine[0].status_code == 200
            assert fine[0].text == "fine"
            assert fine[0].http_version == "HTTP/2"


async def test_h2_over_tls_by_alpn_http11_still_offered(
    tls: tuple[str, str, ssl.SSLContext, str],
) -> None:
    certfile, keyfile, context, _ = tls
    config = Config(bind=("127.0.0.1:0",), certfile=certfile, keyfile=keyfile, log_level="warning")
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(serve, echo, config)
        url = f"https://localhost:{addresses[0].port}/p?q=1"
        async with httpx.AsyncClient(http2=True, verify=context, timeout=10) as client:
            response = await client.post(url, content=b"over tls")
        assert response.http_version == "HTTP/2"
        assert response.text == "over tls"
        assert response.headers["x-http-version"] == "2"
        assert response.headers["x-scheme"] == "https"
        assert "connection" not in response.headers
        async with httpx.AsyncClient(http2=False, verify=context, timeout=10) as client:
            response = await client.get(url)
        assert response.http_version == "HTTP/1.1"
        assert response.headers["x-http-version"] == "1.1"
        nursery.cancel_scope.cancel()


async def test_no_http2_serves_http11_only(tls: tuple[str, str, ssl.SSLContext, str]) -> None:
    certfile, keyfile, context, _ = tls
    config = Config(
        bind=("127.0.0.1:0",),
        certfile=certfile,
        keyfile=keyfile,
        log_level="warning",
        http2=False,
    )
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(serve, echo, config)
        async with httpx.AsyncClient(http2=True, verify=context, timeout=10) as client:
            response = await client.get(f"https://localhost:{addresses[0].port}/")
        assert response.http_version == "HTTP/1.1"  # ALPN offered no h2
        nursery.cancel_scope.cancel()
    async with run_server(echo, http2=False) as server, h2c_client() as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(f"http://127.0.0.1:{server.port}/")


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
async def test_curl_prior_knowledge_and_over_tls(
    tls: tuple[str, str, ssl.SSLContext, str],
) -> None:
    assert CURL is not None
    certfile, keyfile, _, cafile = tls
    fmt = ["-s", "-o", "-", "-w", "\n%{http_version}", "--max-time", "10"]
    async with run_server(echo) as server:
        done = await trio.to_thread.run_sync(
            lambda: subprocess.run(
                [
                    CURL,
                    *fmt,
                    "--http2-prior-knowledge",
                    "--data-binary",
                    "hello",
                    f"http://127.0.0.1:{server.port}/h2c",
                ],
                capture_output=True,
                check=True,
            )
        )
    assert done.stdout == b"hello\n2"
    config = Config(bind=("127.0.0.1:0",), certfile=certfile, keyfile=keyfile, log_level="warning")
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(serve, echo, config)
        done = await trio.to_thread.run_sync(
            lambda: subprocess.run(
                [
                    CURL,
                    *fmt,
                    "--http2",
                    "--cacert",
                    cafile,
                    "-H",
                    "X-A: b",
                    f"https://localhost:{addresses[0].port}/tls",
                ],
                capture_output=True,
                check=True,
            )
        )
        nursery.cancel_scope.cancel()
    assert done.stdout == b"\n2"


async def test_starlette_and_fastapi_unchanged_over_h2() -> None:
    from fastapi import FastAPI
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    async def items(request: Request) -> JSONResponse:
        data = await request.json()
        return JSONResponse({"got": data, "version": request.scope["http_version"]})

    async def stream(request: Request) -> StreamingResponse:
        async def gen() -> Any:
            for i in range(5):
                yield f"{i};".encode()

        return StreamingResponse(gen(), media_type="text/plain")

    starlette_app = Starlette(
        routes=[Route("/items", items, methods=["POST"]), Route("/s", stream)]
    )
    fastapi_app = FastAPI()

    @fastapi_app.get("/hello/{name}")
    async def hello(name: str) -> dict[str, str]:
        return {"hello": name}

    async with run_server(starlette_app) as server, h2c_client() as client:
        url = f"http://127.0.0.1:{server.port}"
        response = await client.post(f"{url}/items", json={"a": [1, 2]})
        assert response.json() == {"got": {"a": [1, 2]}, "version": "2"}
        response = await client.get(f"{url}/s")
        assert response.text == "0;1;2;3;4;"
        assert response.http_version == "HTTP/2"
    async with run_server(fastapi_app) as server, h2c_client() as client:
        response = await client.get(f"http://127.0.0.1:{server.port}/hello/h2")
        assert response.json() == {"hello": "h2"}
        assert response.http_version == "HTTP/2"


def frames_in(data: bytes) -> tuple[list[Frame], bytes]:
    """The complete frames at the start of ``data`` (hyperframe), and the rest.

    Parsed without h2's client state machine, which takes no frame after a GOAWAY:
    the very frames a graceful shutdown is about."""
    frames: list[Frame] = []
    while len(data) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        if len(data) < 9 + length:
            break
        frame.parse_body(memoryview(data[9 : 9 + length]))
        frames.append(frame)
        data = data[9 + length :]
    return frames, data


async def test_graceful_shutdown_goaway_lets_the_stream_in_flight_finish() -> None:
    """Shutdown sends GOAWAY (NO_ERROR, last stream 1) at once; the stream in flight still
    gets its whole response after it; then the connection closes."""
    in_app = trio.Event()
    finish = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return  # lifespan
        in_app.set()
        await finish.wait()
        await http_apps.respond(send, body=b"finished")

    config = Config(bind=("127.0.0.1:0",), log_level="warning", shutdown_timeout=10)
    frames: list[Frame] = []
    async with trio.open_nursery() as nursery:
        serve_scope = trio.CancelScope()

        async def run_serve(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            with serve_scope:
                await serve(app, config, task_status=task_status)

        addresses = await nursery.start(run_serve)
        stream = await trio.open_tcp_stream("127.0.0.1", addresses[0].port)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.send_headers(
            1,
            [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "x")],
            end_stream=True,
        )
        await stream.send_all(conn.data_to_send())
        rest = b""
        with trio.fail_after(10):
            await in_app.wait()
            serve_scope.cancel()  # graceful shutdown begins
            while not any(isinstance(f, GoAwayFrame) for f in frames):
                new, rest = frames_in(rest + await stream.receive_some(65536))
                frames += new
            goaway_at = len(frames)
            finish.set()
            while data := await stream.receive_some(65536):  # until the server closes
                new, rest = frames_in(rest + data)
                frames += new
    goaway = frames[goaway_at - 1]
    assert isinstance(goaway, GoAwayFrame)
    assert (goaway.error_code, goaway.last_stream_id) == (0, 1)
    after = frames[goaway_at:]
    body = b"".join(f.data for f in after if isinstance(f, DataFrame) and f.stream_id == 1)
    assert body == b"finished"
    assert any("END_STREAM" in f.flags for f in after if f.stream_id == 1)


async def test_connection_error_is_answered_with_goaway() -> None:
    """Bytes after the preface that are no valid frame: GOAWAY (PROTOCOL_ERROR or
    FRAME_SIZE_ERROR) and close, RFC 9113 5.4.1."""
    async with run_server(echo) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        # A SETTINGS frame on stream 1: a connection error of type PROTOCOL_ERROR.
        await stream.send_all(preface + b"\x00\x00\x00\x04\x00\x00\x00\x00\x01")
        received = b""
        with trio.fail_after(5):
            while data := await stream.receive_some(65536):
                received += data
        await stream.aclose()
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    events = conn.receive_data(received)
    goaway = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    assert goaway and goaway[0].error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR


async def test_request_limits_over_h2() -> None:
    async with run_server(echo, max_request_line_size=100, max_request_body_size=10) as server:
        async with h2c_client() as client:
            url = f"http://127.0.0.1:{server.port}"
            assert (await client.get(f"{url}/{'a' * 200}")).status_code == 414
            assert (await client.post(f"{url}/", content=b"x" * 100)).status_code == 413
            response = await client.post(f"{url}/", content=b"x" * 10)
            assert response.status_code == 200
            assert response.text == "x" * 10


def test_cli_flag_turns_http2_off() -> None:
    from hornbeam_trio.cli import parse_args

    assert parse_args(["m:app"])[1].http2 is True
    assert parse_args(["m:app", "--no-http2"])[1].http2 is False
    config = parse_args(["m:app", "--http2-max-concurrent-streams", "7"])[1]
    assert config.http2_max_concurrent_streams == 7
    assert json.dumps(config.http2)  # a plain bool


class RawH2:
    """An h2 client over a TCP stream, for what httpx hides: windows and frames."""

    def __init__(self, stream: trio.abc.Stream, settings: dict[int, int]) -> None:
        self.stream = stream
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.local_settings = h2.settings.Settings(client=True, initial_values=settings)
        self.conn.initiate_connection()
        self.events: list[Any] = []

    async def flush(self) -> None:
        await self.stream.send_all(self.conn.data_to_send())

    async def until(self, done: Any) -> None:
        """Read until ``done(events)``, answering what h2 must answer (SETTINGS ACK)."""
        with trio.fail_after(10):
            while not done(self.events):
                data = await self.stream.receive_some(65536)
                assert data, "the server closed the connection"
                self.events += self.conn.receive_data(data)
                await self.flush()


REQUEST_HEADERS = [(":method", "POST"), (":path", "/"), (":scheme", "http"), (":authority", "x")]


async def test_flow_control_both_ways_over_a_socket() -> None:
    """Upload: the stream's window is given back only as the app reads.  Download: the
    response goes as far as the client's 100-byte window, the rest once it grows."""
    read_now = trio.Event()
    sent = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return  # lifespan
        await read_now.wait()
        body, _ = await http_apps.read_body(receive)
        assert len(body) == 65535
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"y" * 1000})
        sent.set()

    async with run_server(app) as server:
        client = RawH2(
            await trio.open_tcp_stream("127.0.0.1", server.port),
            {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 100},
        )
        client.conn.send_headers(1, REQUEST_HEADERS)
        await client.flush()
        settled = h2.events.SettingsAcknowledged
        await client.until(lambda ev: any(isinstance(e, settled) for e in ev))
        for _ in range(3):
            client.conn.send_data(1, b"x" * 16384)
        client.conn.send_data(1, b"x" * (65535 - 3 * 16384))
        await client.flush()
        assert client.conn.local_flow_control_window(1) == 0  # the stream window is used up
        # A PING round trip: everything the server sent before its answer has arrived.
        client.conn.ping(b"12345678")
        await client.flush()
        await client.until(lambda ev: any(isinstance(e, h2.events.PingAckReceived) for e in ev))
        assert client.conn.local_flow_control_window(1) == 0  # nothing given back unread
        read_now.set()
        await client.until(
            lambda ev: any(isinstance(e, h2.events.WindowUpdated) and e.stream_id == 1 for e in ev)
        )
        client.conn.end_stream(1)
        await client.flush()

        def received(events: list[Any]) -> int:
            return sum(len(e.data) for e in events if isinstance(e, h2.events.DataReceived))

        await client.until(lambda ev: received(ev) == 100)
        assert not sent.is_set()  # the app's send() waits for the window
        client.conn.increment_flow_control_window(900, stream_id=1)
        await client.flush()
        await client.until(lambda ev: any(isinstance(e, h2.events.StreamEnded) for e in ev))
        assert received(client.events) == 1000
        await client.stream.aclose()


async def test_a_window_opened_while_the_stream_flushes_before_waiting_is_not_lost() -> None:
    """A stream out of window first flushes what it queued (its HEADERS), then waits for
    a WINDOW_UPDATE.  One that the reader handles during that flush wakes nobody yet:
    the stream must look at its window again before it waits, or it waits for good.
    The flush is held open (a hook of the memory stream it writes to) until the reader
    has taken the WINDOW_UPDATE."""
    armed: trio.lowlevel.Task | None = None

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal armed
        if scope["type"] != "http":
            return  # lifespan
        # The reader has written what it had and waits for bytes: the next write is
        # this stream's own flush, before it waits for its window.
        await trio.testing.wait_all_tasks_blocked()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        armed = trio.lowlevel.current_task()
        await send({"type": "http.response.body", "body": b"0123456789"})

    async with run_server(app, transport="memory") as server:
        client_side, server_side = trio.testing.memory_stream_pair()
        client = RawH2(client_side, {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        pump = server_side.send_stream.send_all_hook
        assert pump is not None

        async def flush_that_lets_the_reader_run() -> None:
            nonlocal armed
            await pump()
            if armed is not None and armed is trio.lowlevel.current_task():
                armed = None
                client.conn.increment_flow_control_window(10, stream_id=1)
                server_side.receive_stream.put_data(client.conn.data_to_send())
                await trio.testing.wait_all_tasks_blocked()  # the reader took it meanwhile

        server_side.send_stream.send_all_hook = flush_that_lets_the_reader_run
        nursery = server.server.connections_nursery
        assert nursery is not None
        nursery.start_soon(
            server.server.handle_transport,
            StreamTransport(server_side, client=("127.0.0.1", 50000), server=("127.0.0.1", 80)),
        )
        client.conn.send_headers(1, [(":method", "GET"), *REQUEST_HEADERS[1:]], end_stream=True)
        await client.flush()
        await client.until(lambda ev: any(isinstance(e, h2.events.StreamEnded) for e in ev))
        assert armed is None  # the stream's flush did let the reader run
        body = b"".join(e.data for e in client.events if isinstance(e, h2.events.DataReceived))
        assert body == b"0123456789"
        await client.stream.aclose()

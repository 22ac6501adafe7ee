"""WebSocket over HTTP/2 (RFC 8441) with a real client: ``h2`` for the connection and
``wsproto`` for the frames (masked, as a client must), over a TCP socket.

What HTTP/1.1 WebSockets have must hold on a stream too: the scope (``http_version``
"2"), subprotocols, echo both ways beyond the stream's flow-control window,
permessage-deflate, close codes (1000, 1009, 1011), refusals with the HTTP/1.1
statuses, pub/sub delivery, and owned state given back when the stream is reset or the
whole connection drops, while the other streams of the connection go on.
"""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import pytest
import trio
from hyperframe.frame import DataFrame, Frame, GoAwayFrame
from test_http2 import frames_in
from wsproto.connection import Connection, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate

from hornbeam_trio import Config, publish, serve, state_set, subscribe
from hornbeam_trio.testing import run_server


class H2WebSocketClient:
    """One HTTP/2 connection with any number of WebSockets on it."""

    def __init__(self, tcp: trio.SocketStream) -> None:
        self.tcp = tcp
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.settings_seen = False
        self.responses: dict[int, tuple[int, dict[bytes, bytes]]] = {}
        self.body: dict[int, bytes] = {}
        self.ws: dict[int, Connection] = {}
        self.messages: dict[int, list[Any]] = {}
        """wsproto events per stream (text/bytes messages reassembled, Close)."""
        self.ended: set[int] = set()
        self.reset: dict[int, int] = {}
        self.offers: dict[int, PerMessageDeflate] = {}
        self.partial: dict[int, Any] = {}
        """A message's fragments so far, per stream."""

    @classmethod
    async def connect(cls, port: int) -> H2WebSocketClient:
        client = cls(await trio.open_tcp_stream("127.0.0.1", port))
        await client.flush()
        await client.until(lambda: client.settings_seen)
        return client

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            await self.tcp.send_all(data)

    async def open(
        self, path: str = "/", headers: list[tuple[str, str]] | None = None, deflate: bool = False
    ) -> tuple[int, int, dict[bytes, bytes]]:
        """Extended CONNECT; the stream id, status and response headers."""
        sid = self.conn.get_next_available_stream_id()
        extra = list(headers if headers is not None else [("sec-websocket-version", "13")])
        if deflate:
            offer = self.offers[sid] = PerMessageDeflate()
            extra.append(("sec-websocket-extensions", f"{offer.name}; {offer.offer()}"))
        self.conn.send_headers(
            sid,
            [
                (":method", "CONNECT"),
                (":protocol", "websocket"),
                (":scheme", "http"),
                (":path", path),
                (":authority", "localhost"),
                *extra,
            ],
        )
        self.messages[sid] = []
        await self.flush()
        await self.until(lambda: sid in self.responses or sid in self.reset)
        status, head = self.responses[sid]
        return sid, status, head

    async def send(self, sid: int, event: Any) -> None:
        """A WebSocket event as DATA, within the server's windows (waiting as need be)."""
        data = self.ws[sid].send(event)
        while data:
            room = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if not room:
                await self.until(lambda: self.conn.local_flow_control_window(sid) > 0)
                continue
            self.conn.send_data(sid, data[:room])
            data = data[room:]
            await self.flush()

    async def until(self, done: Any, timeout: float = 10) -> None:
        with trio.fail_after(timeout):
            while not done():
                data = await self.tcp.receive_some(65536)
                assert data, "the server closed the connection"
                for event in self.conn.receive_data(data):
                    self._event(event)
                await self.flush()

    def _event(self, event: Any) -> None:
        if isinstance(event, h2.events.RemoteSettingsChanged):
            self.settings_seen = True
        elif isinstance(event, h2.events.ResponseReceived):
            head = dict(event.headers)
            status = int(head.pop(b":status"))
            self.responses[event.stream_id] = (status, head)
            self.body[event.stream_id] = b""
            if status == 200:
                extensions = []
                offer = self.offers.get(event.stream_id)
                accepted = head.get(b"sec-websocket-extensions")
                if offer is not None and accepted is not None:
                    offer.finalize(accepted.decode())
                    extensions.append(offer)
                self.ws[event.stream_id] = Connection(ConnectionType.CLIENT, extensions)
        elif isinstance(event, h2.events.DataReceived):
            sid = event.stream_id
            self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
            ws = self.ws.get(sid)
            if ws is None:
                self.body[sid] += event.data
                return
            if not event.data:
                return  # END_STREAM's empty DATA, after the Close
            ws.receive_data(event.data)
            for wsevent in ws.events():
                if isinstance(wsevent, Ping):
                    self.conn.send_data(sid, ws.send(wsevent.response()))
                elif isinstance(wsevent, Message):
                    self._message(sid, wsevent)
                else:
                    self.messages[sid].append(wsevent)
        elif isinstance(event, h2.events.StreamEnded):
            self.ended.add(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            self.reset[event.stream_id] = event.error_code

    def _message(self, sid: int, event: Message[Any]) -> None:
        pending = self.partial.pop(sid, None)
        data = event.data if pending is None else pending + event.data
        if event.message_finished:
            self.messages[sid].append(data)
        else:
            self.partial[sid] = data

    async def message(self, sid: int) -> Any:
        """The next text/bytes message (or CloseConnection) on ``sid``."""
        await self.until(lambda: bool(self.messages[sid]))
        return self.messages[sid].pop(0)


def websocket_app(log: dict[str, Any]) -> Any:
    """Echo, with a few commands; records scopes, disconnects and app ends per path."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return
        if scope["type"] != "websocket":
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"no"})
            return
        path = scope["path"]
        log.setdefault("scopes", []).append(scope)
        ended = log.setdefault("ended", {}).setdefault(path, trio.Event())
        try:
            assert (await receive())["type"] == "websocket.connect"
            if path == "/refuse":
                await send({"type": "websocket.close"})
                return
            if path == "/deny":
                await send(
                    {
                        "type": "websocket.http.response.start",
                        "status": 401,
                        "headers": [(b"x-why", b"no token")],
                    }
                )
                await send(
                    {"type": "websocket.http.response.body", "body": b"who", "more_body": True}
                )
                await send({"type": "websocket.http.response.body", "body": b" are you?"})
                return
            offered = scope["subprotocols"]
            await send(
                {
                    "type": "websocket.accept",
                    "subprotocol": "chat" if "chat" in offered else None,
                }
            )
            if path.startswith("/room/"):
                subscribe("room")
                state_set(f"here:{path}", True, owned=True)
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    log.setdefault("disconnects", {})[path] = message["code"]
                    return
                text = message.get("text")
                if text == "!close":
                    await send({"type": "websocket.close", "code": 1000})
                elif text == "!raise":
                    raise RuntimeError("the app fails on purpose")
                elif text is not None and text.startswith("!publish "):
                    publish("room", text[len("!publish ") :])
                elif text is not None:
                    await send({"type": "websocket.send", "text": text})
                else:
                    await send({"type": "websocket.send", "bytes": message["bytes"]})
        finally:
            ended.set()

    return app


async def app_ended(log: dict[str, Any], path: str) -> None:
    with trio.fail_after(10):
        while "ended" not in log or path not in log["ended"]:
            await trio.sleep(0.01)  # the app has not started yet: its event does not exist
        await log["ended"][path].wait()


async def test_extended_connect_is_a_websocket_scope_with_http_version_2() -> None:
    log: dict[str, Any] = {}
    async with run_server(websocket_app(log)) as server:
        client = await H2WebSocketClient.connect(server.port)
        assert client.conn.remote_settings.enable_connect_protocol == 1
        sid, status, head = await client.open(
            "/caf%C3%A9?x=1",
            [("sec-websocket-version", "13"), ("sec-websocket-protocol", "json, chat")],
        )
        assert status == 200
        assert head[b"sec-websocket-protocol"] == b"chat"
        assert b"sec-websocket-accept" not in head  # RFC 8441: the stream is the upgrade
        [scope] = log["scopes"]
        assert scope["type"] == "websocket"
        assert scope["http_version"] == "2"
        assert scope["scheme"] == "ws"
        assert scope["path"] == "/café"
        assert scope["query_string"] == b"x=1"
        assert scope["subprotocols"] == ["json", "chat"]
        assert (b"host", b"localhost") in scope["headers"]
        assert not any(name.startswith(b":") for name, _ in scope["headers"])

        await client.send(sid, TextMessage("héllo"))
        assert await client.message(sid) == "héllo"
        # Beyond the 64 KiB stream window both ways: WINDOW_UPDATEs as each side reads.
        big = bytes(range(256)) * 1200
        await client.send(sid, BytesMessage(big))
        assert await client.message(sid) == big

        await client.send(sid, CloseConnection(1000, "bye"))
        reply = await client.message(sid)
        assert isinstance(reply, CloseConnection) and reply.code == 1000
        await app_ended(log, "/café")
        assert log["disconnects"]["/café"] == 1000
        await client.until(lambda: sid in client.ended)
        await client.tcp.aclose()


async def test_permessage_deflate_over_a_stream() -> None:
    log: dict[str, Any] = {}
    async with run_server(websocket_app(log), websocket_compress=True) as server:
        client = await H2WebSocketClient.connect(server.port)
        sid, status, head = await client.open("/z", deflate=True)
        assert status == 200
        assert head[b"sec-websocket-extensions"].startswith(b"permessage-deflate")
        text = "compress me " * 2000
        await client.send(sid, TextMessage(text))
        assert await client.message(sid) == text
        await client.tcp.aclose()


@pytest.mark.parametrize(
    ("command", "code"), [("!close", 1000), ("too big", 1009), ("!raise", 1011)]
)
async def test_close_codes_from_the_server(command: str, code: int) -> None:
    log: dict[str, Any] = {}
    async with run_server(
        websocket_app(log), websocket_max_frame_size=64, raise_app_errors=False
    ) as server:
        client = await H2WebSocketClient.connect(server.port)
        sid, status, _ = await client.open("/c")
        assert status == 200
        await client.send(sid, TextMessage(command if command != "too big" else "x" * 100))
        close = await client.message(sid)
        assert isinstance(close, CloseConnection)
        assert close.code == code
        try:
            await client.send(sid, close.response())
        except h2.exceptions.StreamClosedError:
            pass  # a protocol failure (1009) does not wait for the answer, as on HTTP/1.1
        await client.until(lambda: sid in client.ended or sid in client.reset)
        await app_ended(log, "/c")
        # The connection goes on: another WebSocket on it still echoes.
        other, status, _ = await client.open("/d")
        assert status == 200
        await client.send(other, TextMessage("still here"))
        assert await client.message(other) == "still here"
        await client.tcp.aclose()
    if code == 1011:
        assert len(server.app_errors) == 1


@pytest.mark.parametrize(
    ("path", "headers", "status", "body"),
    [
        ("/refuse", [("sec-websocket-version", "13")], 403, b""),
        ("/deny", [("sec-websocket-version", "13")], 401, b"who are you?"),
        ("/v", [("sec-websocket-version", "8")], 426, b"unsupported WebSocket version"),
    ],
)
async def test_refusals_have_the_http11_statuses(
    path: str, headers: list[tuple[str, str]], status: int, body: bytes
) -> None:
    log: dict[str, Any] = {}
    async with run_server(websocket_app(log)) as server:
        client = await H2WebSocketClient.connect(server.port)
        sid, got, head = await client.open(path, headers)
        assert got == status
        await client.until(lambda: sid in client.ended)
        assert client.body[sid] == body
        if status == 401:
            assert head[b"x-why"] == b"no token"
        if status == 426:
            assert head[b"sec-websocket-version"] == b"13"
        await client.tcp.aclose()


async def test_pubsub_and_owned_state_released_on_reset_and_connection_loss() -> None:
    log: dict[str, Any] = {}
    async with run_server(websocket_app(log)) as server:
        client = await H2WebSocketClient.connect(server.port)
        first, _, _ = await client.open("/room/1")
        second, _, _ = await client.open("/room/2")
        await client.send(first, TextMessage("!publish hi all"))
        assert await client.message(first) == "hi all"  # str: sent as text, as it came
        assert await client.message(second) == "hi all"
        stats = server.stats()
        assert stats["owned_keys"] == ["here:/room/1", "here:/room/2"]
        assert stats["topics"] == {"room": 2}

        # A reset stream ends its WebSocket (1006) and gives back what it held; the
        # connection and the other stream go on.
        client.conn.reset_stream(first, h2.errors.ErrorCodes.CANCEL)
        await client.flush()
        await app_ended(log, "/room/1")
        assert log["disconnects"]["/room/1"] == 1006
        stats = server.stats()
        assert stats["owned_keys"] == ["here:/room/2"]
        assert stats["topics"] == {"room": 1}
        await client.send(second, TextMessage("!publish only you"))
        assert await client.message(second) == "only you"

        # The whole connection drops: the last stream's state goes too.
        client.tcp.socket.close()
        await app_ended(log, "/room/2")
        assert log["disconnects"]["/room/2"] == 1006
        stats = server.stats()
        assert stats["owned_keys"] == []
        assert stats["topics"] == {}


async def test_server_shutdown_closes_the_stream_with_1001_then_goaway() -> None:
    """A WebSocket never ends by itself: shutdown closes it (1001) as over HTTP/1.1, and
    the connection's GOAWAY lets its close handshake finish before the connection ends."""
    log: dict[str, Any] = {}
    config = Config(bind=("127.0.0.1:0",), log_level="warning", shutdown_timeout=10)
    async with trio.open_nursery() as nursery:
        serve_scope = trio.CancelScope()

        async def run_serve(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            with serve_scope:
                await serve(websocket_app(log), config, task_status=task_status)

        addresses = await nursery.start(run_serve)
        client = await H2WebSocketClient.connect(addresses[0].port)
        sid, status, _ = await client.open("/s")
        assert status == 200
        serve_scope.cancel()  # graceful shutdown begins
        # Frames from here on are read raw: h2's client refuses every frame after GOAWAY.
        ws = client.ws[sid]
        frames: list[Frame] = []
        rest = b""
        close: CloseConnection | None = None
        with trio.fail_after(10):
            while close is None:
                new, rest = frames_in(rest + await client.tcp.receive_some(65536))
                frames += new
                for frame in new:
                    if isinstance(frame, DataFrame) and frame.stream_id == sid and frame.data:
                        ws.receive_data(bytes(frame.data))
                        close = next(
                            (e for e in ws.events() if isinstance(e, CloseConnection)), None
                        )
            assert close.code == 1001
            reply = DataFrame(sid)
            reply.data = ws.send(close.response())
            await client.tcp.send_all(reply.serialize())
            await app_ended(log, "/s")
            while data := await client.tcp.receive_some(65536):  # until the server closes
                new, rest = frames_in(rest + data)
                frames += new
    assert log["disconnects"]["/s"] == 1001
    goaways = [f for f in frames if isinstance(f, GoAwayFrame)]
    assert goaways and all(f.error_code == 0 for f in goaways)
    assert goaways[0].last_stream_id == sid
    assert any("END_STREAM" in f.flags for f in frames if f.stream_id == sid)

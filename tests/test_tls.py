"""TLS end to end: https:// and wss:// with certificates made by trustme."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import trio
import trustme
from trio_websocket import open_websocket_url

from hornbeam_trio import Config, serve


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["scheme"].encode()})
        return
    await send({"type": "websocket.accept"})
    message = await receive()
    await send({"type": "websocket.send", "text": f"{scope['scheme']}:{message['text']}"})
    await send({"type": "websocket.close", "code": 1000})


async def test_https_and_wss(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    config = Config(
        bind=("127.0.0.1:0",), certfile=str(certfile), keyfile=str(keyfile), log_level="warning"
    )
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(serve, app, config)
        port = addresses[0].port

        stream = await trio.open_ssl_over_tcp_stream(
            "127.0.0.1", port, ssl_context=client_context, https_compatible=True
        )
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        response = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(4096):
                response += chunk
        assert response.startswith(b"HTTP/1.1 200 OK")
        assert response.endswith(b"\r\n\r\nhttps")
        await stream.aclose()

        async with open_websocket_url(f"wss://localhost:{port}/", ssl_context=client_context) as ws:
            await ws.send_message("hi")
            with trio.fail_after(5):
                assert await ws.get_message() == "wss:hi"
        nursery.cancel_scope.cancel()


async def test_plain_tcp_client_against_tls_port_is_dropped_without_harm(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    config = Config(
        bind=("127.0.0.1:0",), certfile=str(certfile), keyfile=str(keyfile), log_level="critical"
    )
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(serve, app, config)
        stream = await trio.open_tcp_stream("127.0.0.1", addresses[0].port)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with trio.fail_after(5):
            while await stream.receive_some(4096):
                pass
        await stream.aclose()
        nursery.cancel_scope.cancel()

"""The chat page over HTTPS in Chromium: page and WebSocket both over HTTP/2 (RFC 8441).

The server runs in this process with a certificate from a throwaway CA (trustme);
Chromium trusts exactly that key (``--ignore-certificate-errors-spki-list`` with its
SPKI hash: no certificate error is ignored wholesale).  The page must have come over
``h2`` (``nextHopProtocol``), and its WebSocket must have reached the app as an
HTTP/2 scope (``http_version`` "2"), i.e. an extended CONNECT on the page's
connection rather than an HTTP/1.1 upgrade on a second one.  Skipped like
tests/test_browser_chat.py when Chromium or Playwright is missing (failed under CI).
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import trio
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from test_browser_chat import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, require_browser

from examples.chat.app import app as chat_app
from hornbeam_trio.testing import run_server


def spki_hash(cert_pem: bytes) -> str:
    """base64(sha256(SubjectPublicKeyInfo)): how Chromium names a key to trust."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def chat_over_h2(base_url: str, spki: str) -> dict[str, Any]:
    """Join a room, say something, see it come back; report the page's protocol."""
    from playwright.sync_api import expect, sync_playwright

    seen: dict[str, Any] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[*CHROMIUM_ARGS, f"--ignore-certificate-errors-spki-list={spki}"],
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.on("pageerror", lambda error: seen.setdefault("page_errors", []).append(
                str(error)))
            page.goto(base_url + "/")
            seen["page_protocol"] = page.evaluate(
                "performance.getEntriesByType('navigation')[0].nextHopProtocol"
            )
            page.fill("#user", "alice")
            page.fill("#room", "h2")
            page.click("#join-button")
            expect(page.locator("body")).to_have_attribute("data-state", "joined")
            page.fill("#text", "over one connection")
            page.press("#text", "Enter")
            message = page.locator("#messages li.message .text").last
            expect(message).to_have_text("over one connection")
            seen["status"] = page.inner_text("#status")
        finally:
            browser.close()
    return seen


async def test_chromium_loads_chat_and_opens_its_websocket_over_http2(tmp_path: Path) -> None:
    require_browser()
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    versions: list[tuple[str, str]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            versions.append((scope["type"], scope["http_version"]))
        await chat_app(scope, receive, send)

    async with run_server(
        app, bind=("127.0.0.1:0",), certfile=str(certfile), keyfile=str(keyfile)
    ) as server:
        with trio.fail_after(90):
            seen = await trio.to_thread.run_sync(
                chat_over_h2,
                f"https://127.0.0.1:{server.port}",
                spki_hash(cert.cert_chain_pems[0].bytes()),
            )
        assert seen.get("page_errors") is None, seen["page_errors"]
        assert seen["page_protocol"] == "h2"
        assert seen["status"] == "connected as alice in h2"
        assert ("websocket", "2") in versions, versions
        assert all(version == "2" for _, version in versions), versions
        # The browser is gone: what the chat session owned went with its stream.
        with trio.fail_after(10):
            while server.stats()["owned_keys"]:
                await trio.sleep(0.02)

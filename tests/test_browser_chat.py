"""The chat page in a real browser: headless Chromium driven by Playwright.

``python -m hornbeam_trio examples.chat.app:app --history 'chat:*=100,300s'`` (the
README's first command) runs in its own process; browser contexts (users with no shared
cookies or storage) load the page it serves, join the same room and talk. The page's
WebSocket is Chromium's own, so this checks the handshake, framing and close codes
against a browser, not just against Python clients. One user reaches the server through
:class:`CuttableProxy`, a TCP forwarder the test can cut, because Playwright's
``set_offline`` leaves WebSockets open (microsoft/playwright#4910): cutting it resets
the browser's sockets and refuses new ones, as a lost network would. A screenshot of the
first user's page is saved to tests/artifacts/chat.png.

Needs Debian's ``chromium`` (/usr/bin/chromium) and the ``playwright`` package (no
``playwright install``: the system browser is used).  Without them the test is
skipped, saying which is missing, except under CI (``HORNBEAM_CI`` set), where a
missing browser is a failure.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from example_server import eventually, example_server, http_get
from test_chat_app import HISTORY

from hornbeam_trio.transport import LINGER_RESET

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
TIMEOUT_MS = 10_000
"""Per browser step (page load, waiting for a message to show)."""
CUT_SECONDS = 5.0
"""How long bob's network is down."""
TEXT = "Hello Alice! <b>not bold</b> & ünïcödé ✓"
AWAY = [f"while bob is away {n}" for n in range(1, 6)]


def _missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} not found (apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (pip install playwright)"
    return None


def require_browser() -> None:
    missing = _missing()
    if missing is None:
        return
    if os.environ.get("HORNBEAM_CI"):
        pytest.fail(f"HORNBEAM_CI is set, so the browser test must run, but {missing}")
    pytest.skip(missing)


class CuttableProxy:
    """Forwards TCP connections to ``target_port``; ``cut()`` resets every connection
    and refuses new ones until ``restore()``.  Both ends are reset, so the server sees
    the client go (as it would after its idle timeout on a real cut)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.down = False
        self.connections: set[trio.CancelScope] = set()

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self.forward, listeners, task_status=task_status)

    async def forward(self, client: trio.SocketStream) -> None:
        upstream: trio.SocketStream | None = None
        try:
            if self.down:
                return
            upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
            with trio.CancelScope() as scope:
                self.connections.add(scope)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(pump, client, upstream, nursery.cancel_scope)
                    nursery.start_soon(pump, upstream, client, nursery.cancel_scope)
            self.connections.discard(scope)
        finally:
            for stream in (client, upstream):
                if stream is not None:
                    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
                    await trio.aclose_forcefully(stream)

    def cut(self) -> None:
        self.down = True
        for scope in self.connections:
            scope.cancel()

    def restore(self) -> None:
        self.down = False


async def pump(source: trio.SocketStream, sink: trio.SocketStream, done: trio.CancelScope) -> None:
    """Copy until either side ends, then end the pair."""
    try:
        while data := await source.receive_some(65536):
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    done.cancel()


def chat_in_browsers(base_url: str, bob_url: str, proxy: CuttableProxy,
                     screenshot: Path) -> dict[str, Any]:
    """Alice and Bob join ``garden`` and talk; Bob's network goes down for
    CUT_SECONDS while Alice talks on; Bob comes back, reloads, closes his page.

    Playwright's sync API, run in a worker thread (it brings its own event loop);
    the proxy is driven through ``trio.from_thread``.  Returns what the pages showed.
    """
    from playwright.sync_api import expect, sync_playwright

    seen: dict[str, Any] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            def new_page() -> Any:
                page = browser.new_context(viewport={"width": 900, "height": 640}).new_page()
                page.set_default_timeout(TIMEOUT_MS)
                page.on("pageerror", lambda error: seen.setdefault("page_errors", []).append(
                    str(error)))
                return page

            def join(page: Any, url: str, name: str) -> None:
                page.goto(url + "/")
                page.fill("#user", name)
                page.fill("#room", "garden")
                page.click("#join-button")
                expect(page.locator("body")).to_have_attribute("data-state", "joined")

            def say(page: Any, text: str) -> None:
                page.fill("#text", text)
                page.press("#text", "Enter")

            def texts(page: Any) -> list[str]:
                return list(page.locator("#messages li.message .text").all_text_contents())

            alice, bob = new_page(), new_page()
            join(alice, base_url, "alice")
            join(bob, bob_url, "bob")
            expect(alice.locator("#users li")).to_have_text(["alice", "bob"])
            expect(alice.locator("#messages .notice").last).to_have_text("bob joined")

            say(bob, TEXT)
            message = alice.locator("#messages li.message").last
            expect(message.locator(".text")).to_have_text(TEXT)
            expect(message.locator(".user")).to_have_text("bob")
            expect(bob.locator("#text")).to_have_value("")  # the input is cleared after send
            seen["markup_in_messages"] = alice.locator("#messages b").count()
            seen["alice_status"] = alice.inner_text("#status")

            # Bob's network goes down; Alice talks on; it comes back.
            trio.from_thread.run_sync(proxy.cut)
            cut_at = time.monotonic()
            expect(bob.locator("body")).to_have_attribute("data-state", "reconnecting")
            expect(alice.locator("#users li")).to_have_text(["alice"])  # the server saw him go
            for text in AWAY:
                say(alice, text)
            expect(alice.locator("#messages li.message .text")).to_have_text([TEXT, *AWAY])
            time.sleep(max(0.0, CUT_SECONDS - (time.monotonic() - cut_at)))
            seen["bob_during_cut"] = texts(bob)
            trio.from_thread.run_sync(proxy.restore)
            expect(bob.locator("body")).to_have_attribute("data-state", "joined")
            expect(bob.locator("#messages li.message .text")).to_have_text([TEXT, *AWAY])
            expect(bob.locator("#users li")).to_have_text(["alice", "bob"])
            expect(alice.locator("#users li")).to_have_text(["alice", "bob"])
            seen["bob_after_cut"] = texts(bob)
            seen["bob_duplicates"] = bob.locator("body").get_attribute("data-duplicates")
            seen["bob_gap_notices"] = bob.locator("#messages .gap").count()

            # A reload carries on: the same messages, then live ones.
            bob.reload()
            expect(bob.locator("body")).to_have_attribute("data-state", "joined")
            say(alice, "after the reload")
            expect(bob.locator("#messages li.message .text")).to_have_text(
                [TEXT, *AWAY, "after the reload"])
            seen["bob_after_reload"] = texts(bob)
            seen["bob_gap_notices_after_reload"] = bob.locator("#messages .gap").count()

            # A position history cannot serve (another epoch: the server lost its
            # history) is said, not hidden.
            bob.evaluate("""() => {
                const key = "hornbeam-chat:garden:bob";
                const kept = JSON.parse(sessionStorage.getItem(key));
                kept.position = "0000000000000000-" + kept.position.split("-").pop();
                sessionStorage.setItem(key, JSON.stringify(kept));
            }""")
            bob.reload()
            expect(bob.locator("#messages .gap")).to_have_count(1)
            seen["bob_after_gap"] = texts(bob)

            # A newcomer's first visit shows the room's history.
            carol = new_page()
            join(carol, base_url, "carol")
            expect(carol.locator("#messages li.message .text")).to_have_text(
                [TEXT, *AWAY, "after the reload"])
            expect(carol.locator("#users li")).to_have_text(["alice", "bob", "carol"])

            screenshot.parent.mkdir(parents=True, exist_ok=True)
            alice.screenshot(path=str(screenshot), full_page=True)

            # Bob closes his page: the others' lists drop him.
            bob.context.close()
            expect(alice.locator("#users li")).to_have_text(["alice", "carol"])
            expect(alice.locator("#messages .notice").last).to_have_text("bob left")
            carol.click("#leave")
            expect(carol.locator("body")).to_have_attribute("data-state", "idle")
            expect(alice.locator("#users li")).to_have_text(["alice"])
            seen["carol_status_after_leave"] = carol.inner_text("#status")
        finally:
            browser.close()
    return seen


async def test_browsers_chat_recover_after_a_network_cut_and_show_who_is_online() -> None:
    require_browser()
    screenshot = ARTIFACTS / "chat.png"
    screenshot.unlink(missing_ok=True)
    async with example_server("examples.chat.app:app", *HISTORY) as server:
        async with trio.open_nursery() as nursery:
            proxy = CuttableProxy(server.port)
            await nursery.start(proxy.serve)
            with trio.fail_after(120):
                seen = await trio.to_thread.run_sync(
                    chat_in_browsers, server.http_url, f"http://127.0.0.1:{proxy.port}",
                    proxy, screenshot,
                )
            nursery.cancel_scope.cancel()
        # The server's side: the messages are the room's history; every member went
        # with its connection.
        garden = (await http_get(server, "/api/rooms/garden")).json()
        assert [m["text"] for m in garden["history"]] == [TEXT, *AWAY, "after the reload"]
        await eventually(
            lambda: http_get(server, "/api/rooms"),
            lambda r: r.json() == {"online": 0, "rooms": {}},
            what="every browser gone",
        )
    assert seen.get("page_errors") is None, seen["page_errors"]
    assert seen["markup_in_messages"] == 0, "message text must not be parsed as HTML"
    assert seen["alice_status"] == "connected as alice in garden"
    assert seen["bob_during_cut"] == [TEXT]
    # Back online: every message sent meanwhile, once, in order, no gap.
    assert seen["bob_after_cut"] == [TEXT, *AWAY]
    assert seen["bob_duplicates"] is None, "the server sent a message twice"
    assert seen["bob_gap_notices"] == 0 and seen["bob_gap_notices_after_reload"] == 0
    assert seen["bob_after_reload"] == [TEXT, *AWAY, "after the reload"]
    assert seen["bob_after_gap"] == [TEXT, *AWAY, "after the reload"]
    assert seen["carol_status_after_leave"] == "you left garden"
    assert screenshot.stat().st_size > 10_000

"""The chat page in a real browser: headless Chromium driven by Playwright.

``python -m hornbeam_trio examples.chat.app:app`` runs in its own process; two
browser contexts (two users, no shared cookies or storage) load the page it serves,
join the same room and talk.  The page's WebSocket is Chromium's own, so this checks
the handshake, framing and close codes against a browser, not just against Python
clients.  A screenshot of the first user's page is saved to tests/artifacts/chat.png.

Needs Debian's ``chromium`` (/usr/bin/chromium) and the ``playwright`` package (no
``playwright install``: the system browser is used).  Without them the test is
skipped, saying which is missing, except under CI (``HORNBEAM_CI`` set), where a
missing browser is a failure.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest
import trio
from example_server import eventually, example_server, http_get

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


def chat_in_two_browsers(base_url: str, screenshot: Path) -> dict[str, Any]:
    """Alice and Bob join ``garden``; Bob says something; Alice must see it.

    Playwright's sync API, run in a worker thread (it brings its own event loop).
    Returns what the pages showed, for the test to check.
    """
    from playwright.sync_api import expect, sync_playwright

    seen: dict[str, Any] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            alice = browser.new_context(viewport={"width": 900, "height": 640}).new_page()
            bob = browser.new_context(viewport={"width": 900, "height": 640}).new_page()
            for page in (alice, bob):
                page.set_default_timeout(TIMEOUT_MS)
                page.on("pageerror", lambda error: seen.setdefault("page_errors", []).append(
                    str(error)))

            def join(page: Any, name: str) -> None:
                page.goto(base_url + "/")
                page.fill("#user", name)
                page.fill("#room", "garden")
                page.click("#join-button")
                expect(page.locator("body")).to_have_attribute("data-state", "joined")

            join(alice, "alice")
            join(bob, "bob")
            expect(alice.locator("#users li")).to_have_text(["alice", "bob"])
            expect(alice.locator("#messages .notice").last).to_have_text("bob joined")

            text = "Hello Alice! <b>not bold</b> & ünïcödé ✓"
            bob.fill("#text", text)
            bob.press("#text", "Enter")

            message = alice.locator("#messages li.message").last
            expect(message.locator(".text")).to_have_text(text)
            expect(message.locator(".user")).to_have_text("bob")
            seen["alice_messages"] = alice.locator("#messages li.message .text").all_text_contents()
            seen["bob_messages"] = bob.locator("#messages li.message .text").all_text_contents()
            seen["markup_in_messages"] = alice.locator("#messages b").count()
            seen["alice_status"] = alice.inner_text("#status")
            seen["alice_users"] = alice.locator("#users li").all_text_contents()
            expect(bob.locator("#text")).to_have_value("")  # the input is cleared after send

            screenshot.parent.mkdir(parents=True, exist_ok=True)
            alice.screenshot(path=str(screenshot), full_page=True)

            bob.click("#leave")
            expect(bob.locator("body")).to_have_attribute("data-state", "idle")
            expect(alice.locator("#messages .notice").last).to_have_text("bob left")
            expect(alice.locator("#users li")).to_have_text(["alice"])
            seen["bob_status_after_leave"] = bob.inner_text("#status")

            # A latecomer gets the recent history with the welcome.
            carol = browser.new_context().new_page()
            carol.set_default_timeout(TIMEOUT_MS)
            join(carol, "carol")
            expect(carol.locator("#messages li.message .text")).to_have_text([text])
            expect(carol.locator("#users li")).to_have_text(["alice", "carol"])
        finally:
            browser.close()
    return seen


async def test_two_browsers_chat_in_the_same_room() -> None:
    require_browser()
    screenshot = ARTIFACTS / "chat.png"
    screenshot.unlink(missing_ok=True)
    async with example_server("examples.chat.app:app") as server:
        with trio.fail_after(90):
            seen = await trio.to_thread.run_sync(
                chat_in_two_browsers, server.http_url, screenshot
            )
        text = "Hello Alice! <b>not bold</b> & ünïcödé ✓"
        assert seen.get("page_errors") is None, seen["page_errors"]
        assert seen["alice_messages"] == [text]
        assert seen["bob_messages"] == [text]
        assert seen["markup_in_messages"] == 0, "message text must not be parsed as HTML"
        assert seen["alice_status"] == "connected as alice in garden"
        assert seen["alice_users"] == ["alice", "bob"]
        assert seen["bob_status_after_leave"] == "you left garden"
        assert screenshot.stat().st_size > 10_000

        # The server's side of the story: the message is in the room's history; bob's
        # presence went with his connection, alice's goes when her browser closes.
        garden = (await http_get(server, "/api/rooms/garden")).json()
        assert [(m["user"], m["text"]) for m in garden["history"]] == [("bob", text)]
        await eventually(
            lambda: http_get(server, "/api/rooms"),
            lambda r: r.json() == {"online": 0, "rooms": {}},
            what="every browser gone",
        )

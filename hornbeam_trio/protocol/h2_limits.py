"""Per-connection flood bounds for HTTP/2, checked on frame headers before the frames run.

The protocol answers every frame it is given (a PING with its ACK, a SETTINGS with its
ACK, a stream opened and reset with bookkeeping).  The attacks of CVE-2019-9512..9518 (ping,
settings, reset, empty-frame floods) and CVE-2023-44487 (rapid reset) cost a server
nothing but CPU and answers per frame, so each frame kind that asks work of us without
carrying a request takes a token from its own bucket; a bucket that runs dry is a
verdict: the connection ends with GOAWAY(ENHANCE_YOUR_CALM) and the chunk that broke the
bound is not processed at all.

:class:`FrameScanner` walks only the 9-byte frame headers of the bytes read (payloads
are skipped, never copied), keeping at most 8 bytes of a header split across reads, so
a verdict is reached before ``http2`` parses, answers or buffers any frame of the chunk.

Imports nothing of ours; time comes from the caller (``now``), so every bound is
unit-tested with plain numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

DATA: Final = 0x0
HEADERS: Final = 0x1
PRIORITY: Final = 0x2
RST_STREAM: Final = 0x3
SETTINGS: Final = 0x4
PING: Final = 0x6
WINDOW_UPDATE: Final = 0x8
CONTINUATION: Final = 0x9

END_STREAM: Final = 0x1
ACK: Final = 0x1
END_HEADERS: Final = 0x4


@dataclass(frozen=True, slots=True)
class Rate:
    """A token bucket's shape: ``burst`` frames at once, ``per_second`` sustained."""

    burst: int
    per_second: float


RESETS: Final = Rate(1000, 100.0)
"""RST_STREAM frames received plus streams we refused: nghttp2's answer to rapid reset
(CVE-2023-44487) is a bucket of 1000; a browser leaving a page resets a few dozen."""
PINGS: Final = Rate(100, 10.0)
"""PINGs (not ACKs): clients ping for liveness every few seconds, not hundreds a second."""
SETTINGS_FRAMES: Final = Rate(100, 10.0)
"""SETTINGS (not ACKs): a client sends one, rarely a few more."""
PRIORITIES: Final = Rate(1000, 100.0)
"""PRIORITY frames: some clients send one per stream; we act on none of them."""
EMPTY_DATA: Final = Rate(100, 10.0)
"""DATA frames with no payload and no END_STREAM: they carry nothing (CVE-2019-9518)."""
WINDOW_UPDATES: Final = Rate(1000, 1000.0)
"""WINDOW_UPDATE frames; on top of the time refill, each DATA frame we send gives back
:data:`WINDOW_UPDATES_PER_DATA` (a client acknowledges what it reads, so a fast download
earns its updates)."""
WINDOW_UPDATES_PER_DATA: Final = 2


class Bucket:
    """Tokens refill with time up to ``burst``; :meth:`take` is False once empty."""

    __slots__ = ("burst", "per_second", "stamp", "tokens")

    def __init__(self, rate: Rate, now: float) -> None:
        self.burst = float(rate.burst)
        self.per_second = rate.per_second
        self.tokens = self.burst
        self.stamp = now

    def take(self, now: float, count: int = 1) -> bool:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.per_second)
            self.stamp = now
        self.tokens -= count
        return self.tokens >= 0

    def give(self, count: int) -> None:
        self.tokens = min(self.burst, self.tokens + count)


class FrameScanner:
    """Frame headers of the peer's bytes, counted against the buckets above.

    Invariant: ``partial`` holds fewer than 9 bytes (a header split across reads) and
    ``skip`` is what is left of the current frame's payload; nothing else of the input
    is kept.  :meth:`scan` returns None, or the reason the connection must end.
    """

    def __init__(self, *, max_header_block: int, now: float = 0.0) -> None:
        self.max_header_block = max_header_block
        """Bytes of one HEADERS + CONTINUATION block (HPACK-encoded) before its end."""
        self.preface = 24
        """Bytes of the client preface (``PRI * HTTP/2.0...``) still to skip."""
        self.partial = b""
        self.skip = 0
        self.block = -1
        """Bytes of the header block in progress; -1: none."""
        self.resets = Bucket(RESETS, now)
        self.pings = Bucket(PINGS, now)
        self.settings = Bucket(SETTINGS_FRAMES, now)
        self.priorities = Bucket(PRIORITIES, now)
        self.empty = Bucket(EMPTY_DATA, now)
        self.window_updates = Bucket(WINDOW_UPDATES, now)

    def scan(self, data: bytes, now: float) -> str | None:
        view = memoryview(data)
        if self.preface:
            cut = min(self.preface, len(view))
            self.preface -= cut
            view = view[cut:]
        if self.skip:
            cut = min(self.skip, len(view))
            self.skip -= cut
            view = view[cut:]
        if self.partial:
            need = 9 - len(self.partial)
            if len(view) < need:
                self.partial += bytes(view)
                return None
            header = self.partial + bytes(view[:need])
            self.partial = b""
            view = view[need:]
            verdict = self._frame(header, now)
            if verdict:
                return verdict
            cut = min(self.skip, len(view))
            self.skip -= cut
            view = view[cut:]
        end = len(view)
        at = 0
        while end - at >= 9:
            verdict = self._frame(view[at : at + 9], now)
            if verdict:
                return verdict
            cut = min(self.skip, end - at - 9)
            self.skip -= cut
            at += 9 + cut
        if at < end:
            self.partial = bytes(view[at:])
        return None

    def _frame(self, header: bytes | memoryview, now: float) -> str | None:
        length = (header[0] << 16) | (header[1] << 8) | header[2]
        kind = header[3]
        flags = header[4]
        self.skip = length
        if self.block >= 0:
            if kind == CONTINUATION:
                self.block += length
                if self.block > self.max_header_block:
                    return "header block too large (CONTINUATION flood)"
                if flags & END_HEADERS:
                    self.block = -1
            return None  # anything else mid-block: http2's PROTOCOL_ERROR
        if kind == DATA:
            if not length and not flags & END_STREAM and not self.empty.take(now):
                return "empty DATA frame flood"
        elif kind == HEADERS:
            if not flags & END_HEADERS:
                self.block = length
                if length > self.max_header_block:
                    return "header block too large (CONTINUATION flood)"
        elif kind == RST_STREAM:
            if not self.resets.take(now):
                return "stream reset flood (rapid reset)"
        elif kind == PING:
            if not flags & ACK and not self.pings.take(now):
                return "PING flood"
        elif kind == SETTINGS:
            if not flags & ACK and not self.settings.take(now):
                return "SETTINGS flood"
        elif kind == PRIORITY:
            if not self.priorities.take(now):
                return "PRIORITY flood"
        elif kind == WINDOW_UPDATE and not self.window_updates.take(now):
            return "WINDOW_UPDATE flood"
        return None

    def refused(self, now: float) -> bool:
        """A stream we refused (REFUSED_STREAM) costs a reset token; False: flood."""
        return self.resets.take(now)

    def data_sent(self, frames: int = 1) -> None:
        self.window_updates.give(frames * WINDOW_UPDATES_PER_DATA)

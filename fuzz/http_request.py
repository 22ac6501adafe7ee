"""Coverage-guided fuzzing of the sans-I/O HTTP/1.1 request parser (atheris / libFuzzer).

    python fuzz/http_request.py -max_total_time=60 fuzz/corpus/http_request
    nox -s fuzz                      # both harnesses, bounded

Whatever the bytes, and however they are split into reads, ``HTTPParser`` may only
hand out events (a ``Request``, non-empty body chunks, ``END_OF_MESSAGE``) in a legal
order, or raise ``HTTPError`` with a 4xx/5xx status and stay failed.  Any other
exception, or an event out of order, is a crash that libFuzzer saves as a reproducer
(``python fuzz/http_request.py crash-...`` replays it).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["hornbeam_trio"]):
    from hornbeam_trio.protocol.http11 import (
        END_OF_MESSAGE,
        NEED_DATA,
        HTTPError,
        HTTPParser,
        Request,
    )


class Checker:
    """Follows the event stream of one parser and asserts it is well-formed."""

    def __init__(self, max_body_size: int | None) -> None:
        self.in_message = False
        self.upgraded = False
        self.body = 0
        self.max_body_size = max_body_size

    def drain(self, parser: HTTPParser) -> None:
        while (event := parser.next_event()) is not NEED_DATA:
            if isinstance(event, Request):
                assert not self.in_message, "a request head inside a message"
                assert not self.upgraded, "a request after an upgrade"
                assert isinstance(event.method, str) and event.method
                assert all(isinstance(k, bytes) and isinstance(v, bytes) for k, v in event.headers)
                self.in_message = True
                self.body = 0
                if event.upgrade is not None:
                    self.upgraded = True
            elif event is END_OF_MESSAGE:
                assert self.in_message, "END_OF_MESSAGE outside a message"
                self.in_message = False
            else:
                assert isinstance(event, bytes) and event, f"unexpected event {event!r}"
                assert self.in_message, "a body chunk outside a message"
                self.body += len(event)
                if self.max_body_size is not None:
                    assert self.body <= self.max_body_size, "body over max_body_size"


def one_input(data: bytes) -> None:
    """``data[0]``: limits; ``data[1]``: how the rest is cut into reads; then the bytes."""
    if len(data) < 2:
        return
    flags, split, stream = data[0], data[1], data[2:]
    small = bool(flags & 1)  # small limits reach the 414/431/413 paths with short inputs
    max_body = (flags >> 1) & 0x3F if flags & 0x80 else None
    parser = HTTPParser(
        max_request_line_size=16 + (flags >> 1) % 32 if small else 4094,
        max_header_size=16 + (flags >> 3) % 32 if small else 8190,
        max_headers=1 + (flags >> 5) if small else 100,
        max_body_size=max_body,
    )
    checker = Checker(max_body)
    pos = 0
    step = 0
    while True:
        size = len(stream) if not split else 1 + (split * (step + 1)) % 61
        chunk = stream[pos : pos + size]
        pos += size
        step += 1
        try:
            parser.feed(chunk)  # b"" is EOF
        except HTTPError as exc:
            assert 400 <= exc.status < 600, exc
            checker.drain(parser)  # requests complete before the error keep their events
            try:
                parser.feed(b"more")
            except HTTPError as again:
                assert again.status == exc.status, "the parser recovered from an error"
            else:
                raise AssertionError("feed() after an HTTPError did not raise")
            return
        checker.drain(parser)
        if not chunk:
            return


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

"""Coverage-guided fuzzing of the sans-I/O WebSocket protocol (atheris / libFuzzer).

    python fuzz/websocket_frames.py -max_total_time=60 fuzz/corpus/websocket_frames
    nox -s fuzz                      # both harnesses, bounded

Half of the inputs are raw bytes off the wire; the other half are frames the harness
builds (and masks) from the input, so the fuzzer spends its time past the frame
header checks: fragmentation, UTF-8 across frames, control frames in between, close
payloads, permessage-deflate.  Whatever arrives, ``ServerProtocol.receive_data`` may
only return messages within ``max_message_size``, ``CloseReceived`` and
``ProtocolFailure`` (1002, 1007 or 1009, after which it is closed and silent).
"""

from __future__ import annotations

import struct
import sys

import atheris

with atheris.instrument_imports(include=["hornbeam_trio"]):
    from hornbeam_trio.protocol.websocket import (
        CloseReceived,
        DeflateParams,
        ProtocolFailure,
        ServerProtocol,
    )

FAILURE_CODES = {1002, 1007, 1009}


def masked_frame(fdp: atheris.FuzzedDataProvider) -> bytes:
    """One client frame: mostly valid headers, fuzzed payload, opcode and flag bits."""
    b0 = (
        fdp.ConsumeIntInRange(0, 255)
        if fdp.ConsumeProbability() < 0.1
        else (
            (0x80 if fdp.ConsumeBool() else 0)
            | (0x40 if fdp.ConsumeProbability() < 0.2 else 0)
            | fdp.PickValueInList([0x0, 0x1, 0x2, 0x8, 0x9, 0xA, 0x3])
        )
    )
    payload = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 300))
    if fdp.ConsumeProbability() < 0.3:
        payload = fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 40)).encode("utf-8", "surrogatepass")
    mask = fdp.ConsumeBytes(4).ljust(4, b"\0")
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", b0, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, 0x80 | 126, n)
    else:  # pragma: no cover - payloads are at most 300 bytes
        head = struct.pack("!BBQ", b0, 0x80 | 127, n)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + body


def check(
    events: list[object], protocol: ServerProtocol, limit: int, state: dict[str, bool]
) -> None:
    for event in events:
        assert not state["ended"], f"event {event!r} after the connection ended"
        if isinstance(event, str):
            assert len(event.encode("utf-8", "surrogatepass")) <= limit, "text over the limit"
        elif isinstance(event, bytes):
            assert len(event) <= limit, "binary over the limit"
        elif isinstance(event, ProtocolFailure):
            assert event.code in FAILURE_CODES, event
            assert protocol.closed and protocol.close_sent
            state["ended"] = True
        elif isinstance(event, CloseReceived):
            assert event.code == 1005 or 1000 <= event.code <= 4999, event
            assert protocol.close_received
            state["ended"] = True
        else:
            raise AssertionError(f"unexpected event {event!r}")


def one_input(data: bytes) -> None:
    """``data[0]``: limit, deflate, raw or built frames; ``data[1]``: read sizes; then input."""
    if len(data) < 2:
        return
    flags, split = data[0], data[1]
    limit = 16 << ((flags >> 2) & 7)  # 16 B .. 2 KiB
    deflate = None
    if flags & 1:
        deflate = DeflateParams(
            server_no_context_takeover=bool(flags & 0x20),
            client_no_context_takeover=bool(flags & 0x40),
            client_max_window_bits=15 if not flags & 0x80 else 9,
        )
    protocol = ServerProtocol(max_message_size=limit, deflate=deflate)
    state = {"ended": False}
    if flags & 2:
        fdp = atheris.FuzzedDataProvider(data[2:])
        parts = []
        while fdp.remaining_bytes():
            parts.append(masked_frame(fdp))
            if fdp.ConsumeProbability() < 0.05 and not protocol.close_sent:
                protocol.send_close(1000, "bye")  # ours first: the peer's answer completes it
            if fdp.ConsumeProbability() < 0.05 and not protocol.close_sent:
                protocol.send_message("x" * fdp.ConsumeIntInRange(0, 70))
        wire = b"".join(parts)
    else:
        wire = data[2:]
    step = 0
    while wire:  # the same bytes in reads of many sizes
        cut = len(wire) if not split else 1 + (split * (step + 1)) % 131
        check(protocol.receive_data(wire[:cut]), protocol, limit, state)
        wire = wire[cut:]
        step += 1
    protocol.outgoing.clear()


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

"""The "other client" of ``hostile.py``, in a process of its own.

It used to be a task in the attackers' Trio loop, so its latency included the
time that loop spent sending attack bytes: the figure measured the benchmark as
much as the server.  Alone, with blocking sockets, it measures the server.

    python benchmarks/hostile_probe.py PORT SECONDS   # prints "p99_ms failures count"
"""

from __future__ import annotations

import socket
import sys
import time


def main() -> None:
    port, seconds = int(sys.argv[1]), float(sys.argv[2])
    latencies: list[float] = []
    failures = 0
    sock: socket.socket | None = None
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            start = time.perf_counter()
            sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            data = b""
            while not data.endswith(b"hello"):
                chunk = sock.recv(4096)
                if not chunk:
                    raise OSError("closed")
                data += chunk
            latencies.append(time.perf_counter() - start)
        except OSError:
            failures += 1
            if sock is not None:
                sock.close()
            sock = None
        time.sleep(0.005)
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)] * 1000 if latencies else float("nan")
    print(f"{p99:.3f} {failures} {len(latencies)}")


if __name__ == "__main__":
    main()

"""Many concurrent HTTP/2 streams from an independent client: nghttp2's ``h2load``
(Debian's nghttp2-client), 2000 requests over 10 connections, 10 streams each."""

from __future__ import annotations

import re
import shutil
import subprocess

import http_apps
import pytest
import trio

from hornbeam_trio.testing import run_server

H2LOAD = shutil.which("h2load")


@pytest.mark.skipif(
    H2LOAD is None, reason="h2load is not installed (apt-get install nghttp2-client)"
)
async def test_h2load_2000_requests_on_10_connections_10_streams_each_all_succeed() -> None:
    assert H2LOAD is not None
    async with run_server(http_apps.hello) as server:
        done = await trio.to_thread.run_sync(
            lambda: subprocess.run(
                [H2LOAD, "-n", "2000", "-c", "10", "-m", "10", f"http://127.0.0.1:{server.port}/"],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
        )
    assert done.returncode == 0, done.stderr
    requests = re.search(
        r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded", done.stdout
    )
    assert requests is not None, done.stdout
    assert requests.groups() == ("2000", "2000", "2000"), done.stdout
    assert "status codes: 2000 2xx" in done.stdout, done.stdout
    assert "Application protocol: h2c" in done.stdout, done.stdout

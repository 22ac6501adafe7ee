"""Fixtures shared by the test modules that talk to a real redis-server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis_server import RedisServer, redis_server, skip_or_fail


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    """One redis-server on a free port per test module (skips, or fails in CI, without one)."""
    skip_or_fail()
    with redis_server() as server:
        yield server


@pytest.fixture
def redis_url(redis: RedisServer) -> str:
    """That server's URL, emptied for the test."""
    redis.command("FLUSHALL")
    return redis.url

"""pytest plugin (entry point ``hornbeam_trio``, loaded automatically once installed).

Fixtures, for tests run by pytest-trio or by AnyIO's plugin on the trio backend:

* ``hornbeam_server`` -- :func:`hornbeam_trio.testing.run_server` itself, so a test writes
  ``async with hornbeam_server(app) as server: ...`` without an import.
* ``hornbeam_state`` -- the in-process state store, emptied before and after the test,
  so tests that use ``state_set``/``state_incr`` cannot see each other's keys.

An ``async def`` test that takes one of these fixtures and carries no ``trio`` or
``anyio`` mark is marked ``trio`` when pytest-trio is installed, so it runs without
``trio_mode``.  A test that imports ``run_server`` instead needs ``trio_mode = true``
(or its own mark): the plugin cannot tell it is a Trio test.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import pytest

from ..runtime import default_runtime
from . import run_server

FIXTURES = frozenset({"hornbeam_server", "hornbeam_state"})


@pytest.fixture
def hornbeam_server() -> Any:
    return run_server


@pytest.fixture
def hornbeam_state() -> Iterator[Any]:
    backend: Any = default_runtime().backend
    backend.clear()
    yield backend
    backend.clear()


@pytest.hookimpl(trylast=True)  # after pytest-trio's trio_mode marking: no second mark
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.pluginmanager.hasplugin("trio"):
        return
    for item in items:
        if not isinstance(item, pytest.Function) or not inspect.iscoroutinefunction(item.obj):
            continue
        if FIXTURES.isdisjoint(item.fixturenames):
            continue
        if item.get_closest_marker("trio") is None and item.get_closest_marker("anyio") is None:
            item.add_marker(pytest.mark.trio)

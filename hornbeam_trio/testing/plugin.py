"""pytest plugin (entry point ``hornbeam_trio``, loaded automatically once installed).

Fixtures, for tests run by pytest-trio or by AnyIO's plugin on the trio backend:

* ``hornbeam_server`` -- :func:`hornbeam_trio.testing.run_server` itself, so a test writes
  ``async with hornbeam_server(app) as server: ...`` without an import.
* ``hornbeam_state`` -- the in-process state store, emptied before and after the test,
  so tests that use ``state_set``/``state_incr`` cannot see each other's keys.

When pytest-trio is installed, an ``async def`` test with no ``trio``, ``anyio`` or
``asyncio`` mark is marked ``trio`` if it takes one of these fixtures or its module uses
hornbeam_trio (imports anything of ``hornbeam_trio`` or ``hornbeam_erlang``): such a test
can only run under Trio, so it runs as copied, without ``trio_mode`` in the user's
configuration.  Other async tests are left to whatever the project configured.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import pytest

from ..runtime import default_runtime
from . import run_server

FIXTURES = frozenset({"hornbeam_server", "hornbeam_state"})
OUR_PACKAGES = frozenset({"hornbeam_trio", "hornbeam_erlang"})
ASYNC_MARKS = ("trio", "anyio", "asyncio")


def _package_of(value: Any) -> str:
    """The top-level package a module-level name of a test module comes from."""
    name = value.__name__ if inspect.ismodule(value) else getattr(value, "__module__", None)
    return name.partition(".")[0] if isinstance(name, str) else ""


def _uses_hornbeam(module: Any, seen: dict[Any, bool]) -> bool:
    """Whether a test module imported anything of ours (looked at once per module)."""
    if module not in seen:
        seen[module] = any(_package_of(value) in OUR_PACKAGES for value in vars(module).values())
    return seen[module]


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
    seen: dict[Any, bool] = {}
    for item in items:
        if not isinstance(item, pytest.Function) or not inspect.iscoroutinefunction(item.obj):
            continue
        if any(item.get_closest_marker(mark) is not None for mark in ASYNC_MARKS):
            continue
        if not FIXTURES.isdisjoint(item.fixturenames) or _uses_hornbeam(item.module, seen):
            item.add_marker(pytest.mark.trio)

"""pytest plugin (entry point ``hornbeam_trio``, loaded automatically once installed).

Fixtures, for tests run by pytest-trio or by AnyIO's plugin on the trio backend:

* ``hornbeam_server`` -- :func:`hornbeam_trio.testing.run_server` itself, so a test writes
  ``async with hornbeam_server(app) as server: ...`` without an import.
* ``hornbeam_state`` -- the in-process state store, emptied before and after the test,
  so tests that use ``state_set``/``state_incr`` cannot see each other's keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ..runtime import default_runtime
from . import run_server


@pytest.fixture
def hornbeam_server() -> Any:
    return run_server


@pytest.fixture
def hornbeam_state() -> Iterator[Any]:
    backend: Any = default_runtime().backend
    backend.clear()
    yield backend
    backend.clear()

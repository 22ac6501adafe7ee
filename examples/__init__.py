"""Runnable examples: every section of Hornbeam's WebSocket guide, on hornbeam_trio.

Each module runs with ``python -m hornbeam_trio examples.<module>:<app>``; see
``examples/README.md`` for the tour and ``tests/test_examples.py`` for the tests that
start each one as a separate process and drive it with real clients.
"""

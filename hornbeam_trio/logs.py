"""The server's two loggers and their one-line format.

``hornbeam_trio`` carries lifecycle and error messages; ``hornbeam_trio.access`` carries
one line per request and is silent unless ``access_log`` is on.  Lines look like
uvicorn's (``INFO:     Listening on http://127.0.0.1:8000``) so people reading logs of
either server see the same shape.  Only the process entry points (``run()``, the CLI)
call :func:`setup_logging`; a library user embedding ``serve()`` keeps control of
logging and our loggers simply propagate to theirs.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

LOGGER_NAME = "hornbeam_trio"
ACCESS_LOGGER_NAME = "hornbeam_trio.access"
TRACE = 5
"""Below DEBUG, for per-frame detail; ``--log-level trace`` turns it on."""

logging.addLevelName(TRACE, "TRACE")

logger = logging.getLogger(LOGGER_NAME)
access_logger = logging.getLogger(ACCESS_LOGGER_NAME)


class OneLineFormatter(logging.Formatter):
    """``LEVEL:`` padded to a fixed width, then the message, as uvicorn prints it."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"{(record.levelname + ':').ljust(9)} {record.getMessage()}"
        if record.exc_info:
            # A traceback here is one we could not name where it happened: keep it.
            text += "\n" + self.formatException(record.exc_info)
        return text


class _OurHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler we installed, so a second set-up replaces it instead of doubling lines."""


_LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": TRACE,
}


def level_number(log_level: str) -> int:
    """Map Config.log_level (validated there against the same names) to a logging level."""
    return _LEVELS[log_level]


def setup_logging(log_level: str, access_log: bool, stream: TextIO | None = None) -> None:
    """Send our loggers to ``stream`` (stderr) in the one-line format.

    They stop propagating so that a root logger configured elsewhere does not print each
    line twice; calling this again (as a reload child does) replaces our handler.
    """
    handler = _OurHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(OneLineFormatter())
    for old in [h for h in logger.handlers if isinstance(h, _OurHandler)]:
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(level_number(log_level))
    logger.propagate = False
    # Disabled rather than filtered, so the server's isEnabledFor() check skips building
    # the line at all when nobody will read it.
    access_logger.disabled = not access_log


__all__ = [
    "ACCESS_LOGGER_NAME",
    "LOGGER_NAME",
    "TRACE",
    "OneLineFormatter",
    "access_logger",
    "level_number",
    "logger",
    "setup_logging",
]

"""structlog set-up for the daemon: JSON lines (journald, log shippers) or console.

Only the daemon imports this (structlog costs >100 ms to import; the client never
needs it).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TextIO

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


_open_file: TextIO | None = None


def configure(
    level: str = "info",
    fmt: str = "json",
    stream: TextIO | None = None,
    log_file: Path | None = None,
) -> None:
    """(Re)configure structlog; called again on reload, which also reopens `log_file`
    (so logrotate can move the file away and send SIGHUP)."""
    global _open_file
    if log_file is not None:
        previous = _open_file
        _open_file = open(log_file, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        stream = _open_file
        if previous is not None:
            previous.close()
    renderer = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(**context: object) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger().bind(**context)

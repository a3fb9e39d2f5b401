"""structlog set-up for the daemon: JSON lines (journald, log shippers) or console.

Only the daemon imports this (structlog costs >100 ms to import; the client never
needs it).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from typing import TextIO

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
# log.file is created owner read-write, group read (for log readers such as adm, as
# logrotate's `create 0640 root adm` keeps it), never world-readable whatever the umask:
# the log names clients, their peers and the commands they run.
LOG_FILE_MODE = 0o640


def _open_log_file(path: Path) -> TextIO:
    """Append to `path`, creating it with LOG_FILE_MODE (an existing file keeps its mode)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, LOG_FILE_MODE)
    return os.fdopen(fd, "a", buffering=1, encoding="utf-8")


class _Destination:
    """The stream every logger writes to; reconfiguring swaps its target in place.

    Loggers built before a reload (the daemon's own, live connections') hold on to
    this object, so a reopened log file (logrotate + SIGHUP) reaches them too, and the
    old file can be closed without a write ever hitting a closed file.
    """

    def __init__(self) -> None:
        self.target: TextIO = sys.stderr
        self._owned: TextIO | None = None  # a log file we opened and must close
        self._lock = threading.Lock()

    def switch(self, stream: TextIO | None, log_file: Path | None) -> None:
        new_owned = _open_log_file(log_file) if log_file else None
        with self._lock:
            old_owned, self._owned = self._owned, new_owned
            self.target = new_owned or stream or sys.stderr
        if old_owned is not None:
            old_owned.close()

    def write(self, text: str) -> None:
        with self._lock:
            self.target.write(text)

    def flush(self) -> None:
        with self._lock:
            self.target.flush()


_destination = _Destination()


def configure(
    level: str = "info",
    fmt: str = "json",
    stream: TextIO | None = None,
    log_file: Path | None = None,
) -> None:
    """(Re)configure structlog; called again on reload, which also reopens `log_file`
    (so logrotate can move the file away and send SIGHUP)."""
    _destination.switch(stream, log_file)
    renderer = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(_destination),  # type: ignore[arg-type]  # a file-like proxy
        cache_logger_on_first_use=False,
    )


def get_logger(**context: object) -> structlog.typing.FilteringBoundLogger:
    """A lazy logger: it follows later reconfiguration (level, format) until bound."""
    return structlog.get_logger(**context)

"""structlog set-up for the daemon: JSON lines (journald, log shippers) or console.

Only the daemon imports this (structlog costs >100 ms to import; the client never
needs it).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, TextIO

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
    """Where every log line goes, and the logger structlog hands each rendered line to.

    Loggers built before a reload (the daemon's own, live connections') hold on to
    this object, so a reopened log file (logrotate + SIGHUP) reaches them too, and the
    old file can be closed without a write ever hitting a closed file.

    A line is one os.write() of its bytes, under one lock: not structlog's PrintLogger
    over a line-buffered text file (three locks, a flush and a text layer per line),
    which took half of an event's CPU. A regular file opened O_APPEND gets each line
    whole; the lock keeps lines whole on a pipe (journald, a terminal) and keeps a
    reopen from closing the descriptor under a writer.
    """

    def __init__(self) -> None:
        self.target: TextIO = sys.stderr
        self._fd: int | None = None  # the target's descriptor; None: write() it
        self._owned: TextIO | None = None  # a log file we opened and must close
        self._lock = threading.Lock()

    def switch(self, stream: TextIO | None, log_file: Path | None) -> None:
        new_owned = _open_log_file(log_file) if log_file else None
        target = new_owned or stream or sys.stderr
        fd = _descriptor(target)
        with self._lock:
            old_owned, self._owned = self._owned, new_owned
            self.target, self._fd = target, fd
        if old_owned is not None:
            old_owned.close()

    def msg(self, message: str) -> None:
        """Write one rendered event as one line (structlog calls it by level name)."""
        data = (message + "\n").encode("utf-8", "backslashreplace")
        with self._lock:
            if self._fd is None:
                self.target.write(data.decode("utf-8"))
                self.target.flush()
                return
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]

    debug = info = warning = warn = error = err = critical = exception = fatal = msg
    failure = log = msg


def _descriptor(stream: TextIO) -> int | None:
    """The stream's file descriptor (flushed, so earlier text stays before our lines),
    or None for one without (a StringIO)."""
    try:
        stream.flush()
        return stream.fileno()
    except (OSError, ValueError, AttributeError):
        return None


_destination = _Destination()


def _fallback(value: object) -> object:
    """What JSON cannot encode natively: its __structlog__() or its repr (as structlog's
    JSONRenderer does)."""
    method = getattr(value, "__structlog__", None)
    return method() if callable(method) else repr(value)


# One encoder for every event: json.dumps(..., default=...) builds a new one per call.
_encode = json.JSONEncoder(default=_fallback).encode


def _render_json(_logger: object, _name: str, event: MutableMapping[str, Any]) -> str:
    return _encode(event)


def configure(
    level: str = "info",
    fmt: str = "json",
    stream: TextIO | None = None,
    log_file: Path | None = None,
) -> None:
    """(Re)configure structlog; called again on reload, which also reopens `log_file`
    (so logrotate can move the file away and send SIGHUP)."""
    _destination.switch(stream, log_file)
    renderer = _render_json if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=_factory,
        cache_logger_on_first_use=False,
    )


def _factory(*_args: object) -> _Destination:
    return _destination


def get_logger(**context: object) -> structlog.typing.FilteringBoundLogger:
    """A lazy logger: it follows later reconfiguration (level, format) until bound."""
    return structlog.get_logger(**context)

"""The commands the daemon is running: journaled, and reachable by the daemon's stop.

Each running process group is recorded in the state journal (radmin/journal.py) for as
long as it runs, so a daemon that dies leaves a list the next start uses to end what it
orphaned. At a stop, the daemon ends commands itself through this registry -- SIGTERM,
then SIGKILL after limits.kill_grace -- and each command's session still sends its
RESULT (signal 15, "daemon shutting down"), instead of the connection just dropping.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from radmin import journal

SHUTTING_DOWN = "daemon shutting down"


class Endable(Protocol):
    """What the registry can do to a running command (exec's ProcessPump)."""

    def end_by_daemon(self, reason: str, signum: int) -> None: ...


class RunningCommands:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[int, Endable] = {}

    @contextlib.contextmanager
    def running(self, state_dir: Path, pgid: int, command: Endable) -> Iterator[None]:
        """Journal the group and make it reachable while the block runs (until reaped).
        A journal that cannot be written does not stop the command: it is only the
        crash-recovery net."""
        try:
            record: journal.ProcessRecord | None = journal.ProcessRecord(state_dir, pgid)
        except OSError:
            record = None
        with self._lock:
            self._running[pgid] = command
        try:
            yield
        finally:
            with self._lock:
                self._running.pop(pgid, None)
            if record is not None:
                record.close()

    def __len__(self) -> int:
        with self._lock:
            return len(self._running)

    def end_all(self, reason: str = SHUTTING_DOWN, signum: int = signal.SIGTERM) -> int:
        """Signal every running command's group; their sessions answer with a RESULT."""
        with self._lock:
            commands = list(self._running.values())
        for command in commands:
            command.end_by_daemon(reason, signum)
        return len(commands)


def end_orphans(state_dir: Path) -> list[int]:
    """At start: end the groups a previous run left behind (see journal)."""
    if os.geteuid() != 0 and not journal.running_dir(state_dir).is_dir():
        return []
    return journal.recover_processes(state_dir)

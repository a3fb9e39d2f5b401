"""`exec -b/--gather`: each distinct output once, under the hosts that produced it.

As `clush -b` (which merges only outputs with the same exit status) and `dshbak -c`:
hosts are grouped by (stdout, how the command ended). Groups of hosts whose command
exited 0 come first, then the other endings (the status in the header, lowest first),
then the hosts where nothing ran, grouped by reason (unreachable, refused, skipped).
Within each part, groups come in the natural order of their first host (web2 before
web10). A header names the hosts as a folded node set with their count:

    ---------------
    web[1-3,5] (4)
    ---------------
    Linux

stderr is not gathered: it stays live on stderr, each line prefixed with its host.
"""

from __future__ import annotations

import os
import threading

from radmin.client import ExecResult
from radmin.fanout import KINDS, OK, UNREACHABLE, HostOutcome
from radmin.nodeset import fold, natural_key

# Annotations only: `typing` costs ~4 ms to import on radmin-cli's start-up path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import BinaryIO

_MIN_RULE = 15  # clush's rule width


class Gathered:
    """Outputs by (stdout, ending) as hosts finish; thread-safe. One copy of each
    distinct output is kept, so 1,000 hosts printing the same line hold it once."""

    def __init__(self) -> None:
        self._groups: dict[tuple[int, int, str, bytes], list[str]] = {}
        self._lock = threading.Lock()

    def add(self, outcome: HostOutcome, stdout: bytes) -> None:
        key = _group_key(outcome, stdout)
        with self._lock:
            self._groups.setdefault(key, []).append(outcome.target.label)

    def render(self) -> bytes:
        """The report: every group under its header, in the order the module says."""
        with self._lock:
            groups = list(self._groups.items())
        ordered = sorted(
            groups, key=lambda item: (item[0][:2], natural_key(min(item[1], key=natural_key)))
        )
        out = bytearray()
        for (part, _, ending, stdout), labels in ordered:
            header = f"{fold(labels)} ({len(labels)})"
            if part or ending:
                header += f": {ending}"
            rule = "-" * max(_MIN_RULE, len(header))
            out += f"{rule}\n{header}\n{rule}\n".encode()
            out += stdout
            if stdout and not stdout.endswith(b"\n"):
                out += b"\n"
        return bytes(out)


def _group_key(outcome: HostOutcome, stdout: bytes) -> tuple[int, int, str, bytes]:
    """(part, order within it, ending as the header says it, stdout)."""
    result = outcome.result
    if isinstance(result, ExecResult):  # the command ran (or was cancelled running)
        if outcome.kind == OK:
            return 0, 0, "", stdout
        status = 143 if result.timed_out else result.returncode
        return 1, status, outcome.reason(), stdout
    reason = outcome.reason()
    if outcome.kind == UNREACHABLE:
        reason = f"unreachable: {reason}"
    return 2, KINDS.index(outcome.kind), reason, b""


class Progress:
    """`12/1000 hosts done` on the last line of a terminal's stderr, redrawn after each
    host and after each live stderr line that passes through `write` (so the two never
    share a line). Off (every call a plain write) when stderr is not a terminal."""

    def __init__(self, stream: BinaryIO, total: int, on_closed: Callable[[], None] | None = None):
        self.stream = stream
        self.total = total
        self.done = 0
        self.live = os.isatty(stream.fileno()) if _has_fileno(stream) else False
        self.on_closed = on_closed
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        """A chunk of whole stderr lines from a host."""
        with self._lock:
            self._emit((b"\r\x1b[K" + data + self._line()) if self.live else data)

    def tick(self) -> None:
        with self._lock:
            self.done += 1
            if self.live:
                self._emit(b"\r\x1b[K" + self._line())

    def clear(self) -> None:
        with self._lock:
            if self.live:
                self._emit(b"\r\x1b[K")
                self.live = False

    def _line(self) -> bytes:
        return f"{self.done}/{self.total} hosts done".encode()

    def _emit(self, data: bytes) -> None:
        try:
            self.stream.write(data)
            self.stream.flush()
        except (BrokenPipeError, ValueError):
            self.live = False


def _has_fileno(stream: BinaryIO) -> bool:
    try:
        stream.fileno()
    except (OSError, ValueError, AttributeError):
        return False
    return True

"""The journal of in-flight uploads and running commands, so neither outlives a crash.

Every upload writes into a temporary file beside its destination. Before that file is
created, its path is recorded as one small file in `STATE_DIR/inflight/`; the record is
removed once the temporary file has been renamed into place or deleted. A daemon killed
with SIGKILL leaves records behind, and the next start deletes the temporary files they
name. One file per upload (not one shared file) keeps concurrent uploads lock-free.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

TEMP_PREFIX = ".radmin-upload-"
_NAME_MAX = 255  # bytes in one path component on Linux file systems


def temp_name(destination: str) -> str:
    """`.radmin-upload-<random>-<base name>`, cut to fit a file name's 255 bytes."""
    head = f"{TEMP_PREFIX}{secrets.token_hex(6)}-"
    tail = os.fsencode(os.path.basename(destination))[: _NAME_MAX - len(head)]
    return head + tail.decode("utf-8", "ignore")


def inflight_dir(state_dir: Path) -> Path:
    return state_dir / "inflight"


def prepare(state_dir: Path) -> None:
    inflight_dir(state_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    running_dir(state_dir).mkdir(mode=0o700, parents=True, exist_ok=True)


class JournalEntry:
    """The record of one temporary file; `close()` when the file is gone or renamed."""

    def __init__(self, state_dir: Path, temp_path: Path):
        self.temp_path = temp_path
        self.record = inflight_dir(state_dir) / f"{os.getpid()}-{secrets.token_hex(8)}"
        fd = os.open(self.record, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, os.fsencode(temp_path))
            os.fsync(fd)  # the record must be on disk before the file it names exists
        finally:
            os.close(fd)

    def close(self) -> None:
        self.record.unlink(missing_ok=True)


def recover(state_dir: Path) -> list[str]:
    """Delete the temporary files named by leftover records; return what was removed."""
    removed: list[str] = []
    folder = inflight_dir(state_dir)
    if not folder.is_dir():
        return removed
    for record in folder.iterdir():
        try:
            temp_path = Path(os.fsdecode(record.read_bytes()))
        except OSError:
            continue
        # Only ever delete files that carry our prefix: a damaged record must not
        # become a way to delete something else (nor stop the daemon: a NUL from a
        # torn write makes unlink() raise ValueError).
        ours = temp_path.name.startswith(TEMP_PREFIX) and "\0" not in str(temp_path)
        if temp_path.is_absolute() and ours:
            try:
                temp_path.unlink()
                removed.append(str(temp_path))
            except FileNotFoundError:
                pass
            except OSError:
                continue
        record.unlink(missing_ok=True)
    return removed


# -- running commands ---------------------------------------------------------------------
#
# Each command's process group is recorded as `STATE_DIR/running/<pgid>` holding the
# leader's start time (field 22 of /proc/PID/stat, in clock ticks since boot) and removed
# once the group is reaped. A daemon that dies without removing them (kill -9, a crash)
# leaves commands running under PID 1 with no timeout and nobody reading their output;
# the next start ends them. The start time guards against a reused PID: a record whose
# leader now has another start time names a stranger, who is left alone.


def running_dir(state_dir: Path) -> Path:
    return state_dir / "running"


def process_start_time(pid: int) -> int | None:
    """The start time of process `pid` (clock ticks after boot), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    try:
        return int(fields[19])  # field 22 overall
    except (IndexError, ValueError):
        return None


class ProcessRecord:
    """The record of one running process group; `close()` once it is reaped."""

    def __init__(self, state_dir: Path, pgid: int):
        self.record = running_dir(state_dir) / str(pgid)
        started = process_start_time(pgid)
        fd = os.open(self.record, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, f"{pgid} {started if started is not None else -1}\n".encode())
        finally:
            os.close(fd)

    def close(self) -> None:
        self.record.unlink(missing_ok=True)


def recover_processes(state_dir: Path) -> list[int]:
    """End the process groups a previous run left running; return their IDs.

    A leader that still runs with the recorded start time is ours; one with another
    start time is a stranger who got the PID (skipped). A leader that is gone while
    members of its group live on is still ours: Linux does not give a PID to a new
    process while a process group of that ID exists.
    """
    import signal

    ended: list[int] = []
    folder = running_dir(state_dir)
    if not folder.is_dir():
        return ended
    for record in folder.iterdir():
        try:
            pgid_text, start_text = record.read_text().split()
            pgid, recorded = int(pgid_text), int(start_text)
        except (OSError, ValueError):
            record.unlink(missing_ok=True)
            continue
        now = process_start_time(pgid)
        if pgid > 1 and (now is None or now == recorded):
            try:
                os.killpg(pgid, signal.SIGKILL)
                ended.append(pgid)
            except (ProcessLookupError, PermissionError):
                pass
        record.unlink(missing_ok=True)
    return ended

"""The journal of in-flight uploads, so no temporary file outlives a crash.

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

"""Shell sessions recorded as asciicast v2, the format `asciinema play` replays.

    {"version": 2, "width": 80, "height": 24, "timestamp": 1764185000, "env": {...}}
    [0.012345, "o", "root@web1:~# "]
    [1.5, "r", "120x40"]

One JSON header line, then one JSON array per event: seconds since the start, "o" for
output (what the terminal showed) or "r" for a resize ("COLSxROWS"). Only output is
recorded, as asciinema does: what was typed shows through the terminal's echo, and
passwords typed at a prompt without echo stay out of the file.

The file is the daemon's (root's), not the shell user's: it lands in
`state_dir/sessions/` (0700), created exclusively (O_EXCL, never through a symlink),
mode 0600, so the recorded user can neither read nor rewrite the record of what they did.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import time
from pathlib import Path

SESSIONS_DIR = "sessions"


class Recording:
    """One open asciicast v2 file; `output()` and `resize()` append events."""

    def __init__(self, fd: int, path: Path, width: int, height: int, env: dict[str, str]):
        self.path = path
        self._file = os.fdopen(fd, "w", encoding="utf-8", buffering=1)  # a line per event
        self._started = time.monotonic()
        # Output arrives in arbitrary chunks: a UTF-8 character split across two of them
        # must not become two replacement characters.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        header = {
            "version": 2,
            "width": width,
            "height": height,
            "timestamp": int(time.time()),
            "env": env,
        }
        self._write(header)

    def output(self, data: bytes) -> None:
        text = self._decoder.decode(data)
        if text:
            self._event("o", text)

    def resize(self, rows: int, cols: int) -> None:
        self._event("r", f"{cols}x{rows}")

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            tail = self._decoder.decode(b"", final=True)
            if tail:
                self._event("o", tail)
        with contextlib.suppress(OSError):
            self._file.close()

    def _event(self, code: str, data: str) -> None:
        self._write([round(time.monotonic() - self._started, 6), code, data])

    def _write(self, item: object) -> None:
        self._file.write(json.dumps(item) + "\n")


def open_recording(
    state_dir: Path,
    run_id: str,
    client: str,
    size: tuple[int, int],
    env: dict[str, str],
) -> Recording:
    """A new recording `state_dir/sessions/RUN_ID-CLIENT-TIMESTAMP.cast` (`-2`, `-3`...
    appended if two sessions of one run start in the same second). OSError if it cannot
    be made: the caller refuses the shell rather than run it unrecorded."""
    folder = _sessions_folder(state_dir)
    try:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        base = f"{run_id}-{client}-{stamp}"
        for attempt in range(1, 100):
            name = f"{base}.cast" if attempt == 1 else f"{base}-{attempt}.cast"
            try:
                fd = os.open(
                    name,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o600,
                    dir_fd=folder,
                )
            except FileExistsError:
                continue
            os.fchmod(fd, 0o600)  # whatever the umask
            rows, cols = size
            return Recording(fd, state_dir / SESSIONS_DIR / name, cols, rows, env)
        raise FileExistsError(f"{state_dir / SESSIONS_DIR}/{base}.cast and 98 more exist")
    finally:
        os.close(folder)


def _sessions_folder(state_dir: Path) -> int:
    """The sessions folder, opened (made 0700 if missing; never followed if a symlink)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(state_dir / SESSIONS_DIR, 0o700)
    fd = os.open(state_dir / SESSIONS_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.fchmod(fd, 0o700)
    except BaseException:
        os.close(fd)
        raise
    return fd

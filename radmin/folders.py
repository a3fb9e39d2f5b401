"""The folders radmind works in (`state_dir`, `put.default_dir`): made when missing.

The daemon creates them at start and on reload; `radmind check` asks the same question
without creating anything (`creation_problem`), so a folder that `run` could not make
is reported by `check`, as FILE:LINE: KEY, before a restart fails.
"""

from __future__ import annotations

import os
from pathlib import Path

# Like /var/tmp's own subfolders: others may enter and read (uploads are listed by path
# anyway), only the daemon's user may add or remove entries.
FOLDER_MODE = 0o755


def _nearest_existing(path: Path) -> Path:
    """`path` itself or its closest ancestor that exists (the one a mkdir -p starts at)."""
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def _writable(path: Path) -> bool:
    """Whether this process may create entries in `path` (a read-only mount says no,
    even to root)."""
    return os.access(path, os.W_OK | os.X_OK)


def creation_problem(path: Path, writable: bool) -> str | None:
    """Why radmind could not use `path` as a folder (None if it could); no side effect.

    `writable`: radmind writes into the folder itself (state_dir's journal), so an
    existing but read-only folder is a problem too.
    """
    nearest = _nearest_existing(path)
    if not nearest.is_dir():
        what = "is not a folder" if nearest == path else "is in the way: not a folder"
        return f"cannot use {path}: {nearest} {what}"
    if nearest != path and not _writable(nearest):
        return f"cannot create {path}: {nearest} is not writable (uid {os.geteuid()})"
    if nearest == path and writable and not _writable(path):
        return f"{path} is not writable (uid {os.geteuid()})"
    return None


def ensure_folder(path: Path, mode: int = FOLDER_MODE) -> list[Path]:
    """Create `path` and its missing parents with `mode`, whatever the umask; return
    the folders created (empty when it existed). Raises OSError."""
    missing: list[Path] = []
    while not os.path.isdir(path) and path != path.parent:
        missing.append(path)
        path = path.parent
    created = []
    for folder in reversed(missing):
        try:
            os.mkdir(folder, mode)
        except FileExistsError:
            if os.path.isdir(folder):  # made by someone else meanwhile: theirs, untouched
                continue
            raise
        os.chmod(folder, mode)
        created.append(folder)
    return created

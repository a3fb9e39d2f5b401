"""Where a download lands on the client: a temporary file nobody can see half-written.

radmin/transfer.py `land()` does the landing (space reserved, filled, verified, fsynced,
renamed over the target) through an access object; this one is the client's. Its
temporary file is an unnamed `O_TMPFILE` in the target's folder where the filesystem
supports it: a radmin-cli killed with SIGKILL leaves nothing behind, as there is no name
to leave. Once verified it gets a name by `linkat()` of /proc/self/fd/N (the unprivileged
way: AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH) and is renamed over the target.

Where O_TMPFILE is not supported (or /proc is not mounted), and in the instant between
linkat and rename, the file has a name a later get recognises:
`.radmin-get-PID-RANDOM-BASENAME`. Every get removes such files in its folder whose
process no longer runs (the PID says whose it is, so a get running in parallel keeps
its own).
"""

from __future__ import annotations

import errno
import os
import secrets
import stat

from radmin.userfiles import FolderAccess

TEMP_PREFIX = ".radmin-get-"
_NAME_MAX = 255  # bytes in one path component on Linux file systems
# O_TMPFILE is refused with one of these where the filesystem (or kernel) lacks it.
_NO_TMPFILE = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT)


def temp_name(target: str) -> str:
    """`.radmin-get-PID-RANDOM-BASENAME`, cut to fit a file name's 255 bytes."""
    head = f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-"
    tail = os.fsencode(os.path.basename(target))[: _NAME_MAX - len(head)]
    return head + tail.decode("utf-8", "ignore")


def owner_pid(name: str) -> int | None:
    """The PID a temporary name carries, or None if it is not one of ours."""
    if not name.startswith(TEMP_PREFIX):
        return None
    pid, _, rest = name[len(TEMP_PREFIX) :].partition("-")
    return int(pid) if pid.isdigit() and rest else None


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


class LocalFolder(FolderAccess):
    """The target's folder, for `transfer.land()`: the names land() asks for are mapped
    to an unnamed O_TMPFILE (or to a recognisable name) here."""

    def __init__(self) -> None:
        super().__init__()
        self.path = ""  # the folder, resolved: for messages (the work uses dir_fd)
        self._unnamed: dict[str, int] = {}  # land()'s temporary name -> O_TMPFILE fd
        self._named: dict[str, str] = {}  # land()'s temporary name -> the name on disk

    def remove_stale(self) -> list[str]:
        """Remove temporary files of earlier gets whose process is gone; their names."""
        removed = []
        with os.scandir(self.dir_fd) as entries:
            for entry in entries:
                pid = owner_pid(entry.name)
                if pid is None or _running(pid) or not entry.is_file(follow_symlinks=False):
                    continue
                try:
                    os.unlink(entry.name, dir_fd=self.dir_fd)
                    removed.append(entry.name)
                except OSError:
                    pass  # not ours to remove after all (permissions): leave it
        return removed

    def create(self, name: str) -> int:
        if os.path.isdir("/proc/self/fd"):
            try:
                flags = os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC
                fd = os.open(".", flags, 0o600, dir_fd=self.dir_fd)
            except OSError as exc:
                if exc.errno not in _NO_TMPFILE:
                    raise
            else:
                self._unnamed[name] = fd
                return fd
        on_disk = temp_name(name)
        fd = super().create(on_disk)
        self._named[name] = on_disk
        return fd

    def rename(self, source: str, target: str) -> None:
        """Name the verified file, then rename it over `target` (never following a
        symlink there: the link is replaced, as put does on the host)."""
        if source in self._unnamed:
            fd = self._unnamed.pop(source)
            on_disk = temp_name(target)
            os.link(f"/proc/self/fd/{fd}", on_disk, dst_dir_fd=self.dir_fd, follow_symlinks=True)
            self.created.add(on_disk)
            self._named[source] = on_disk
        super().rename(self._named.pop(source, source), target)

    def unlink(self, name: str) -> None:
        if self._unnamed.pop(name, None) is not None:
            return  # no name on disk: closing its descriptor frees it
        super().unlink(self._named.pop(name, name))

    def regular_file(self, name: str) -> os.stat_result | None:
        """lstat of `name` if it is a regular file (a symlink there is replaced, not
        followed, so it is no copy of ours)."""
        try:
            st = os.stat(name, dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        return st if stat.S_ISREG(st.st_mode) else None

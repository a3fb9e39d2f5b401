"""Files opened, created and renamed with a run_as user's rights, checked by the kernel.

radmind runs as root so that it can act for any client; a client's `run_as` user must
still not be able to write where that user could not. Re-implementing the kernel's
permission rules (modes, ACLs, the sticky bit, read-only mounts...) in Python would be
a copy with holes, so the namespace operations of a put -- resolve the folder, open it,
open the old file for reading, create the temporary file, rename it into place, remove
it -- and the open of the file a get sends, run in a short-lived child that has dropped
to the user's uid, gid and groups.
The child hands the descriptors back (SCM_RIGHTS) and the daemon streams the data into
them, so throughput does not depend on the child. The daemon's own threads never change
their euid. When run_as is root (or absent while the daemon is root) the same
`FolderAccess` runs in the daemon itself.

Paths are walked from `/` one component at a time with O_NOFOLLOW|O_DIRECTORY and every
later operation is relative to the final directory descriptor: a folder swapped for a
symlink after the check cannot redirect the upload (a symlink met on the walk means the
path changed, and the request is refused).
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import signal
import socket
import stat
from dataclasses import dataclass
from typing import Any

_MAX_MESSAGE = 16 * 1024
_REPLY_TIMEOUT = 60.0  # seconds: a child stuck on a hung filesystem does not hold us forever
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class PathChanged(OSError):
    """A component of a checked path became a symlink (or stopped being a folder)."""


@dataclass(frozen=True)
class Entry:
    """What lstat says of a name in the folder (no timestamps: they do not cross over)."""

    mode: int
    uid: int
    gid: int
    size: int


class FolderAccess:
    """One destination folder, opened by whoever runs this (the daemon, or the child)."""

    def __init__(self) -> None:
        self.dir_fd = -1
        self.created: set[str] = set()  # temporary names not yet renamed or removed

    def open_folder(self, folder: str) -> str:
        """Resolve `folder` (symlinks followed once) and open it without following any
        symlink; return the resolved path the caller must check against the policy."""
        resolved = os.path.realpath(folder, strict=True)
        if not os.path.isdir(resolved):
            raise NotADirectoryError(errno.ENOTDIR, "not a folder", folder)
        self.dir_fd = walk(resolved)
        return resolved

    def lstat(self, name: str) -> Entry | None:
        try:
            st = os.stat(name, dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        return Entry(st.st_mode, st.st_uid, st.st_gid, st.st_size)

    def open_read(self, name: str) -> int | None:
        """The existing file for hashing; None if this user may not read it."""
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(name, flags, dir_fd=self.dir_fd)
        except OSError:
            return None
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped since lstat
            os.close(fd)
            return None
        return fd

    def open_source(self, name: str) -> int:
        """An existing file to send (get), opened with this user's rights. The last
        component is never followed (O_NOFOLLOW: a symlink fails with ELOOP), a FIFO
        does not block the open (O_NONBLOCK), a terminal does not become ours
        (O_NOCTTY); the caller refuses anything but a regular file from fstat. Errors
        are the kernel's, so the caller can say which (no such file, permission)."""
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
        return os.open(name, flags, dir_fd=self.dir_fd)

    def create(self, name: str) -> int:
        fd = os.open(
            name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=self.dir_fd,
        )
        self.created.add(name)
        return fd

    def rename(self, source: str, target: str) -> None:
        """Atomically replace `target` (a symlink there is replaced, never followed)."""
        os.rename(source, target, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        self.created.discard(source)
        os.fsync(self.dir_fd)

    def unlink(self, name: str) -> None:
        try:
            os.unlink(name, dir_fd=self.dir_fd)
        except FileNotFoundError:
            pass
        self.created.discard(name)

    def close(self) -> None:
        """Remove what was created and not renamed -- by directory descriptor, so it
        works even if the folder was renamed meanwhile."""
        for name in list(self.created):
            try:
                self.unlink(name)
            except OSError:
                pass
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1


def walk(path: str) -> int:
    """A descriptor of the folder `path`, opened from `/` with no symlink followed."""
    fd = os.open("/", _DIR_FLAGS)
    try:
        for part in path.split("/"):
            if part in ("", "."):
                continue
            try:
                next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise PathChanged(exc.errno, "the path changed while it was opened") from None
                raise
            os.close(fd)
            fd = next_fd
        return fd
    except BaseException:
        os.close(fd)
        raise


# -- as another user: a child process ---------------------------------------------------

# Calls the child answers; the values that come back are descriptors (sent beside the
# reply) or JSON.
_FD_CALLS = frozenset({"open_read", "open_source", "create"})
_CALLS = frozenset(
    {"open_folder", "lstat", "open_read", "open_source", "create", "rename", "unlink"}
)


class DelegatedAccess:
    """FolderAccess run by a child that is the run_as user: same calls, same answers."""

    def __init__(self, user: pwd.struct_passwd):
        groups = os.getgrouplist(user.pw_name, user.pw_gid)  # NSS: before fork, not after
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, reported through the socket
            parent.close()
            _child_main(child, user.pw_uid, user.pw_gid, groups)
        child.close()
        self.pid = pid
        self.sock = parent
        self.sock.settimeout(_REPLY_TIMEOUT)

    def _call(self, name: str, *args: Any) -> Any:
        self.sock.sendall(json.dumps({"call": name, "args": args}).encode())
        data, fds, _, _ = socket.recv_fds(self.sock, _MAX_MESSAGE, 1)
        if not data:
            raise OSError(errno.EIO, "the file helper process ended unexpectedly")
        reply = json.loads(data)
        if "errno" in reply:
            for fd in fds:
                os.close(fd)
            cls = PathChanged if reply.get("changed") else OSError
            raise cls(reply["errno"], reply["message"])
        if name in _FD_CALLS:
            return fds[0] if fds else None
        return reply.get("value")

    def open_folder(self, folder: str) -> str:
        return self._call("open_folder", folder)

    def lstat(self, name: str) -> Entry | None:
        value = self._call("lstat", name)
        return Entry(*value) if value is not None else None

    def open_read(self, name: str) -> int | None:
        return self._call("open_read", name)

    def open_source(self, name: str) -> int:
        fd = self._call("open_source", name)
        if fd is None:  # an answer without a descriptor: the child could not pass it
            raise OSError(errno.EIO, "the file helper passed no descriptor")
        return fd

    def create(self, name: str) -> int:
        return self._call("create", name)

    def rename(self, source: str, target: str) -> None:
        self._call("rename", source, target)

    def unlink(self, name: str) -> None:
        self._call("unlink", name)

    def close(self) -> None:
        """End the child (it removes what it created and did not rename) and reap it."""
        self.sock.close()
        os.waitpid(self.pid, 0)


def _child_main(sock: socket.socket, uid: int, gid: int, groups: list[int]) -> None:
    """The child: drop to the user for good, then answer calls until the daemon hangs up.

    Only system calls and pure Python run here (no logging, no locks another thread of
    the daemon may have held at fork time), and it always ends with os._exit.
    """
    status = 1
    try:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)  # the daemon's handlers are not ours
        # Hold nothing of the daemon's: its listeners, other clients' connections.
        keep = sock.fileno()
        os.closerange(3, keep)
        os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
        os.setgroups(groups)
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        access = FolderAccess()
        try:
            _serve(sock, access)
        finally:
            access.close()
        status = 0
    finally:
        os._exit(status)


def _serve(sock: socket.socket, access: FolderAccess) -> None:
    while data := sock.recv(_MAX_MESSAGE):
        message = json.loads(data)
        name, args = message["call"], message["args"]
        fds: list[int] = []
        try:
            if name not in _CALLS:
                raise OSError(errno.EINVAL, f"unknown call {name}")
            value = getattr(access, name)(*args)
            if name in _FD_CALLS:
                fds = [value] if value is not None else []
                value = None
            elif isinstance(value, Entry):
                value = [value.mode, value.uid, value.gid, value.size]
            reply: dict[str, Any] = {"value": value}
        except OSError as exc:
            reply = {
                "errno": exc.errno or errno.EIO,
                "message": exc.strerror or str(exc),
                "changed": isinstance(exc, PathChanged),
            }
        socket.send_fds(sock, [json.dumps(reply).encode()], fds)
        for fd in fds:
            os.close(fd)  # the daemon has its own copy; cleanup goes by name


Access = FolderAccess | DelegatedAccess


def access_as(user: pwd.struct_passwd) -> Access:
    """In the daemon when it already is that user (root for root), else in a child."""
    if user.pw_uid == os.geteuid():
        return FolderAccess()
    return DelegatedAccess(user)

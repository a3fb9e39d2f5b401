"""`radmind run --detach --pidfile PATH`: the classic daemon, for hosts without systemd.

python-daemon's DaemonContext does the detaching (double fork, setsid, umask, chdir /,
stdio to /dev/null, closing inherited descriptors). Around it:
  * a pidfile that is locked (flock) for the daemon's whole life: a live daemon holds
    the lock, so a second start refuses; a stale file (no lock) is taken over; it is
    removed at exit;
  * a readiness pipe: the command returns only once the daemon is listening (exit 0),
    or with the daemon's own error (exit 1), so `radmind run --detach && radmin-cli ping`
    works in scripts, as Type=forking units expect.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable
from pathlib import Path

from radmin.errors import RadminError


class PidFile:
    """A context manager DaemonContext enters after detaching."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def holder(self) -> int | None:
        """The pid of a live daemon holding the file, or None if it is free or stale."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        finally:
            os.close(fd)
        return None

    def __enter__(self) -> PidFile:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RadminError(f"{self.path} is held by another running radmind") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None


def run_detached(pidfile: Path, start: Callable[[], Callable[[], None]]) -> int:
    """Detach and run. `start()` runs in the daemon: it binds and returns the serve loop.

    Returns (in the original process) 0 once the daemon is ready, 1 with its error.
    """
    pid_file = PidFile(pidfile)
    running = pid_file.holder()
    if running is not None:
        raise RadminError(f"radmind is already running (pid {running}, pidfile {pidfile})")
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        return _await_readiness(read_end)
    os.close(read_end)
    _daemon_main(pid_file, write_end, start)
    os._exit(0)


def _await_readiness(read_end: int) -> int:
    chunks = []
    while chunk := os.read(read_end, 4096):
        chunks.append(chunk)
    os.close(read_end)
    try:
        os.wait()  # the first child exits as soon as it has forked the daemon
    except ChildProcessError:
        pass
    message = b"".join(chunks).decode(errors="replace")
    if message.startswith("ready "):
        print(f"radmind started, pid {message.split()[1]}")
        return 0
    print(f"radmind: {message or 'the daemon exited before it was ready'}")
    return 1


def _daemon_main(pid_file: PidFile, ready_fd: int, start: Callable[[], Callable[[], None]]) -> None:
    import daemon  # type: ignore[import-untyped]  # python-daemon; only --detach needs it

    context = daemon.DaemonContext(pidfile=pid_file, files_preserve=[ready_fd], umask=0o022)
    try:
        context.open()
    except (RadminError, OSError) as exc:
        _tell(ready_fd, str(exc))
        return
    try:
        serve = start()
    except Exception as exc:  # anything that stops the start must reach the admin
        # radmin's own errors are already worded for the admin; others need their type.
        _tell(
            ready_fd, str(exc) if isinstance(exc, RadminError) else f"{type(exc).__name__}: {exc}"
        )
        context.close()
        return
    _tell(ready_fd, f"ready {os.getpid()}")
    try:
        serve()
    finally:
        context.close()


def _tell(fd: int, message: str) -> None:
    try:
        os.write(fd, message.encode())
        os.close(fd)
    except OSError as exc:
        if exc.errno != errno.EBADF:
            raise

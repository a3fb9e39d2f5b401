"""The connection helper's place in the client home: `<home>/mux/`, and its local wire.

`radmin-cli mux` (radmin/mux/helper.py) keeps daemon connections open between clients,
as ssh's ControlPersist does; clients reach it through radmin/mux/client.py. Both sides
meet here, in three names inside one 0700 folder:

  * `sock`: the helper's Unix stream socket;
  * `lock`: flock()ed by the helper that owns `sock`, from before it binds until after
    it has unlinked it -- so a second helper never steals a living one's socket, and a
    helper that finds the lock free knows any `sock` left over is stale (SIGKILL);
  * `log`: the helper's stderr when a client started it.

ControlPath's pitfalls do not exist by construction: the folder is opened once
(O_PATH) and the socket reached as `/proc/self/fd/N/sock`, a path of ~25 bytes whatever
the home's length (sun_path holds 108); staleness is decided by the lock, never by
guessing; expiry unlinks the name before the listener closes (radmin/mux/helper.py).

Kept free of heavy imports: a client imports this on radmin-cli's start-up path.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from radmin.identity import ClientHome

MUX_DIR_MODE = 0o700
SOCK = "sock"
LOCK = "lock"
LOG = "log"
DEFAULT_IDLE_TIMEOUT = 60.0
# How long a starter waits for a new helper to listen (its start-up is ~0.1-0.3 s).
START_WAIT_S = 1.0
# The first frame a client sends is a HELLO whose "mux" field says what it wants:
# "open" (a session to one daemon), "status" or "stop". The helper's answers are HELLOs
# too, "mux": "ok" / "error" / "status" / "stopping" (docs/protocol.md, "The local
# helper"). This field never reaches a daemon.
MUX_FIELD = "mux"


class MuxDir:
    """`<home>/mux` held open as a directory descriptor: names inside it are reached
    through /proc/self/fd, so a home path of any length works."""

    def __init__(self, fd: int):
        self.fd = fd

    @classmethod
    def open(cls, home: ClientHome, create: bool) -> MuxDir | None:
        """The folder (made 0700 when `create`); None if it does not exist. A folder
        others may enter is made private again: it is the first wall around the socket."""
        path = home.path / "mux"
        if create:
            os.makedirs(path, mode=MUX_DIR_MODE, exist_ok=True)
        try:
            fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return None
        mux = cls(fd)
        if create:
            mux.make_private(str(path))
        return mux

    def make_private(self, shown: str) -> None:
        info = os.stat(self.fd)
        if info.st_uid != os.getuid():
            self.close()
            raise PermissionError(f"{shown} belongs to uid {info.st_uid}, not to us")
        if info.st_mode & 0o777 != MUX_DIR_MODE:
            os.chmod(f"/proc/self/fd/{self.fd}", MUX_DIR_MODE)

    @property
    def sock_path(self) -> str:
        """What bind() and connect() take: short whatever the home's length."""
        return f"/proc/self/fd/{self.fd}/{SOCK}"

    def open_file(self, name: str, flags: int, mode: int = 0o600) -> int:
        return os.open(name, flags | os.O_CLOEXEC, mode, dir_fd=self.fd)

    def unlink_sock(self) -> None:
        try:
            os.unlink(SOCK, dir_fd=self.fd)
        except FileNotFoundError:
            pass

    def close(self) -> None:
        os.close(self.fd)

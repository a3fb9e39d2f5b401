"""get, client side: ask for a file, say what copy we already have, land what comes.

The local copy (a regular file at the target) is announced by its size and, when the
digest cache knows it, its SHA-256; if the daemon's file has the same size and no digest
was sent, both sides hash at once (`digest_first`). Nothing is sent when they match:
"unchanged" (the permission bits are fixed locally if only they differ). Otherwise the
data lands through radmin/transfer.py as a put lands on the host -- a temporary file
beside the target (radmin/client/landing.py: O_TMPFILE where possible), space reserved,
SHA-256 verified against the daemon's DIGEST, fsync, the remote permission bits, rename.
Any failure leaves the old local file as it was. The daemon's half is radmin/ops/get.py;
docs/protocol.md has the frame order.
"""

from __future__ import annotations

import os
import posixpath
import stat
import time
from collections import namedtuple

from radmin.errors import LocalFileError, ProtocolError
from radmin.protocol import FrameType

# Annotations only: `typing` costs ~4 ms to import on radmin-cli's start-up path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from radmin.client.connection import Connection
    from radmin.client.landing import LocalFolder

# Seconds without a frame from the daemon while the data flows before giving up.
STALL_TIMEOUT = 60.0
# Only these bits come over: a downloaded file never becomes set-id or sticky here.
KEPT_BITS = 0o777


class GetResult(
    namedtuple(
        "GetResult",
        "status path remote_path bytes sha256 duration_s mode metadata_only size",
        defaults=(False, 0),
    )
):
    """`status`: "changed" or "unchanged"; `path`: the local file; `remote_path`: the
    file on the host; `bytes`: bytes transferred (0 when unchanged or only the mode was
    fixed); `mode`: the permission bits the local file got (the remote ones, 0o777 at
    most); `metadata_only`: changed, but only the mode; `size`: the file's size."""

    __slots__ = ()


def local_target(remote_path: str, local_path: str | None) -> str:
    """Where the file lands: LOCAL_PATH, or inside it when it is a folder or ends in
    `/`; by default the remote base name in the current folder (scp's rules)."""
    name = posixpath.basename(remote_path)
    if not name or name in (".", ".."):
        raise ValueError(f"remote path {remote_path!r} names no file")
    if local_path is None:
        return name
    if local_path.endswith("/") or os.path.isdir(local_path):
        return os.path.join(local_path, name)
    return local_path


def get_file(
    conn: Connection,
    remote_path: str,
    local_path: str | None = None,
    *,
    progress: Callable[[int], None] | None = None,
    on_size: Callable[[int], None] | None = None,
    stall_timeout: float = STALL_TIMEOUT,
) -> GetResult:
    """See Connection.get."""
    from radmin.client.landing import LocalFolder

    started = time.monotonic()
    target = local_target(remote_path, local_path)
    folder, name = os.path.split(target)
    access = LocalFolder()
    try:
        _open_folder(access, folder or ".")
        _remove_stale(access)
        copy = _LocalCopy.find(access, name, target, conn.options.digest_cache())
        try:
            status, reply, sent, digest, mode_only = _exchange(
                conn, remote_path, access, name, target, copy, progress, on_size, stall_timeout
            )
        finally:
            copy.close()
    finally:
        access.close()
    return GetResult(
        status=status,
        path=target,
        remote_path=str(reply.get("path", remote_path)),
        bytes=sent,
        sha256=digest,
        duration_s=time.monotonic() - started,
        mode=int(reply.get("mode", 0)) & KEPT_BITS,
        metadata_only=mode_only,
        size=int(reply.get("size", sent)),
    )


def _remove_stale(access: LocalFolder) -> None:
    """Best effort: a folder we may write but not list keeps its leftovers."""
    try:
        access.remove_stale()
    except OSError:
        pass


def _open_folder(access: LocalFolder, folder: str) -> None:
    try:
        access.path = access.open_folder(folder)
    except OSError as exc:
        raise LocalFileError(f"{folder}: {exc.strerror or exc}") from None


class _LocalCopy:
    """The regular file already at the target, opened (never through a symlink) so it
    can be hashed if the daemon asks; `size` None when there is none."""

    def __init__(self, fd: int | None, st: os.stat_result | None, digest: str | None):
        self.fd, self.st, self.digest = fd, st, digest

    @classmethod
    def find(cls, access: LocalFolder, name: str, target: str, cache: Any) -> _LocalCopy:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, dir_fd=access.dir_fd)
        except OSError:
            return cls(None, None, None)  # none, a symlink, unreadable: replaced anyway
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            os.close(fd)
            raise LocalFileError(f"{target} is a directory")
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return cls(None, None, None)
        return cls(fd, st, cache.get(st))

    @property
    def size(self) -> int | None:
        return self.st.st_size if self.st is not None else None

    def sha256(self, cache: Any) -> str:
        from radmin.hashing import fd_sha256

        assert self.fd is not None
        try:
            return fd_sha256(self.fd, cache)
        except OSError:
            return "0" * 64  # cannot be read after all: no match, the data comes

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _exchange(
    conn: Connection,
    remote_path: str,
    access: LocalFolder,
    name: str,
    target: str,
    copy: _LocalCopy,
    progress: Callable[[int], None] | None,
    on_size: Callable[[int], None] | None,
    stall_timeout: float,
) -> tuple[str, dict[str, Any], int, str, bool]:
    """The request and its answers: (status, the RESULT, bytes received, sha256, only
    the mode changed)."""
    cache = conn.options.digest_cache()
    conn.request("get", path=remote_path, size=copy.size, sha256=copy.digest)
    frame_type, reply = conn.receive(FrameType.PROCEED, FrameType.RESULT, long_wait=True)
    if frame_type is FrameType.PROCEED and reply.get("digest_first"):
        conn.send(FrameType.DIGEST, {"sha256": copy.sha256(cache)})
        frame_type, reply = conn.receive(FrameType.PROCEED, FrameType.RESULT, long_wait=True)
    if frame_type is FrameType.RESULT:
        conn.check(reply)
        status = _fix_mode(copy, target, int(reply.get("mode", 0)) & KEPT_BITS)
        return status, reply, 0, str(reply.get("sha256")), status == "changed"
    size, mode = _announced(reply)
    if on_size is not None:
        on_size(size)
    digest, landed = _receive(conn, access, name, target, size, mode, progress, stall_timeout)
    reply = conn.result(long_wait=True)
    cache.remember(landed, digest)  # the next get of the same content reads nothing
    return "changed", reply, size, digest, False


def _announced(proceed: dict[str, Any]) -> tuple[int, int]:
    size, mode = proceed.get("size"), proceed.get("mode")
    if not isinstance(size, int) or size < 0 or not isinstance(mode, int):
        raise ProtocolError("get: PROCEED must carry the file's size and mode")
    return size, mode & KEPT_BITS


def _fix_mode(copy: _LocalCopy, target: str, mode: int) -> str:
    """The content is the same: "unchanged", or "changed" after fixing only the bits."""
    assert copy.fd is not None and copy.st is not None
    if stat.S_IMODE(copy.st.st_mode) == mode:
        return "unchanged"
    try:
        os.fchmod(copy.fd, mode)
    except OSError as exc:
        raise LocalFileError(f"cannot set the mode of {target}: {exc.strerror}") from None
    return "changed"


def _receive(
    conn: Connection,
    access: LocalFolder,
    name: str,
    target: str,
    size: int,
    mode: int,
    progress: Callable[[int], None] | None,
    stall_timeout: float,
) -> tuple[str, os.stat_result]:
    """Land the FILE_DATA that follows (transfer.land), or leave the stream in step
    and the old file intact: (sha256, the landed file's stat)."""
    from radmin.transfer import Receiver, TransferFailed, land

    class Download(Receiver):
        PEER = "daemon"
        STALLED = "no data from the daemon for {:g} s"

    receiver = Download(
        conn.frames, size, None, stall_timeout, target, announce=lambda: None, progress=progress
    )
    filled = False

    def fill(fd: int, temp: Any) -> str:
        nonlocal filled
        digest = receiver.fill(fd, temp)
        filled = True
        try:
            os.fchmod(fd, mode)  # on the descriptor, before the file has a name
        except OSError as exc:
            raise TransferFailed(f"cannot set the mode: {exc.strerror}") from None
        return digest

    try:
        with conn.translated("connection lost"):
            return land(access, access.path, name, None, size, fill)
    except TransferFailed as exc:
        failure = exc
    # The landing failed and the old file is intact: bring the stream back in step.
    ours = filled or not receiver.sender_done  # a local failure, not the daemon's CANCEL
    with conn.translated("connection lost"):
        reply = _rest_of_stream(conn, cancel=not receiver.sender_done)
    if not ours and not reply.get("ok"):
        conn.check(reply)  # the daemon's reason: the file changed or shrank while sent
    raise LocalFileError(f"{target}: {failure}; the old file, if any, is unchanged")


def _rest_of_stream(conn: Connection, cancel: bool) -> dict[str, Any]:
    """After a failure: CANCEL if the daemon is still sending, skip what it sent
    meanwhile, and return its RESULT."""
    if cancel:
        conn.frames.send_json(FrameType.CANCEL, {})
    conn.frames.sock.settimeout(conn.options.connect_timeout + STALL_TIMEOUT)
    while True:
        frame = conn.frames.recv_frame()
        if frame.type is FrameType.RESULT:
            return frame.json()
        if frame.type is FrameType.ERROR:
            raise ProtocolError(f"the daemon reported an error: {frame.json().get('message')}")
        if frame.type not in (FrameType.FILE_DATA, FrameType.DIGEST, FrameType.CANCEL):
            raise ProtocolError(f"expected FILE_DATA or RESULT, got {frame.type.name}")

"""A file received as data frames, verified, and landed atomically -- for put on the
daemon and for get on the client (radmin/client/get.py, landing.py): the same code for
both directions; `send_file` is the sending half of both (put's client, get's daemon).

    land(): journal the temporary file -> create it beside the destination (through a
            FolderAccess, so as the run_as user) -> reserve its space -> fill it ->
            fsync -> rename over the destination. Any failure: the temporary file is
            removed (by directory descriptor) and the destination is untouched.
    Receiver.fill(): FILE_DATA frames hashed and written by a second thread (hashlib
            and os.write release the GIL, so the second core works while this one
            decrypts TLS), then the SHA-256 compared with the sender's.

It knows nothing of who asked or of policy; callers decide where and with which rights.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import queue
import re
import threading
from collections import namedtuple
from collections.abc import Callable
from pathlib import Path

from radmin import journal
from radmin.errors import ConnectionClosed, ProtocolError, RequestError
from radmin.protocol import FrameSocket, FrameType

# Annotations only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from radmin.userfiles import Access

SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_QUEUE_CHUNKS = 4  # frames in flight between the socket thread and the writer (memory)


class TransferFailed(RequestError):
    """The transfer started but could not be completed; the destination is untouched."""

    code = "failed"


def receive_digest(frames: FrameSocket, timeout: float) -> str:
    """Read the sender's DIGEST frame (a CANCEL ends the transfer)."""
    frames.sock.settimeout(timeout)
    frame = frames.recv_frame()
    if frame.type is FrameType.CANCEL:
        raise TransferFailed("cancelled by the client")
    if frame.type is not FrameType.DIGEST:
        raise ProtocolError(f"expected DIGEST, got {frame.type.name}")
    digest = frame.json().get("sha256")
    if not isinstance(digest, str) or not SHA256_HEX.fullmatch(digest):
        raise ProtocolError("DIGEST must carry sha256 as 64 lowercase hex digits")
    return digest


def land(
    access: Access,
    folder: str,
    name: str,
    state_dir: Path | None,
    size: int,
    fill: Callable[[int, Path], str],
) -> tuple[str, os.stat_result]:
    """Create a journaled temporary file in `folder` (open in `access`), reserve `size`
    bytes, let `fill(fd, temp_path)` write, verify and fsync it (returning its SHA-256),
    then rename it over `name`. Returns the digest and the file's stat after the rename
    (which changes ctime: a digest cache keyed on it then hits next time).

    `state_dir` None: no journal (get on the client, whose `access` leaves nothing a
    crash could orphan, or names it so the next get removes it)."""
    temp_name = journal.temp_name(name)
    temp = Path(folder) / temp_name
    entry = None
    try:
        if state_dir is not None:
            entry = journal.JournalEntry(state_dir, temp)
    except OSError as exc:
        raise TransferFailed(f"cannot record the upload in {state_dir}: {exc.strerror}") from None
    renamed = False
    try:
        try:
            fd = access.create(temp_name)
        except OSError as exc:
            raise TransferFailed(f"cannot create a file in {folder}: {exc.strerror}") from None
        try:
            reserve_space(fd, size, folder)
            digest = fill(fd, temp)
            try:
                access.rename(temp_name, name)
            except OSError as exc:
                raise TransferFailed(
                    f"cannot move the file into place at {temp.with_name(name)}: {exc.strerror}"
                ) from None
            renamed = True
            return digest, os.fstat(fd)
        finally:
            os.close(fd)
    finally:
        if not renamed:
            with contextlib.suppress(OSError):
                access.unlink(temp_name)
        if entry is not None:
            entry.close()


def reserve_space(fd: int, size: int, folder: str) -> None:
    """Refuse a file that cannot fit before a byte is sent, and allocate its blocks now,
    so a disk that fills meanwhile fails here rather than half-way through."""
    if size == 0:
        return
    st = os.fstatvfs(fd)
    free = st.f_bavail * st.f_frsize
    if size > free:
        raise TransferFailed(
            f"not enough space in {folder}: the file needs {size} bytes, {free} are free"
        )
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise TransferFailed(f"not enough space in {folder} for {size} bytes") from None
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # some filesystems cannot
            raise TransferFailed(
                f"cannot allocate {size} bytes in {folder}: {exc.strerror}"
            ) from None


class Receiver:
    """`size` bytes of FILE_DATA from `frames`, then the digest check.

    `announce()` tells the sender to start. `sha256` is the sender's digest if it came
    first, else None: a DIGEST frame follows the data. `stall_timeout` bounds each wait
    once data flows (a sender that goes quiet must not hold space). After a failure
    mid-stream, `discard_rest` keeps the stream in step with a sender that has not seen
    the answer yet. `progress` is called with the size of each data frame received.

    PEER and STALLED word the messages: the daemon receives from the client (put); a
    subclass with the daemon as PEER receives a get on the client.
    """

    PEER = "client"
    STALLED = "upload stalled for {:g} s (limits.upload_stall_timeout)"

    def __init__(
        self,
        frames: FrameSocket,
        size: int,
        sha256: str | None,
        stall_timeout: float,
        what: str,
        announce: Callable[[], None],
        progress: Callable[[int], None] | None = None,
    ):
        self.frames = frames
        self.progress = progress
        self.announce = announce  # tells the sender to start (put: PROCEED)
        self.started = False  # announced: the sender streams from now on
        self.size = size
        self.sha256 = sha256
        self.stall_timeout = stall_timeout
        self.what = what  # the destination, for messages
        self.received = 0
        self.sender_done = False  # all it announced arrived, or it cancelled

    def fill(self, fd: int, temp: Path) -> str:
        """Write what arrives into fd, verify it, fsync; the verified SHA-256."""
        self.announce()
        self.started = True
        self.frames.activity = "receiving a file"
        writer = _Writer(fd)
        writer.start()
        try:
            self._stream_into(writer)
        finally:
            with self.frames.keepalive():  # the writer may still be busy with the disk
                writer.finish()
        if writer.error is not None:
            raise TransferFailed(writer.error)
        actual = writer.digest.hexdigest()
        if self.sha256 is None:  # sent after the data
            try:
                self.sha256 = receive_digest(self.frames, self.stall_timeout)
            finally:
                self.sender_done = True
        if actual != self.sha256:
            raise TransferFailed(
                f"checksum mismatch: the {self.PEER}'s sha256 is {self.sha256}, received {actual}"
            )
        try:
            with self.frames.keepalive():  # a large file's fsync can take a while
                os.fsync(fd)
        except OSError as exc:
            raise TransferFailed(f"writing {self.what} failed: {exc.strerror}") from None
        return actual

    def _stream_into(self, writer: _Writer) -> None:
        self.frames.sock.settimeout(self.stall_timeout)
        while self.received < self.size:
            if writer.error is not None:
                raise TransferFailed(writer.error)
            frame = self._next_frame()
            if frame.type is FrameType.CANCEL:
                self.sender_done = True
                raise TransferFailed(f"cancelled by the {self.PEER}")
            if frame.type is not FrameType.FILE_DATA:
                raise ProtocolError(f"expected FILE_DATA, got {frame.type.name}")
            if self.received + len(frame.payload) > self.size:
                raise ProtocolError(
                    f"{self.PEER} sent more than the {self.size} bytes it announced"
                )
            self.received += len(frame.payload)
            writer.put(bytes(frame.payload))
            if self.progress is not None:
                self.progress(len(frame.payload))
        self.sender_done = self.sha256 is not None  # else a DIGEST frame is still to come

    def _next_frame(self):
        try:
            return self.frames.recv_frame()
        except TimeoutError:
            raise ConnectionClosed(self.STALLED.format(self.stall_timeout)) from None

    def discard_rest(self) -> None:
        """After an early answer: skip FILE_DATA until the announced size (and the DIGEST
        that follows when it was not announced) or a CANCEL."""
        trailing_digest = self.sha256 is None
        while not self.sender_done:
            frame = self._next_frame()
            if frame.type is FrameType.CANCEL:
                return
            if frame.type is FrameType.DIGEST and trailing_digest:
                return
            if frame.type is not FrameType.FILE_DATA:
                raise ProtocolError(f"expected FILE_DATA or CANCEL, got {frame.type.name}")
            self.received += len(frame.payload)
            if self.received >= self.size and not trailing_digest:
                return


class _Writer(threading.Thread):
    """Hashes and writes chunks beside the socket thread; remembers the first error."""

    def __init__(self, fd: int):
        super().__init__(daemon=True, name="transfer-writer")
        self.fd = fd
        self.digest = hashlib.sha256()
        self.chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=_QUEUE_CHUNKS)
        self.error: str | None = None

    def put(self, chunk: bytes) -> None:
        self.chunks.put(chunk)

    def finish(self) -> None:
        self.chunks.put(None)
        self.join()

    def run(self) -> None:
        while (chunk := self.chunks.get()) is not None:
            if self.error is not None:
                continue  # keep draining so the socket thread never blocks on us
            self.digest.update(chunk)
            try:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(self.fd, view) :]
            except OSError as exc:
                self.error = f"writing the upload failed: {exc.strerror}"


# -- the sending side ------------------------------------------------------------------


class Sent(namedtuple("Sent", "bytes sha256 stable stopped")):
    """`sha256`: None when not hashed, or stopped early; `stopped`: the receiver
    answered before all was sent. (A collections.namedtuple: `typing` costs ~4 ms on
    the client's start-up path.)"""

    __slots__ = ()


class FileShrank(OSError):
    """The file got shorter while it was being sent: what was announced cannot come."""


def send_file(
    path: str | int,
    size: int,
    send_chunk: Callable[[memoryview], None],
    answered_early: Callable[[], bool],
    progress: Callable[[int], None] | None = None,
    hash_it: bool = True,
) -> Sent:
    """Send exactly `size` bytes of `path` as chunks of at most MAX_DATA, hashing them
    if asked, and stop as soon as the receiver has answered (it failed: disk full).

    `Sent.stable` is the file's stat if it did not change while it was read (a digest
    cache may keep the digest under it). Local read failures are OSErrors (FileShrank for a file cut
    short); the caller tells its peer (CANCEL) and maps them to its own error.
    """
    from radmin.protocol import MAX_DATA

    digest = hashlib.sha256() if hash_it else None
    view = memoryview(bytearray(MAX_DATA))
    sent = 0
    # An int is a descriptor the caller opened (get: as run_as, never through a
    # symlink) and keeps: read from its current offset, not closed here.
    with open(path, "rb", buffering=0, closefd=not isinstance(path, int)) as f:
        before = os.fstat(f.fileno())
        while sent < size:
            n = f.readinto(view[: min(MAX_DATA, size - sent)])
            if not n:
                raise FileShrank(errno.EIO, f"{path} shrank while it was being sent")
            if digest is not None:
                digest.update(view[:n])
            send_chunk(view[:n])
            sent += n
            if progress is not None:
                progress(n)
            if answered_early():
                return Sent(sent, None, None, stopped=True)
        after = os.fstat(f.fileno())
    stable = _same_version(before, after) and after.st_size == size
    return Sent(sent, digest.hexdigest() if digest else None, before if stable else None, False)


def _same_version(a: os.stat_result, b: os.stat_result) -> bool:
    from radmin.hashing import version_key

    return version_key(a) == version_key(b)

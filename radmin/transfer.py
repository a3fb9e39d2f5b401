"""A file received as data frames, verified, and landed atomically -- for put on the
daemon and for get on the client (radmin/client/get.py, landing.py): the same code for
both directions; `send_file` is the sending half of both (put's client, get's daemon).

    land(): journal the temporary file -> create it beside the destination (through a
            FolderAccess, so as the run_as user) -> reserve its space -> fill it ->
            fsync -> rename over the destination. Any failure: the temporary file is
            removed (by directory descriptor) and the destination is untouched.
    Receiver.fill(): each FILE_DATA payload received straight into one of a few reused,
            page-aligned 1 MiB buffers (FrameSocket.recv_data_into: no copy), hashed
            and written by a second thread (hashlib and os.write release the GIL, so
            the second core works while this one decrypts TLS) -- with O_DIRECT where
            the file system allows it, so no page-cache copy and no fsync tail -- then
            the SHA-256 compared with the sender's, then fsync.
    send_file(): read into reused buffers, hashed on a second thread while this one
            encrypts and sends.

It knows nothing of who asked or of policy; callers decide where and with which rights.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
import queue
import re
import threading
from collections import namedtuple
from collections.abc import Callable
from pathlib import Path

from radmin import journal
from radmin.errors import ConnectionClosed, ProtocolError, RequestError
from radmin.protocol import MAX_DATA, Frame, FrameSocket, FrameType

# Annotations only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from radmin.userfiles import Access

SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_QUEUE_CHUNKS = 4  # frames in flight between the socket thread and the writer (memory)
_ALIGN = 4096  # O_DIRECT alignment: the largest logical block size of common devices
_DIRECT_MIN = 8 * 1024 * 1024  # smaller files: buffered (the page cache is cheap there)


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
        writer = _Writer(fd, self.size)
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
            buffer = writer.take()  # waits while the writer is behind: flow control
            got = self._next_data(buffer)
            if isinstance(got, Frame):
                writer.give_back(buffer)
                if got.type is FrameType.CANCEL:
                    self.sender_done = True
                    raise TransferFailed(f"cancelled by the {self.PEER}")
                raise ProtocolError(f"expected FILE_DATA, got {got.type.name}")
            if self.received + got > self.size:
                raise ProtocolError(
                    f"{self.PEER} sent more than the {self.size} bytes it announced"
                )
            self.received += got
            writer.put(buffer, got)
            if self.progress is not None:
                self.progress(got)
        self.sender_done = self.sha256 is not None  # else a DIGEST frame is still to come

    def _next_data(self, buffer: memoryview) -> Frame | int:
        """A FILE_DATA payload straight into `buffer` (its length), or another frame."""
        try:
            return self.frames.recv_data_into(buffer, FrameType.FILE_DATA)
        except TimeoutError:
            raise ConnectionClosed(self.STALLED.format(self.stall_timeout)) from None

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
    """Hashes and writes beside the socket thread; remembers the first error.

    The socket thread takes a free buffer, receives one FILE_DATA payload into it and
    puts it here; once hashed and written, the buffer is free again. A fixed set of
    page-aligned buffers: no allocation or copy per frame, at most _QUEUE_CHUNKS MiB in
    flight, and O_DIRECT writes (see _DirectFile) can use them as they are.
    """

    def __init__(self, fd: int, size: int):
        super().__init__(daemon=True, name="transfer-writer")
        self.file = _DirectFile(fd, direct=size >= _DIRECT_MIN)
        self.digest = hashlib.sha256()
        self.chunks: queue.SimpleQueue[tuple[memoryview, int] | None] = queue.SimpleQueue()
        self.free: queue.SimpleQueue[memoryview] = queue.SimpleQueue()
        for _ in range(_QUEUE_CHUNKS if size > MAX_DATA else 1):
            self.free.put(memoryview(mmap.mmap(-1, MAX_DATA)))  # anonymous: page-aligned
        self.error: str | None = None

    def take(self) -> memoryview:
        """A free buffer of MAX_DATA bytes (waits for the writer to release one)."""
        return self.free.get()

    def give_back(self, buffer: memoryview) -> None:
        self.free.put(buffer)

    def put(self, buffer: memoryview, length: int) -> None:
        self.chunks.put((buffer, length))

    def finish(self) -> None:
        self.chunks.put(None)
        self.join()

    def run(self) -> None:
        while (item := self.chunks.get()) is not None:
            buffer, length = item
            try:
                if self.error is None:  # else keep draining: the socket thread never waits
                    self.digest.update(buffer[:length])
                    self.file.write(buffer[:length])
            except OSError as exc:
                self.error = f"writing the upload failed: {exc.strerror}"
            except BaseException as exc:  # never leave the socket thread waiting on take()
                self.error = f"writing the upload failed: {exc!r}"
            finally:
                self.free.put(buffer)


class _DirectFile:
    """Writes to fd with O_DIRECT while offsets and lengths allow it, then buffered.

    WHY: a buffered write copies every byte into the page cache (on a VM, allocating
    those pages is most of the daemon's CPU per GiB) and leaves it all dirty for the
    final fsync, a tail of about 0.5 s per GiB. O_DIRECT sends the aligned buffers to
    the device as they come; the fsync after them has only metadata and the last
    partial block to flush. It needs the buffer, the file offset and the length aligned
    to the device's block size: a length that is not (the file's tail, or a sender's odd
    frame size) switches the file back to buffered writes for the rest, and so does a
    file system that refuses O_DIRECT (EINVAL). Durability is unchanged: the caller
    still fsyncs before the rename.
    """

    def __init__(self, fd: int, direct: bool):
        self.fd = fd
        self.offset = 0
        self.direct = direct and _set_direct(fd, True)

    def write(self, view: memoryview) -> None:
        while view:
            if self.direct and (self.offset % _ALIGN or len(view) % _ALIGN):
                self._buffered()
            try:
                n = os.write(self.fd, view)
            except OSError as exc:
                if self.direct and exc.errno == errno.EINVAL:
                    self._buffered()  # refused before a byte was written: retry
                    continue
                raise
            self.offset += n
            view = view[n:]

    def _buffered(self) -> None:
        self.direct = False
        _set_direct(self.fd, False)


def _set_direct(fd: int, on: bool) -> bool:
    """Turn O_DIRECT on or off for fd; False where the system or file system cannot."""
    direct = getattr(os, "O_DIRECT", 0)
    if not direct:
        return False
    import fcntl

    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | direct if on else flags & ~direct)
    except OSError:
        return False
    return True


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
    cache may keep the digest under it). Local read failures are OSErrors (FileShrank
    for a file cut short); the caller tells its peer (CANCEL) and maps them to its own
    error. The hashing runs on a second thread (see _Hasher).
    """
    hasher = _Hasher() if hash_it else None
    buffers = [memoryview(bytearray(MAX_DATA)) for _ in range(_QUEUE_CHUNKS if hasher else 1)]
    free: queue.SimpleQueue[memoryview] = queue.SimpleQueue()
    for buffer in buffers:
        free.put(buffer)
    sent = 0
    try:
        # An int is a descriptor the caller opened (get: as run_as, never through a
        # symlink) and keeps: read from its current offset, not closed here.
        with open(path, "rb", buffering=0, closefd=not isinstance(path, int)) as f:
            before = os.fstat(f.fileno())
            while sent < size:
                view = free.get()  # waits while the hasher still reads every buffer
                n = f.readinto(view[: min(MAX_DATA, size - sent)])
                if not n:
                    raise FileShrank(errno.EIO, f"{path} shrank while it was being sent")
                if hasher is not None:
                    hasher.put(view, n, free)
                else:
                    free.put(view)
                send_chunk(view[:n])
                sent += n
                if progress is not None:
                    progress(n)
                if answered_early():
                    return Sent(sent, None, None, stopped=True)
            after = os.fstat(f.fileno())
    finally:
        digest = hasher.finish() if hasher is not None else None
    stable = _same_version(before, after) and after.st_size == size
    return Sent(sent, digest, before if stable else None, False)


class _Hasher(threading.Thread):
    """SHA-256 of the chunks being sent, on a second thread.

    hashlib releases the GIL, so the hash (≈ 0.6 s per GiB) runs on the second core
    while this thread reads and encrypts: the sender's critical path per GiB drops from
    hash + TLS + read to the larger of the two. Each buffer goes back to `free` once
    hashed; a buffer is read into again only then.
    """

    def __init__(self) -> None:
        super().__init__(daemon=True, name="transfer-hasher")
        self.digest = hashlib.sha256()
        self.chunks: queue.SimpleQueue[tuple[memoryview, int, queue.SimpleQueue] | None] = (
            queue.SimpleQueue()
        )
        self.start()

    def put(self, view: memoryview, length: int, free: queue.SimpleQueue) -> None:
        self.chunks.put((view, length, free))

    def finish(self) -> str:
        self.chunks.put(None)
        self.join()
        return self.digest.hexdigest()

    def run(self) -> None:
        while (item := self.chunks.get()) is not None:
            view, length, free = item
            try:
                self.digest.update(view[:length])
            finally:
                free.put(view)


def _same_version(a: os.stat_result, b: os.stat_result) -> bool:
    from radmin.hashing import version_key

    return version_key(a) == version_key(b)

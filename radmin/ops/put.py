"""put, daemon side: atomic, SHA-256-verified uploads that never leave a partial file.

validate (path, size, policy, parent) -> same content and metadata? "unchanged"
-> same content, other metadata? fix it, "changed", no transfer
-> journal + O_EXCL temporary file beside the destination -> PROCEED
-> FILE_DATA frames, hashed and written by a second thread (hashlib and os.write
   release the GIL, so the second core works while this one decrypts TLS)
-> size and SHA-256 match? fsync, chown/chmod, rename over the destination, fsync
   the folder. Any failure: delete the temporary file; the destination is untouched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import grp
import hashlib
import os
import posixpath
import pwd
import queue
import re
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from radmin import journal, policy
from radmin.errors import BadRequest, ConnectionClosed, ProtocolError, RequestError
from radmin.hashing import DigestCache, file_sha256
from radmin.ops import Outcome, Request
from radmin.protocol import FrameSocket, FrameType

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_QUEUE_CHUNKS = 4  # frames in flight between the socket thread and the writer (memory)


# Digests of files this daemon wrote or hashed, so a repeated upload of a large file
# is answered "unchanged" without reading it again (see radmin/hashing.py on staleness).
DIGESTS = DigestCache()


class TransferFailed(RequestError):
    """The upload started but could not be completed; the destination is untouched."""

    code = "failed"


@dataclass(frozen=True)
class PutParams:
    path: str  # absolute, normalized destination
    size: int
    sha256: str | None  # None: the client sends it in a DIGEST frame (it hashes meanwhile)
    mode: int
    uid: int
    gid: int


def resolve_destination(path: Any, name: Any, default_dir: Path) -> str:
    """The contract's rules: absolute; None -> default_dir/NAME; trailing / -> inside."""
    if not isinstance(name, str) or not name or "/" in name or name in (".", "..") or "\0" in name:
        raise BadRequest(f"invalid file name {name!r}")
    if path is None:
        path = f"{default_dir}/{name}"
    if not isinstance(path, str) or "\0" in path:
        raise BadRequest("the remote path must be a string")
    if not path.startswith("/"):
        raise BadRequest(f"remote path {path!r} must be absolute")
    if path.endswith("/"):
        path += name
    if ".." in path.split("/"):
        raise BadRequest(f"remote path {path!r} must not contain '..'")
    return posixpath.normpath(path)


def _owner_ids(owner: Any, group: Any, run_as: str | None) -> tuple[int, int]:
    """Owner defaults to the client's run_as user (else the daemon's), group to its group."""
    try:
        user = pwd.getpwnam(owner or run_as) if (owner or run_as) else pwd.getpwuid(os.geteuid())
    except (KeyError, TypeError):
        raise BadRequest(f"no such user {owner or run_as!r} on this host") from None
    if group is None:
        return user.pw_uid, user.pw_gid
    try:
        return user.pw_uid, grp.getgrnam(group).gr_gid
    except (KeyError, TypeError):
        raise BadRequest(f"no such group {group!r} on this host") from None


def parse_params(request: Request) -> PutParams:
    params, config = request.params, request.config
    path = resolve_destination(params.get("path"), params.get("name"), config.put_default_dir)
    size, digest, mode = params.get("size"), params.get("sha256"), params.get("mode", 0o644)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise BadRequest(f"size must be a byte count, got {size!r}")
    if size > config.limits.max_put_size:
        raise BadRequest(
            f"file of {size} bytes exceeds this daemon's limit of "
            f"{config.limits.max_put_size} bytes (limits.max_put_size)"
        )
    if digest is not None and (not isinstance(digest, str) or not _SHA256_HEX.match(digest)):
        raise BadRequest("sha256 must be 64 lowercase hex digits or null")
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
        raise BadRequest(f"mode must be between 0 and 07777, got {mode!r}")
    uid, gid = _owner_ids(params.get("owner"), params.get("group"), request.client.run_as)
    return PutParams(path, size, digest, mode, uid, gid)


def run(request: Request) -> Outcome:
    params = parse_params(request)
    policy.check_put(request.client.name, request.client.allow_put, params.path)
    folder = os.path.dirname(params.path)
    if not os.path.isdir(folder):
        raise BadRequest(f"folder {folder} does not exist (radmin does not create folders)")
    # The rule must hold where the file really lands: a symlinked folder inside an
    # allowed tree must not lead outside it.
    real = os.path.join(os.path.realpath(folder), os.path.basename(params.path))
    if real != params.path:
        policy.check_put(request.client.name, request.client.allow_put, real)
    existing = _existing_file(params.path)
    if existing is not None and existing.st_size == params.size:
        if params.sha256 is None:  # both sides hash at once, then compare
            request.conn.send_json(FrameType.PROCEED, {"path": params.path, "digest_first": True})
            have = file_sha256(params.path, DIGESTS)
            params = dataclasses.replace(params, sha256=receive_digest(request))
        else:
            have = file_sha256(params.path, DIGESTS)
        fields = {"path": params.path, "bytes": 0, "sha256": params.sha256}
        if have == params.sha256:
            if _metadata_matches(existing, params):
                return _outcome("unchanged", fields)
            _apply_metadata(params.path, params)
            return _outcome("changed", {**fields, "metadata_only": True})
    upload = Upload(request, params)
    try:
        upload.receive()
    except TransferFailed as exc:
        if upload.proceeded:  # the client is streaming: keep the connection in step
            exc.after_reply = upload.discard_rest
        raise
    fields = {"path": params.path, "bytes": params.size, "sha256": upload.sha256}
    return _outcome("changed", fields)


def receive_digest(request: Request) -> str:
    """Read the client's DIGEST frame (a CANCEL ends the request)."""
    request.conn.sock.settimeout(request.config.limits.idle_timeout)
    frame = request.conn.recv_frame()
    if frame.type is FrameType.CANCEL:
        raise TransferFailed("cancelled by the client")
    if frame.type is not FrameType.DIGEST:
        raise ProtocolError(f"expected DIGEST, got {frame.type.name}")
    digest = frame.json().get("sha256")
    if not isinstance(digest, str) or not _SHA256_HEX.match(digest):
        raise ProtocolError("DIGEST must carry sha256 as 64 lowercase hex digits")
    return digest


def _outcome(status: str, fields: dict[str, Any]) -> Outcome:
    return Outcome({"status": status, **fields}, {"status": status, **fields})


def _existing_file(path: str) -> os.stat_result | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TransferFailed(f"cannot inspect {path}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise BadRequest(f"{path} is a directory (end the remote path with / to upload into it)")
    return st if stat.S_ISREG(st.st_mode) else None


def _metadata_matches(st: os.stat_result, params: PutParams) -> bool:
    return (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (params.mode, params.uid, params.gid)


def _apply_metadata(path: str, params: PutParams, fd: int | None = None) -> None:
    target: int | str = fd if fd is not None else path
    try:
        if (params.uid, params.gid) != (os.geteuid(), os.getegid()) or fd is None:
            os.chown(target, params.uid, params.gid)
        os.chmod(target, params.mode)  # after chown: chown clears set-id bits
    except OSError as exc:
        raise TransferFailed(f"cannot set owner/mode on {path}: {exc.strerror}") from None


class Upload:
    """One transfer into a journaled temporary file."""

    def __init__(self, request: Request, params: PutParams):
        self.conn: FrameSocket = request.conn
        self.params = params
        self.state_dir = request.config.state_dir
        self.idle_timeout = request.config.limits.idle_timeout
        self.received = 0
        self.proceeded = False  # PROCEED sent: the client streams FILE_DATA from now on
        self.sha256 = params.sha256  # known at the end at the latest
        self.request = request
        self.client_done = False  # the client sent all it announced, or cancelled

    def receive(self) -> None:
        folder = os.path.dirname(self.params.path)
        temp = Path(folder) / journal.temp_name(self.params.path)
        try:
            entry = journal.JournalEntry(self.state_dir, temp)
        except OSError as exc:
            raise TransferFailed(
                f"cannot record the upload in {self.state_dir}: {exc.strerror}"
            ) from None
        created = False
        try:
            try:
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise TransferFailed(f"cannot create a file in {folder}: {exc.strerror}") from None
            created = True
            try:
                self._fill(fd, temp)
            finally:
                os.close(fd)
            try:
                written = os.stat(temp)
                os.rename(temp, self.params.path)
                created = False
                _fsync_folder(folder)
                DIGESTS.remember(written, self.params.sha256)  # rename keeps inode and ctime
            except OSError as exc:
                raise TransferFailed(
                    f"cannot move the upload into place at {self.params.path}: {exc.strerror}"
                ) from None
        finally:
            if created:
                with contextlib.suppress(OSError):
                    temp.unlink()
            entry.close()

    def _fill(self, fd: int, temp: Path) -> None:
        self.conn.send_json(FrameType.PROCEED, {"path": self.params.path, "digest_first": False})
        self.proceeded = True
        writer = _Writer(fd, str(temp))
        writer.start()
        try:
            self._stream_into(writer)
        finally:
            writer.finish()
        if writer.error is not None:
            raise TransferFailed(writer.error)
        actual = writer.digest.hexdigest()
        if self.sha256 is None:  # sent after the data
            try:
                self.sha256 = receive_digest(self.request)
            finally:
                self.client_done = True
        if actual != self.sha256:
            raise TransferFailed(
                f"checksum mismatch: the client's sha256 is {self.sha256}, received {actual}"
            )
        try:
            os.fsync(fd)
        except OSError as exc:
            raise TransferFailed(f"writing {self.params.path} failed: {exc.strerror}") from None
        _apply_metadata(self.params.path, self.params, fd)

    def _stream_into(self, writer: _Writer) -> None:
        self.conn.sock.settimeout(self.idle_timeout)
        while self.received < self.params.size:
            if writer.error is not None:
                raise TransferFailed(writer.error)
            frame = self._next_frame()
            if frame.type is FrameType.CANCEL:
                self.client_done = True
                raise TransferFailed("cancelled by the client")
            if frame.type is not FrameType.FILE_DATA:
                raise ProtocolError(f"expected FILE_DATA, got {frame.type.name}")
            if self.received + len(frame.payload) > self.params.size:
                raise ProtocolError(
                    f"client sent more than the {self.params.size} bytes it announced"
                )
            self.received += len(frame.payload)
            writer.put(bytes(frame.payload))
        self.client_done = self.sha256 is not None  # else a DIGEST frame is still to come

    def _next_frame(self):
        try:
            return self.conn.recv_frame()
        except TimeoutError:
            raise ConnectionClosed(
                f"client stalled for {self.idle_timeout:g} s (limits.idle_timeout)"
            ) from None

    def discard_rest(self) -> None:
        """After an early RESULT: skip FILE_DATA until the announced size (and the DIGEST
        that follows when it was not announced) or a CANCEL."""
        trailing_digest = self.sha256 is None
        while not self.client_done:
            frame = self._next_frame()
            if frame.type is FrameType.CANCEL:
                return
            if frame.type is FrameType.DIGEST and trailing_digest:
                return
            if frame.type is not FrameType.FILE_DATA:
                raise ProtocolError(f"expected FILE_DATA or CANCEL, got {frame.type.name}")
            self.received += len(frame.payload)
            if self.received >= self.params.size and not trailing_digest:
                return


class _Writer(threading.Thread):
    """Hashes and writes chunks beside the socket thread; remembers the first error."""

    def __init__(self, fd: int, temp: str):
        super().__init__(daemon=True, name="put-writer")
        self.fd = fd
        self.temp = temp
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


def _fsync_folder(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""get, daemon side: a file sent as FILE_DATA frames, read with the run_as user's rights.

validate (absolute, no `..`) -> policy (allow.get) -> the folder opened as run_as
(radmin/userfiles.py) and the real path checked again -> the last component lstat()ed
and opened as run_as, never followed: a symlink, a folder, a FIFO or a device is
refused; so is a file whose content is not as long as its size (/proc, /sys: it could
never be verified, or would never end)
-> the client has a copy of that size? Compare digests (its own from its cache, or
   asked for with `digest_first` while this side hashes): "unchanged", nothing sent
-> otherwise PROCEED, FILE_DATA (radmin/transfer.py send_file, hashed as it is read),
   then DIGEST. A file that changed (size, mtime, ctime) or shrank while it was read
   gets a CANCEL instead of the DIGEST and a failed RESULT: the client never lands a
   torn copy. A CANCEL from the client (its disk is full, Ctrl-C) stops the sending.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from dataclasses import dataclass
from typing import Any

from radmin import policy, userfiles
from radmin.errors import BadRequest, ConnectionClosed, PolicyDenied, ProtocolError, RequestError
from radmin.hashing import DigestCache, fd_sha256
from radmin.ops import Outcome, Request, fields, run_as_user
from radmin.protocol import FrameType
from radmin.transfer import (
    FileShrank,
    TransferFailed,
    receive_digest,
    send_file,
)

# Digests of files this daemon sent or hashed, so a repeated get of an unchanged large
# file is answered "unchanged" without reading it again (radmin/hashing.py on staleness).
DIGESTS = DigestCache()

FIELDS = (
    fields.Field("path", fields.ABSOLUTE_PATH, "the file to send", required=True),
    fields.Field("size", fields.BYTE_COUNT, "the size of the client's copy; null: it has none"),
    fields.Field(
        "sha256",
        fields.SHA256,
        "its SHA-256 if the client knows it; null: asked for (digest_first) when the sizes match",
    ),
)


@dataclass(frozen=True)
class GetParams:
    path: str  # absolute, normalized
    size: int | None  # the client's copy, if it has one
    sha256: str | None


@dataclass(frozen=True)
class Source:
    """The open file to send, as fstat() saw it when it was opened."""

    fd: int
    st: os.stat_result

    @property
    def size(self) -> int:
        return self.st.st_size

    @property
    def mode(self) -> int:
        return stat.S_IMODE(self.st.st_mode)


def parse_params(request: Request) -> GetParams:
    values = fields.parse("get", FIELDS, request.params)
    path = values["path"]
    if ".." in path.split("/"):
        raise BadRequest(f"remote path {path!r} must not contain '..'")
    if path.endswith("/"):
        raise BadRequest(f"remote path {path!r} names a folder, not a file")
    return GetParams(posixpath.normpath(path), values["size"], values["sha256"])


def run(request: Request) -> Outcome:
    params = parse_params(request)
    verdict = policy.path_verdict(request.client.allow_get, "get", params.path)
    request.audit.update(path=params.path, rule=verdict.rule)
    verdict.enforce()
    user = run_as_user(request.client.run_as)
    request.audit["run_as"] = user.pw_name
    access = userfiles.access_as(user)
    try:
        source = _open_source(request, access, params.path, user.pw_name)
    finally:
        access.close()  # the descriptor is all we need: the run_as child ends now
    try:
        request.audit["size"] = source.size
        return _serve(request, params, source)
    finally:
        os.close(source.fd)


# -- which file: the one path rule -----------------------------------------------------


def _open_source(request: Request, access: userfiles.Access, path: str, user: str) -> Source:
    folder, name = posixpath.split(path)
    try:
        resolved = access.open_folder(folder)
    except userfiles.PathChanged:
        raise PolicyDenied(f"{policy.DENIED}: {folder} changed while it was opened") from None
    except (FileNotFoundError, NotADirectoryError):
        raise BadRequest(f"no such file: {path}") from None
    except OSError as exc:
        raise RequestError(f"cannot open folder {folder} as {user}: {exc.strerror}") from None
    real_path = posixpath.join(resolved, name)
    if real_path != path:  # a symlinked folder inside the allowed tree must not lead out
        request.audit["real_path"] = real_path
        policy.path_verdict(request.client.allow_get, "get", real_path).enforce()
    try:
        entry = access.lstat(name)
    except OSError as exc:
        raise RequestError(f"cannot look at {path} as {user}: {exc.strerror}") from None
    if entry is None:
        raise BadRequest(f"no such file: {path}")
    _refuse_kind(entry.mode, path)
    try:
        fd = access.open_source(name)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink swapped in since the lstat
            _refuse_kind(stat.S_IFLNK, path)
        if isinstance(exc, FileNotFoundError):
            raise BadRequest(f"no such file: {path}") from None
        raise RequestError(f"cannot read {path} as {user}: {exc.strerror}") from None
    st = os.fstat(fd)
    try:
        _refuse_kind(st.st_mode, path)  # swapped since the lstat
        _check_content_length(fd, st.st_size, path)
    except BaseException:
        os.close(fd)
        raise
    return Source(fd, st)


def _refuse_kind(mode: int, path: str) -> None:
    """Only a regular file: a symlink is never followed, a folder, FIFO, socket or
    device never read (a FIFO would block, a device never end)."""
    if stat.S_ISREG(mode):
        return
    if stat.S_ISLNK(mode):
        raise PolicyDenied(f"{policy.DENIED}: {path} is a symlink (get never follows one)")
    if stat.S_ISDIR(mode):
        raise BadRequest(f"{path} is a directory, not a file")
    kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
    raise BadRequest(f"{path} is {kind}, not a regular file")


def _check_content_length(fd: int, size: int, path: str) -> None:
    """A file in /proc says size 0 and has content; one in /sys says 4096 and has less.
    Its content could not be announced, nor its end verified: refused before a byte is
    sent. Two one-byte reads: at the last announced byte, and just past it."""
    try:
        past_end = os.pread(fd, 1, size)
        last = os.pread(fd, 1, size - 1) if size else b"."
    except OSError as exc:
        raise RequestError(f"cannot read {path}: {exc.strerror}") from None
    if past_end or not last:
        raise BadRequest(
            f"{path} is not a plain file: its content is not as long as its size "
            f"({size} bytes), as for files in /proc or /sys"
        )


# -- what to send ----------------------------------------------------------------------


def _serve(request: Request, params: GetParams, source: Source) -> Outcome:
    conn = request.conn
    announced = {"path": params.path, "size": source.size, "mode": source.mode}
    known = DIGESTS.get(source.st)
    if params.size == source.size:
        if params.sha256 is None:  # both sides hash at once
            conn.send_json(FrameType.PROCEED, {**announced, "digest_first": True})
            try:
                known = _hash(source, params.path)
            finally:  # the client's DIGEST is read whatever happened: the stream in step
                theirs = receive_digest(conn, request.config.limits.idle_timeout)
        else:
            known, theirs = _hash(source, params.path), params.sha256
        if known == theirs:
            return _outcome("unchanged", params.path, source, 0, known)
    conn.send_json(FrameType.PROCEED, {**announced, "digest_first": False})
    return _send(request, params.path, source, known)


def _send(request: Request, path: str, source: Source, known: str | None) -> Outcome:
    """FILE_DATA, then DIGEST -- or CANCEL and a failure, never a torn copy."""
    conn = request.conn

    def send_chunk(chunk: memoryview) -> None:
        try:
            conn.send_frame(FrameType.FILE_DATA, chunk)
        except OSError as exc:  # the socket: not the file's read errors below
            raise ConnectionClosed(f"sending to the client failed: {exc}") from None

    try:
        sent = send_file(
            source.fd, source.size, send_chunk, conn.frame_pending, hash_it=not known
        )
    except OSError as exc:  # reading the file (FileShrank: it got shorter)
        request.audit["bytes"] = None
        why = "it shrank" if isinstance(exc, FileShrank) else exc.strerror
        return _cancel(request, f"{path} could not be read to the end ({why}); nothing was kept")
    request.audit["bytes"] = sent.bytes
    if sent.stopped:
        _receive_cancel(request)
        return Outcome.failure(TransferFailed("cancelled by the client"), after_reply=None)
    if sent.stable is None or _longer_than(source):
        return _cancel(
            request,
            f"{path} changed while it was being sent (size, mtime or ctime); "
            "nothing was kept: try again",
        )
    digest = sent.sha256 or known
    assert digest is not None
    DIGESTS.remember(sent.stable, digest)
    conn.send_json(FrameType.DIGEST, {"sha256": digest})
    return _outcome("changed", path, source, sent.bytes, digest)


def _hash(source: Source, path: str) -> str:
    try:
        return fd_sha256(source.fd, DIGESTS)
    except OSError as exc:
        raise RequestError(f"cannot read {path}: {exc.strerror}") from None


def _longer_than(source: Source) -> bool:
    """Content past the announced size (it grew, and its stat did not say so)."""
    try:
        return bool(os.pread(source.fd, 1, source.size))
    except OSError:
        return True


def _cancel(request: Request, message: str) -> Outcome:
    """Tell the client to drop what it received (CANCEL where the DIGEST would come),
    then fail the request with the reason."""
    request.conn.send_json(FrameType.CANCEL, {"message": message})
    return Outcome.failure(TransferFailed(message), after_reply=None)


def _receive_cancel(request: Request) -> None:
    """The client spoke while we were sending: it can only be its CANCEL."""
    request.conn.sock.settimeout(request.config.limits.idle_timeout)
    frame = request.conn.recv_frame()
    if frame.type is not FrameType.CANCEL:
        raise ProtocolError(f"expected CANCEL during a get, got {frame.type.name}")


def _outcome(status: str, path: str, source: Source, sent: int, digest: str) -> Outcome:
    fields_: dict[str, Any] = {
        "status": status,
        "path": path,
        "size": source.size,
        "mode": source.mode,
        "bytes": sent,
        "sha256": digest,
    }
    return Outcome(fields_, {"status": status, "bytes": sent, "sha256": digest})

"""put, client side: announce the file, then send nothing (unchanged), only a digest
(the host has a file of that size: both sides hash at once), or the data with its digest.

The local file is hashed once: from the digest cache, by the fan-out for all hosts, or
while it streams out. The daemon's half is radmin/ops/put.py; docs/protocol.md has the
frame order.
"""

from __future__ import annotations

import os
import time
from collections import namedtuple

from radmin.errors import LocalFileError
from radmin.protocol import FrameType

# Annotations only: `typing` costs ~4 ms to import on radmin-cli's start-up path.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from radmin.client.connection import Connection


class PutResult(
    namedtuple("PutResult", "status path bytes sha256 duration_s metadata_only", defaults=(False,))
):
    """`status`: "changed" or "unchanged"; `path`: where the file is on the host;
    `bytes`: bytes transferred (0 when unchanged or only the metadata changed);
    `metadata_only`: changed, but only mode/owner/group."""

    __slots__ = ()


def put_file(
    conn: Connection,
    local_path: str,
    remote_path: str | None = None,
    *,
    mode: int | None = None,
    owner: str | None = None,
    group: str | None = None,
    sha256: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> PutResult:
    """See Connection.put."""
    started = time.monotonic()
    try:
        info = os.stat(local_path)
    except OSError as exc:
        raise LocalFileError(f"{local_path}: {exc.strerror}") from None
    if sha256 is None:
        sha256 = conn.options.digest_cache().get(info)
    conn.request(
        "put",
        path=remote_path,
        name=os.path.basename(local_path),
        size=info.st_size,
        sha256=sha256,
        mode=mode,  # None: the host keeps an existing file's bits
        local_mode=info.st_mode & 0o7777,
        owner=owner,
        group=group,
    )
    frame_type, reply = conn.receive(FrameType.PROCEED, FrameType.RESULT)
    if frame_type is FrameType.PROCEED and reply.get("digest_first"):
        if sha256 is None:
            with conn.frames.keepalive():  # the daemon waits while we hash
                sha256 = _local_digest(conn, local_path)
        conn.send(FrameType.DIGEST, {"sha256": sha256})
        conn.frames.activity = "comparing checksums"
        frame_type, reply = conn.receive(FrameType.PROCEED, FrameType.RESULT, long_wait=True)
    sent = 0
    if frame_type is FrameType.PROCEED:
        conn.frames.activity = "uploading"
        sent, streamed_digest = _send_file(
            conn, local_path, info.st_size, progress, hash_it=sha256 is None
        )
        if sha256 is None and streamed_digest is not None:
            sha256 = streamed_digest
            conn.send(FrameType.DIGEST, {"sha256": sha256})
        reply = conn.result(long_wait=True)
    else:
        conn.check(reply)
    return PutResult(
        status=str(reply.get("status")),
        path=str(reply.get("path")),
        bytes=sent,
        sha256=sha256 or str(reply.get("sha256")),
        duration_s=time.monotonic() - started,
        metadata_only=bool(reply.get("metadata_only")),
    )


def _local_digest(conn: Connection, local_path: str) -> str:
    from radmin.hashing import file_sha256

    try:
        return file_sha256(local_path, conn.options.digest_cache())
    except OSError as exc:
        raise LocalFileError(f"{local_path}: {exc.strerror}") from None


def _send_file(
    conn: Connection,
    local_path: str,
    size: int,
    progress: Callable[[int], None] | None,
    hash_it: bool,
) -> tuple[int, str | None]:
    """Stream the file (radmin/transfer.py); a local failure cancels the request.
    Returns the bytes sent and their SHA-256 (None if not hashed or stopped early)."""
    from radmin.transfer import FileShrank, send_file

    try:
        sent = send_file(
            local_path,
            size,
            lambda chunk: conn.send_frame(FrameType.FILE_DATA, chunk),
            lambda: _answered_early(conn),
            progress,
            hash_it,
        )
    except OSError as exc:  # the local file: the connection's errors are translated
        conn.send(FrameType.CANCEL, {})
        shrank = isinstance(exc, FileShrank)
        raise LocalFileError(exc.strerror if shrank else f"{local_path}: {exc.strerror}") from None
    if sent.stopped:
        conn.send(FrameType.CANCEL, {})  # the daemon answered early
    elif sent.sha256 is not None and sent.stable is not None:
        conn.options.digest_cache().remember(sent.stable, sent.sha256)
    return sent.bytes, sent.sha256


def _answered_early(conn: Connection) -> bool:
    """Has the daemon sent its RESULT before all data was sent (disk full, say)?
    Its heartbeats are no answer: they are read and dropped here."""
    with conn.translated("connection lost"):
        return conn.frames.frame_pending()

"""Bulk data without copies: FILE_DATA payloads received straight into the caller's
buffer (FrameSocket.recv_data_into), files written with O_DIRECT where the file system
allows it (transfer._DirectFile), and uploads large enough to take that path, on a
disk and on a tmpfs, still verified and complete.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import socket
import threading
import time

import pytest
from support import client_entry, make_client_home, run_cli, trust

from radmin.errors import ConnectionClosed, FrameTimeout
from radmin.protocol import HEADER, MAX_DATA, Frame, FrameSocket, FrameType
from radmin.transfer import _DIRECT_MIN, _DirectFile

MiB = 1024 * 1024


def sink() -> memoryview:
    return memoryview(mmap.mmap(-1, MAX_DATA))


def test_data_lands_in_the_sink_and_other_frames_come_back_as_frames():
    sent = [
        (FrameType.FILE_DATA, os.urandom(MAX_DATA)),
        (FrameType.FILE_DATA, b"tail"),
        (FrameType.FILE_DATA, b""),
        (FrameType.CANCEL, b"{}"),
        (FrameType.FILE_DATA, os.urandom(70_000)),
    ]
    wire = b"".join(HEADER.pack(t, len(p)) + p for t, p in sent)
    left, right = socket.socketpair()
    with left, right:
        frames = FrameSocket(right)
        sender = threading.Thread(target=left.sendall, args=(wire,))
        sender.start()
        buffer = sink()
        for frame_type, payload in sent:
            got = frames.recv_data_into(buffer, FrameType.FILE_DATA)
            if frame_type is FrameType.FILE_DATA:
                assert got == len(payload)
                assert bytes(buffer[: len(payload)]) == payload
            else:
                assert isinstance(got, Frame) and got.type is frame_type
        sender.join()
        assert frames.frames_received == len(sent)


def test_frames_split_at_every_byte_boundary_reassemble_into_the_sink():
    sent = [
        (FrameType.FILE_DATA, b"abc" * 100),
        (FrameType.DIGEST, b'{"sha256": null}'),
        (FrameType.FILE_DATA, b"xyz"),
    ]
    wire = b"".join(HEADER.pack(t, len(p)) + p for t, p in sent)
    left, right = socket.socketpair()
    with left, right:
        frames = FrameSocket(right)
        sender = threading.Thread(target=lambda: [left.sendall(bytes([b])) for b in wire])
        sender.start()
        buffer = sink()
        assert frames.recv_data_into(buffer, FrameType.FILE_DATA) == 300
        assert bytes(buffer[:300]) == b"abc" * 100
        frame = frames.recv_data_into(buffer, FrameType.FILE_DATA)
        assert isinstance(frame, Frame) and frame.json() == {"sha256": None}
        assert frames.recv_data_into(buffer, FrameType.FILE_DATA) == 3
        sender.join()


def test_a_dripping_data_frame_is_cut_off_at_frame_timeout():
    left, right = socket.socketpair()
    with left, right:
        right.settimeout(10)  # the idle limit is far: only the frame's clock can fire
        frames = FrameSocket(right, frame_timeout=0.5)
        left.sendall(HEADER.pack(FrameType.FILE_DATA, 1000) + b"x" * 10)
        started = time.monotonic()
        with pytest.raises(FrameTimeout):
            frames.recv_data_into(sink(), FrameType.FILE_DATA)
        assert time.monotonic() - started < 2


def test_a_data_frame_cut_by_the_peer_is_truncated():
    left, right = socket.socketpair()
    with right:
        with left:
            left.sendall(HEADER.pack(FrameType.FILE_DATA, 1000) + b"x" * 10)
        with pytest.raises(ConnectionClosed) as caught:
            FrameSocket(right).recv_data_into(sink(), FrameType.FILE_DATA)
        assert caught.value.truncated


def _direct_on(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)


@pytest.mark.parametrize("pieces", [[MiB, MiB, 12345], [MiB, 100, MiB], [4096, 1, 4096]])
def test_direct_writes_then_buffered_for_what_is_not_aligned(tmp_path, pieces):
    data = os.urandom(sum(pieces))
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        out = _DirectFile(fd, direct=True)
        direct_at_start = out.direct
        assert direct_at_start == _direct_on(fd)  # on, unless the file system refuses
        buffer = sink()
        offset = 0
        for size in pieces:
            buffer[:size] = data[offset : offset + size]
            out.write(buffer[:size])
            if offset == 0:
                assert out.direct == direct_at_start  # an aligned first piece keeps it
            offset += size
        assert not out.direct and not _direct_on(fd)  # an unaligned piece turned it off
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == data


def _upload(tmp_path, server_identity, daemon_factory, folder, size):
    home = make_client_home(tmp_path / "home")
    daemon = daemon_factory({"ops": client_entry(home)})
    trust(home, daemon)
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(size))
    dest = folder / "big.bin"
    done = run_cli(home, "put", str(local), daemon.address, str(dest), timeout=120)
    assert done.returncode == 0, done.stderr
    assert b"changed" in done.stdout
    assert hashlib.sha256(dest.read_bytes()).digest() == hashlib.sha256(local.read_bytes()).digest()
    again = run_cli(home, "put", str(local), daemon.address, str(dest), timeout=120)
    assert b"unchanged" in again.stdout  # the digest cache hits right after the upload
    return dest


def test_a_large_upload_takes_the_direct_path_and_arrives_whole(
    tmp_path, server_identity, daemon_factory
):
    folder = tmp_path / "dest"
    folder.mkdir()
    _upload(tmp_path, server_identity, daemon_factory, folder, _DIRECT_MIN + 3 * MiB + 777)


def test_a_large_upload_to_a_tmpfs_arrives_whole(tmp_path, server_identity, daemon_factory, tmpfs):
    folder = tmpfs("dest", "size=64m")
    _upload(tmp_path, server_identity, daemon_factory, folder, _DIRECT_MIN + 12345)

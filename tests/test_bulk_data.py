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
import ssl
import threading
import time

import pytest
from support import client_entry, make_client_home, run_cli, trickled_frames, trust

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
    with trickled_frames(sent) as frames:
        buffer = sink()
        assert frames.recv_data_into(buffer, FrameType.FILE_DATA) == 300
        assert bytes(buffer[:300]) == b"abc" * 100
        frame = frames.recv_data_into(buffer, FrameType.FILE_DATA)
        assert isinstance(frame, Frame) and frame.json() == {"sha256": None}
        assert frames.recv_data_into(buffer, FrameType.FILE_DATA) == 3


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


def _tls_pair(server_identity) -> tuple[ssl.SSLSocket, ssl.SSLSocket]:
    """Two ends of a real TLS 1.3 connection over loopback (the daemon's identity on
    both sides: only the record layer matters here)."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    server_ctx.load_cert_chain(server_identity / "server.crt", server_identity / "server.key")
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    with socket.create_server(("127.0.0.1", 0)) as listener:
        raw = socket.create_connection(listener.getsockname())
        accepted: list[ssl.SSLSocket] = []
        server = threading.Thread(
            target=lambda: accepted.append(
                server_ctx.wrap_socket(listener.accept()[0], server_side=True)
            )
        )
        server.start()
        client = client_ctx.wrap_socket(raw)
        server.join()
    for end in (client, accepted[0]):
        end.settimeout(10)
    return client, accepted[0]


def test_data_over_tls_arrives_whole_record_by_record(server_identity):
    """The bulk path reads TLS records through the SSL object itself: a MiB payload
    spans 64 records, frames around it still come back as frames."""
    payloads = [os.urandom(MAX_DATA), os.urandom(3 * 16384 + 7), b"x"]
    left, right = _tls_pair(server_identity)
    with left, right:
        sender = FrameSocket(left)
        frames = FrameSocket(right)
        frames.start_heartbeat(5.0)  # the watched path, as in a put

        def send() -> None:
            for payload in payloads:
                sender.send_frame(FrameType.FILE_DATA, payload)
            sender.send_json(FrameType.DIGEST, {"sha256": None})

        thread = threading.Thread(target=send)
        thread.start()
        buffer = sink()
        for payload in payloads:
            assert frames.recv_data_into(buffer, FrameType.FILE_DATA) == len(payload)
            assert bytes(buffer[: len(payload)]) == payload
        frame = frames.recv_data_into(buffer, FrameType.FILE_DATA)
        assert isinstance(frame, Frame) and frame.type is FrameType.DIGEST
        thread.join()


def test_a_tls_peer_gone_in_the_middle_of_a_payload_is_truncated(server_identity):
    """No close_notify (a ragged EOF) half-way through a payload: ConnectionClosed,
    truncated -- as SSLSocket.recv_into would report it, not an SSLError."""
    left, right = _tls_pair(server_identity)
    with right:
        left.sendall(HEADER.pack(FrameType.FILE_DATA, MAX_DATA) + os.urandom(100_000))
        socket.socket.shutdown(left, socket.SHUT_RDWR)  # the TCP socket under TLS
        left.close()
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

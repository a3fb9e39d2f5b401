"""Dead and frozen peers are noticed by heartbeats, in both directions.

A frozen process (SIGSTOP) is the hard case: its kernel still ACKs, so only a frame it
fails to send gives it away. The tests use intervals of 0.5 s so that three missed
heartbeats take 1.5 s; the bounds allow for a loaded machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import (
    Daemon,
    client_entry,
    frames_after_hello,
    new_marker,
    prepare_daemon,
    processes_with,
    run_cli,
    start_cli,
    tls_connect,
    wait_for_processes,
    wait_until,
    wait_until_gone,
)

from radmin.errors import PeerSilent, ProtocolError
from radmin.hosts import HostBook, HostSpecError, configured_heartbeat_interval
from radmin.protocol import (
    HEADER,
    MIN_HEARTBEAT_INTERVAL,
    FrameSocket,
    FrameType,
    heartbeat_interval,
)

INTERVAL = 0.5
DEAD_AFTER = 3 * INTERVAL
SLACK = 4.0  # a loaded 2-core machine


@contextlib.contextmanager
def frozen(proc: subprocess.Popen) -> Iterator[None]:
    """SIGSTOP `proc` for the block, SIGCONT after (whatever happens)."""
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(".radmin-upload-")]


def _bytes_read(pid: int) -> int:
    """What the process has read so far, sockets included (/proc/PID/io rchar)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar")


def _raw_client(home, port: int, interval: float = INTERVAL) -> FrameSocket:
    """A hand-driven client that announced heartbeats and then sends only what the
    test sends: silence on it is a dead client for the daemon."""
    frames = FrameSocket(tls_connect(home, port))
    frames.send_json(FrameType.HELLO, {"protocols": [1], "software": "test", "heartbeat": interval})
    _, hello = frames.recv_json(FrameType.HELLO)
    assert hello["heartbeat"] == interval
    return frames


# -- the frame layer -----------------------------------------------------------------


def test_heartbeat_frames_are_dropped_by_the_receiver():
    left, right = socket.socketpair()
    frames = FrameSocket(right)
    left.sendall(HEADER.pack(FrameType.HEARTBEAT, 0) * 3 + HEADER.pack(FrameType.EOF, 0))
    assert frames.recv_frame().type is FrameType.EOF
    assert frames.frames_received == 1  # the stream's count ignores heartbeats


def test_heartbeat_with_a_payload_is_a_protocol_error():
    left, right = socket.socketpair()
    left.sendall(HEADER.pack(FrameType.HEARTBEAT, 1) + b"x")
    with pytest.raises(ProtocolError, match="HEARTBEAT frame of 1 bytes"):
        FrameSocket(right).recv_frame()


def test_silent_peer_is_dead_after_three_intervals_and_quiet_side_beats():
    left, right = socket.socketpair()
    frames = FrameSocket(right)
    frames.start_heartbeat(0.2)
    frames.activity = "testing"
    started = time.monotonic()
    with pytest.raises(PeerSilent, match=r"no answer for 0\.6 s while testing"):
        frames.recv_frame()
    assert 0.55 < time.monotonic() - started < 0.6 + SLACK
    left.setblocking(False)
    beats = left.recv(1024)  # what the waiting side sent meanwhile: heartbeats only
    assert beats and beats == HEADER.pack(FrameType.HEARTBEAT, 0) * (len(beats) // HEADER.size)


def test_heartbeats_do_not_reset_the_idle_limit():
    left, right = socket.socketpair()
    frames = FrameSocket(right)
    right.settimeout(0.5)
    left.sendall(HEADER.pack(FrameType.HEARTBEAT, 0))
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        frames.recv_frame()
    assert time.monotonic() - started < 0.5 + SLACK


@pytest.mark.parametrize(
    ("announced", "own", "used"),
    [
        (10, 10.0, 10.0),
        (0.5, 10.0, 0.5),
        (30, 10.0, 10.0),
        (0.000001, 10.0, MIN_HEARTBEAT_INTERVAL),
        (None, 10.0, None),
        (True, 10.0, None),
        ("5", 10.0, None),
        (-1, 10.0, None),
        (float("nan"), 10.0, None),
    ],
)
def test_connection_interval_is_the_shorter_announced_one(announced, own, used):
    assert heartbeat_interval(announced, own) == used


def test_client_config_heartbeat_interval(tmp_path):
    config = tmp_path / "config.yaml"
    assert configured_heartbeat_interval(config) == 10.0  # no file: the default
    config.write_text("hosts:\n  web1: 10.0.0.1\nheartbeat_interval: 2.5\n")
    assert configured_heartbeat_interval(config) == 2.5
    assert HostBook.load(config).aliases == {"web1": "10.0.0.1"}
    config.write_text("heartbeat_interval: often\n")
    with pytest.raises(HostSpecError, match=r"config.yaml:1: heartbeat_interval: expected"):
        configured_heartbeat_interval(config)


def test_bad_heartbeat_flag_is_a_usage_error(client_home):
    result = run_cli(client_home, "ping", "--heartbeat-interval", "0", "127.0.0.1:1")
    assert result.returncode == 2
    assert b"--heartbeat-interval" in result.stderr


# -- a frozen daemon -------------------------------------------------------------------


def test_frozen_daemon_during_exec_fails_the_client_within_three_intervals(daemon, client_home):
    marker = new_marker()
    client = start_cli(
        client_home,
        "exec",
        "-n",
        "--heartbeat-interval",
        str(INTERVAL),
        daemon.address,
        f"sleep {marker}",
        stderr=subprocess.PIPE,
    )
    wait_for_processes(marker, 1, exclude=(client.pid,))
    assert daemon.proc is not None
    with frozen(daemon.proc):
        started = time.monotonic()
        _, stderr = client.communicate(timeout=DEAD_AFTER + SLACK + 5)
        took = time.monotonic() - started
    assert client.returncode == 255, stderr
    assert took < DEAD_AFTER + SLACK
    assert (
        f"no answer from {daemon.address} for {DEAD_AFTER:g} s while running the command".encode()
        in stderr
    )
    # Once thawed, the daemon finds its client gone and ends the command.
    wait_until_gone(marker, timeout=15)


def test_frozen_daemon_during_put_fails_the_client_within_three_intervals(
    daemon, client_home, tmp_path
):
    source = tmp_path / "big.bin"
    with open(source, "wb") as f:
        f.truncate(1024**3)  # sparse: read fast, sent for seconds
    uploads = daemon.folder / "uploads"
    client = start_cli(
        client_home,
        "put",
        "--heartbeat-interval",
        str(INTERVAL),
        str(source),
        daemon.address,
        str(uploads / "big.bin"),
        stderr=subprocess.PIPE,
    )
    assert daemon.proc is not None
    wait_until(lambda: _temp_files(uploads), 10, "the upload's temporary file")
    received = _bytes_read(daemon.proc.pid)
    wait_until(lambda: _bytes_read(daemon.proc.pid) > received + 16 * 1024**2, 20, "data flowing")
    with frozen(daemon.proc):
        started = time.monotonic()
        _, stderr = client.communicate(timeout=DEAD_AFTER + SLACK + 5)
        took = time.monotonic() - started
    assert client.returncode == 255, stderr
    assert took < DEAD_AFTER + SLACK
    assert f"no answer from {daemon.address} for {DEAD_AFTER:g} s while uploading".encode() in (
        stderr
    )
    wait_until(lambda: not _temp_files(uploads), 15, "the partial upload removed")
    assert not (uploads / "big.bin").exists()


# -- a frozen or silent client -----------------------------------------------------------


def test_frozen_client_during_exec_has_its_command_killed(daemon, client_home):
    marker = new_marker()
    client = start_cli(
        client_home,
        "exec",
        "-n",
        "--heartbeat-interval",
        str(INTERVAL),
        daemon.address,
        f"sleep {marker}",
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_processes(marker, 1, exclude=(client.pid,))
        os.kill(client.pid, signal.SIGSTOP)
        wait_until(
            lambda: not processes_with(marker, exclude=(client.pid,)),
            DEAD_AFTER + SLACK + 2,  # + kill_grace
            "the frozen client's command killed",
        )
        event = daemon.wait_for_event(
            lambda e: e.get("event") == "request" and e.get("outcome") == "disconnected"
        )
        assert "no answer" in event["error"]
    finally:
        client.kill()
        client.wait()


def test_silent_client_during_put_has_its_partial_upload_removed(daemon, client_home):
    uploads = daemon.folder / "uploads"
    frames = _raw_client(client_home, daemon.port)
    frames.send_json(
        FrameType.REQUEST,
        {"op": "put", "path": str(uploads / "f"), "name": "f", "size": 10 * 1024**2},
    )
    frames.recv_json(FrameType.PROCEED)
    frames.send_frame(FrameType.FILE_DATA, b"x" * 1024**2)
    assert _temp_files(uploads)
    started = time.monotonic()  # from now on: silence
    wait_until(lambda: not _temp_files(uploads), DEAD_AFTER + SLACK, "partial upload removed")
    assert time.monotonic() - started >= DEAD_AFTER * 0.9
    assert not (uploads / "f").exists()
    frames.close()


# -- heartbeats are not activity -----------------------------------------------------------


def _beat_until_closed(frames: FrameSocket, limit: float) -> float:
    """Send nothing but heartbeats until the daemon hangs up; seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        try:
            frames.send_frame(FrameType.HEARTBEAT)
            if frames.frame_pending():
                with contextlib.suppress(OSError, ConnectionError):
                    while True:  # a RESULT or ERROR may come before the close
                        frames.recv_frame()
        except (OSError, ConnectionError, ProtocolError):
            return time.monotonic() - started
        except Exception as exc:  # ConnectionClosed
            if "closed" in str(exc):
                return time.monotonic() - started
            raise
        time.sleep(0.1)
    raise AssertionError(f"the daemon kept a heartbeating connection for {limit} s")


def test_heartbeats_do_not_reset_idle_timeout(daemon_factory, client_home):
    daemon = daemon_factory(
        {"ops": client_entry(client_home)}, limits={"handshake_timeout": 2, "idle_timeout": 1.5}
    )
    frames = _raw_client(client_home, daemon.port, interval=0.2)
    took = _beat_until_closed(frames, limit=1.5 + SLACK + 3)
    assert 1.2 < took < 1.5 + SLACK
    daemon.wait_for_event(
        lambda e: e.get("event") == "connection_closed" and e.get("outcome") == "idle_timeout"
    )


def test_heartbeats_do_not_reset_upload_stall_timeout(daemon_factory, client_home):
    daemon = daemon_factory(
        {"ops": client_entry(client_home)},
        limits={"handshake_timeout": 2, "upload_stall_timeout": 1.5},
    )
    uploads = daemon.folder / "uploads"
    frames = _raw_client(client_home, daemon.port, interval=0.2)
    frames.send_json(
        FrameType.REQUEST, {"op": "put", "path": str(uploads / "f"), "name": "f", "size": 100}
    )
    frames.recv_json(FrameType.PROCEED)
    frames.send_frame(FrameType.FILE_DATA, b"x" * 10)
    took = _beat_until_closed(frames, limit=1.5 + SLACK + 3)
    assert 1.2 < took < 1.5 + SLACK
    assert not _temp_files(uploads)
    event = daemon.wait_for_event(lambda e: e.get("event") == "request")
    assert "upload stalled" in event["error"]


# -- a slow daemon is not a dead one ---------------------------------------------------


@pytest.fixture
def slow_hash_daemon(tmp_path, server_identity, client_home) -> Iterator[Daemon]:
    """A daemon that takes 3 s to hash a destination (RADMIN_TEST_HASH_DELAY)."""
    daemon = prepare_daemon(tmp_path / "slow", server_identity, {"ops": client_entry(client_home)})
    daemon.env = {**os.environ, "RADMIN_TEST_HASH_DELAY": "3"}
    try:
        yield daemon.start()
    finally:
        daemon.stop()


def test_put_of_same_size_file_outlives_the_connect_timeout(
    slow_hash_daemon, client_home, tmp_path
):
    source = tmp_path / "config.txt"
    source.write_bytes(b"same content\n" * 1000)
    target = str(slow_hash_daemon.folder / "uploads" / "config.txt")
    first = run_cli(client_home, "put", str(source), slow_hash_daemon.address, target)
    assert first.returncode == 0, first.stderr
    # The client knows the digest now and sends it: the daemon hashes its copy (3 s)
    # before it answers, far beyond --connect-timeout 1.
    started = time.monotonic()
    again = run_cli(
        client_home,
        "put",
        "--connect-timeout",
        "1",
        "--heartbeat-interval",
        "0.5",
        "--json",
        str(source),
        slow_hash_daemon.address,
        target,
    )
    assert again.returncode == 0, again.stderr
    assert b'"status": "unchanged"' in again.stdout or b'"unchanged"' in again.stdout
    assert time.monotonic() - started >= 3


def test_api_connection_idle_between_requests_is_not_taken_for_dead(daemon, client_home):
    from radmin.client import ClientOptions, connect

    options = ClientOptions(client_home, heartbeat_interval=0.2)
    with contextlib.closing(connect(daemon.address, options)) as conn:
        conn.ping()
        idle_since = time.monotonic()
        wait_until(lambda: time.monotonic() - idle_since > 1.0, 5, "an idle second")
        assert conn.run("echo still here").stdout == b"still here\n"


def test_old_client_without_heartbeats_is_served(daemon, client_home):
    frames = frames_after_hello(client_home, daemon.port)  # announces no heartbeat
    assert frames.heartbeat_interval is None
    frames.send_json(FrameType.REQUEST, {"op": "ping"})
    assert frames.recv_json(FrameType.RESULT)[1]["ok"] is True
    assert not processes_with("never-started-marker")


@pytest.mark.parametrize("announced", [0, -1, 1e-9 * 0, "10", True, [1], {"s": 1}])
def test_malformed_heartbeat_in_hello_is_a_protocol_error(daemon, client_home, announced):
    """(1e999 never gets this far: strict JSON refuses it as too large.)"""
    frames = FrameSocket(tls_connect(client_home, daemon.port))
    frames.send_json(
        FrameType.HELLO, {"protocols": [1], "software": "test", "heartbeat": announced}
    )
    frame = frames.recv_frame()
    assert frame.type is FrameType.ERROR
    assert "'heartbeat' must be a positive number" in frame.json()["message"]

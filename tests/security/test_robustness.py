"""No crash, no leak, no lock-out from an authenticated client.

Each test speaks real frames to a real radmind: malformed requests are answered, not
crashed on; thousands of connections do not break the daemon or the client; a peer
cannot make the daemon allocate what it only announces, nor hold a connection by
dripping bytes.
"""

from __future__ import annotations

import os
import resource
import select
import ssl
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from support import (
    Daemon,
    client_entry,
    frames_after_hello,
    make_client_home,
    open_fds,
    ping_works,
    prepare_daemon,
    proc_status,
    read_until_closed,
    restricted_entry,
    run_cli,
    send_request,
    tls_connect,
    wait_until,
)

from radmin.client import ClientOptions, connect
from radmin.errors import ConnectionClosed
from radmin.hosts import Target
from radmin.protocol import HEADER, MAX_DATA, FrameSocket, FrameType, encode_json, wait_ready

# -- malformed requests: a RESULT with bad_request, and the session goes on -------------

_EXEC = {"command": '"echo hi"', "cwd": "null", "env": "{}", "timeout": "null", "stdin": "false"}
_PUT = {
    "path": '"/tmp/radmin-test"',
    "name": '"radmin-test"',
    "size": "1",
    "sha256": "null",
    "mode": "420",
    "owner": "null",
    "group": "null",
}


def _request(op: str, defaults: dict[str, str], **raw_fields: str) -> bytes:
    """A REQUEST payload written as JSON text, so it can hold what json.dumps never
    writes (NaN, 5,000-digit integers, lone surrogates)."""
    fields = {**defaults, **raw_fields}
    body = "".join(f',"{key}":{value}' for key, value in fields.items())
    return f'{{"op":"{op}"{body}}}'.encode()


def _exec(**raw_fields: str) -> bytes:
    return _request("exec", _EXEC, **raw_fields)


def _put(**raw_fields: str) -> bytes:
    return _request("put", _PUT, **raw_fields)


def _ping(**raw_fields: str) -> bytes:
    return _request("ping", {}, **raw_fields)


MALFORMED = {
    "array nested 20,000 deep": _ping(x="[" * 20_000 + "]" * 20_000),
    "object nested 10,000 deep": _ping(x='{"":' * 10_000 + "1" + "}" * 10_000),
    "5,000-digit integer": _ping(x="9" * 5_000),
    "5,000-digit put size": _put(size="9" * 5_000),
    "5,000-digit exec timeout": _exec(timeout="1" * 5_000),
    "lone surrogate in command": _exec(command='"echo \\ud800"'),
    "lone surrogate in env value": _exec(env='{"FOO":"\\ud800"}'),
    "lone surrogate in env name": _exec(env='{"\\udfff":"x"}'),
    "lone surrogate in cwd": _exec(cwd='"/tmp/\\ud800"'),
    "lone surrogate in op": _request("\\ud800", {}),
    "lone surrogate in put path": _put(path='"/tmp/\\ud800"'),
    "lone surrogate in put name": _put(path="null", name='"\\ud800"'),
    "lone surrogate in owner": _put(owner='"\\ud800"'),
    "lone surrogate in group": _put(group='"\\udbff"'),
    "NUL in owner": _put(owner='"root\\u0000x"'),
    "NUL in group": _put(group='"root\\u0000x"'),
    "NaN timeout": _exec(timeout="NaN"),
    "Infinity timeout": _exec(timeout="Infinity"),
    "-Infinity timeout": _exec(timeout="-Infinity"),
    "1e400 timeout": _exec(timeout="1e400"),
    "1 and 400 zeros timeout": _exec(timeout="1" + "0" * 400),
    "env name with a trailing newline": _exec(env='{"FOO\\n":"x"}'),
}


@pytest.mark.parametrize("payload", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_request_is_answered_bad_request_and_session_goes_on(
    restricted_daemon, low_home, payload
):
    frames = frames_after_hello(low_home, restricted_daemon.port)
    reply = send_request(frames, payload)
    assert reply["ok"] is False
    assert reply["error"] == "bad_request", reply
    assert reply["message"]
    assert ping_works(frames)


# -- a bug in an operation: answered, logged once, and the session ends only if it must --

# A real radmind with two deliberately broken operations plugged in through the
# public register_operation hook.
_BROKEN_OPS = """
import sys
from radmin import server
from radmin.protocol import FrameType

def crash_at_once(request):
    raise ZeroDivisionError("a bug before any frame")

def crash_after_proceed(request):
    request.conn.send_json(FrameType.PROCEED, {})
    raise KeyError("a bug while the client streams")

server.register_operation("crash_at_once", crash_at_once)
server.register_operation("crash_after_proceed", crash_after_proceed)
from radmin.cli.radmind import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def buggy_daemon(tmp_path, server_identity, client_home) -> Iterator[Daemon]:
    daemon = prepare_daemon(tmp_path / "buggy", server_identity, {"ops": client_entry(client_home)})
    daemon.program = [sys.executable, "-c", _BROKEN_OPS]
    try:
        yield daemon.start()
    finally:
        daemon.stop()


def _crash_events(daemon: Daemon) -> list[dict]:
    return [e for e in daemon.events() if e.get("event") in ("request_crashed", "session_crashed")]


def test_operation_bug_before_any_frame_is_answered_failed_and_session_goes_on(
    buggy_daemon, client_home
):
    frames = frames_after_hello(client_home, buggy_daemon.port)
    reply = send_request(frames, b'{"op":"crash_at_once"}')
    assert reply["ok"] is False and reply["error"] == "failed"
    assert "internal error" in reply["message"]
    assert ping_works(frames)
    (event,) = _crash_events(buggy_daemon)  # logged once, with its traceback
    assert event["event"] == "request_crashed" and event["op"] == "crash_at_once"
    assert "ZeroDivisionError: a bug before any frame" in event["exception"]


def test_operation_bug_mid_stream_is_answered_then_the_session_ends(buggy_daemon, client_home):
    frames = frames_after_hello(client_home, buggy_daemon.port)
    frames.send_json(FrameType.REQUEST, {"op": "crash_after_proceed"})
    assert frames.recv_json(FrameType.PROCEED)[0] is FrameType.PROCEED
    reply = frames.recv_json(FrameType.RESULT)[1]
    assert reply["error"] == "failed" and "internal error" in reply["message"]
    with pytest.raises(ConnectionClosed):  # the client may be streaming: out of step
        frames.recv_frame()
    closed = buggy_daemon.wait_for_event(lambda e: e.get("event") == "connection_closed")
    assert closed["outcome"] == "internal_error"
    (event,) = _crash_events(buggy_daemon)
    assert "KeyError" in event["exception"]


# -- thousands of connections: poll(), not select(), on both sides ------------------------

HELD = 1_100  # past select()'s FD_SETSIZE of 1024


@pytest.fixture
def fd_room() -> Iterator[None]:
    """Room in this process's RLIMIT_NOFILE for HELD connections (and the daemons'
    children inherit it); the original soft limit comes back afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * HELD + 256
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {needed}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _soft_fd_limit(limit: int) -> Callable[[], None]:
    """For Daemon.preexec_fn: start the daemon with a low soft limit, as systemd does."""
    return lambda: resource.setrlimit(
        resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    )


def _fd_limits(pid: int) -> tuple[int, int]:
    """(soft, hard) 'Max open files' of a running process."""
    with open(f"/proc/{pid}/limits") as f:
        line = next(line for line in f if line.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    return int(soft), int(hard)


@pytest.mark.slow
def test_daemon_holding_1100_connections_still_answers_an_admin_ping(
    tmp_path, server_identity, client_home, fd_room
):
    admin = make_client_home(tmp_path / "admin")
    clients = {"low": restricted_entry(client_home), "admin": client_entry(admin)}
    limits = {
        "max_connections": HELD + 50,
        "handshake_timeout": 10,
        "per_client": {"max_connections": HELD},  # one client holds them all here
    }
    daemon = prepare_daemon(tmp_path / "busy", server_identity, clients, limits=limits)
    daemon.preexec_fn = _soft_fd_limit(1024)
    held: list[FrameSocket] = []
    try:
        daemon.start()
        pid = daemon.proc.pid
        soft, hard = _fd_limits(pid)
        assert soft == hard >= 2 * HELD, "radmind raises its soft fd limit to the hard one"
        baseline = open_fds(pid)
        held = [frames_after_hello(client_home, daemon.port) for _ in range(HELD)]
        assert open_fds(pid) >= baseline + HELD  # the daemon's descriptors are past 1024
        started = time.monotonic()
        result = run_cli(admin, "ping", daemon.address)
        elapsed = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        assert b"admin" in result.stdout
        print(f"\nadmin ping with {HELD} connections held: {elapsed:.3f} s", file=sys.__stderr__)
        assert elapsed < 10
        assert ping_works(held[-1])  # the newest held connection is served too
        for frames in held:
            frames.close()
        wait_until(lambda: open_fds(pid) <= baseline, 30, "the daemon's descriptors freed")
    finally:
        for frames in held:
            frames.close()
        daemon.stop()


@pytest.mark.slow
def test_client_process_with_1100_connections_uses_the_last_one(
    daemon_factory, client_home, fd_room
):
    daemon = daemon_factory(
        {"ops": client_entry(client_home)},
        limits={
            "max_connections": HELD + 50,
            "handshake_timeout": 10,
            "per_client": {"max_connections": HELD + 1},
        },
    )
    cancel_read, cancel_write = os.pipe()  # every wait also watches this (Ctrl-C) pipe
    options = ClientOptions(client_home, cancel_fd=cancel_read)
    target = Target("d", "127.0.0.1", daemon.port)
    conns = []
    try:
        conns = [connect(target, options) for _ in range(HELD)]
        last = conns[-1]
        assert last.frames.sock.fileno() >= 1024
        assert last.ping().client == "ops"
        result = last.run("cat; echo done >&2", stdin=b"x" * 100_000)
        assert (result.exit_code, result.stdout, result.stderr) == (0, b"x" * 100_000, b"done\n")
        assert last.put(__file__, f"{daemon.folder}/uploads/copy.py").status == "changed"
    finally:
        for conn in conns:
            conn.close()
        os.close(cancel_read)
        os.close(cancel_write)


# -- memory before trust: announcing is free, only bytes that arrive cost memory ----------

ANNOUNCERS = 400
# Per connection, after hello: a thread, a TLS object and a 64 KiB receive buffer. The
# 1 MiB frame each of them announces must add nothing of its own.
MEMORY_BOUND_MIB = 128


def _unread_by(port: int) -> int:
    """Bytes waiting in the kernel for the sockets whose local port is `port` (the
    daemon's side of our connections): 0 once the daemon has read all we sent."""
    unread = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    unread += int(fields[4].split(":")[1], 16)
    return unread


@pytest.mark.slow
def test_400_connections_announcing_1_mib_frames_stay_under_the_memory_bound(
    daemon_factory, client_home, fd_room
):
    daemon = daemon_factory(
        {"low": restricted_entry(client_home)},
        limits={
            "max_connections": ANNOUNCERS + 10,
            "handshake_timeout": 10,
            "per_client": {"max_connections": ANNOUNCERS},
        },
    )
    pid = daemon.proc.pid
    before = proc_status(pid, "VmRSS")
    held = [frames_after_hello(client_home, daemon.port) for _ in range(ANNOUNCERS)]
    try:
        connected = proc_status(pid, "VmRSS")
        for i, frames in enumerate(held):
            frame_type = (FrameType.FILE_DATA, FrameType.STDIN)[i % 2]
            frames.sock.sendall(HEADER.pack(frame_type, MAX_DATA) + b"abc")
        wait_until(lambda: _unread_by(daemon.port) == 0, 10, "the daemon to read every byte")
        announced = proc_status(pid, "VmRSS")
        print(
            f"\nVmRSS: {before // 1024} MiB idle, {connected // 1024} MiB with {ANNOUNCERS} "
            f"connections, {announced // 1024} MiB after each announced a 1 MiB frame",
            file=sys.__stderr__,
        )
        assert (announced - before) / 1024 < MEMORY_BOUND_MIB
        assert (announced - connected) / 1024 < 16  # the announcements themselves
    finally:
        for frames in held:
            frames.close()


# -- slow peers: deadlines are totals, not per read ----------------------------------------


def _drip(sock, data: bytes, interval: float) -> int:
    """Send `data` a byte at a time, `interval` apart, until the daemon answers or hangs
    up (it becomes readable); return how many bytes went out."""
    for sent, byte in enumerate(data):
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return sent
        if wait_ready({sock.fileno(): select.POLLIN}, interval):
            return sent + 1
    return len(data)


def test_hello_dripped_a_byte_at_a_time_is_cut_at_the_handshake_timeout(
    daemon_factory, client_home
):
    daemon = daemon_factory({"low": restricted_entry(client_home)}, limits={"handshake_timeout": 2})
    payload = encode_json({"protocols": [1], "software": "a slow client, one byte at a time"})
    hello = HEADER.pack(FrameType.HELLO, len(payload)) + payload
    started = time.monotonic()
    with tls_connect(client_home, daemon.port) as tls:
        sent = _drip(tls, hello, 0.2)  # 60 bytes: 12 s if nobody stopped it
        read_until_closed(tls, timeout=5)
    elapsed = time.monotonic() - started
    assert sent < len(hello)
    assert elapsed < 3.5, elapsed
    closed = daemon.wait_for_event(lambda e: e.get("event") == "connection_closed")
    assert closed["outcome"] == "timeout"


@pytest.mark.parametrize("dripping", [False, True], ids=["stalled", "dripping"])
def test_started_frame_is_cut_at_the_frame_timeout(daemon_factory, client_home, dripping):
    daemon = daemon_factory({"low": restricted_entry(client_home)}, limits={"frame_timeout": 1})
    frames = frames_after_hello(client_home, daemon.port)
    payload = encode_json({"op": "ping", "padding": "x" * 40})
    wire = HEADER.pack(FrameType.REQUEST, len(payload)) + payload
    started = time.monotonic()
    frames.sock.sendall(wire[:3])
    if dripping:
        _drip(frames.sock, wire[3:-1], 0.1)  # 5 s if nobody stopped it; never complete
    _, error = frames.recv_json(FrameType.ERROR)
    elapsed = time.monotonic() - started
    assert "limits.frame_timeout" in error["message"]
    assert 0.9 < elapsed < 2.5, elapsed
    with pytest.raises(ConnectionClosed):
        frames.recv_frame()


def test_partial_frame_during_exec_costs_no_cpu_and_stays_in_step(daemon_factory, client_home):
    """The exec loop must wait on the socket for the rest of a frame, not spin."""
    daemon = daemon_factory({"ops": client_entry(client_home)})
    frames = frames_after_hello(client_home, daemon.port)
    request = {"op": "exec", "command": "sleep 1", "env": {}, "stdin": True}
    frames.send_json(FrameType.REQUEST, request)
    frames.recv_json(FrameType.PROCEED)
    cpu_before = _cpu_seconds(daemon.proc.pid)
    frames.sock.sendall(HEADER.pack(FrameType.STDIN, 10) + b"abc")  # 7 bytes still to come
    reply = frames.recv_json(FrameType.RESULT)[1]  # `sleep 1` ends: a second of waiting
    assert reply["exit_code"] == 0
    assert _cpu_seconds(daemon.proc.pid) - cpu_before < 0.3
    frames.sock.sendall(b"defghij" + HEADER.pack(FrameType.EOF, 0))
    assert ping_works(frames)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- a session thread that cannot start gives its max_connections slot back ----------------


def _handshake_fails(home, port: int) -> bool:
    try:
        tls = tls_connect(home, port)
    except (OSError, ssl.SSLError):
        return True
    tls.close()
    return False


def test_connection_whose_thread_cannot_start_gives_its_slot_back(daemon_factory, client_home):
    daemon = daemon_factory({"ops": client_entry(client_home)}, limits={"max_connections": 3})
    pid = daemon.proc.pid
    original = resource.prlimit(pid, resource.RLIMIT_AS)
    # Address space for small allocations, not for one more thread stack (8 MiB).
    room = proc_status(pid, "VmSize") * 1024 + 4 * 1024 * 1024
    resource.prlimit(pid, resource.RLIMIT_AS, (room, original[1]))
    try:
        for attempt in range(5):  # more than max_connections
            assert _handshake_fails(client_home, daemon.port), f"attempt {attempt} was served"
        wait_until(
            lambda: (
                len([e for e in daemon.events() if e.get("event") == "connection_dropped"]) == 5
            ),
            5,
            "five connection_dropped events",
        )
    finally:
        resource.prlimit(pid, resource.RLIMIT_AS, original)
    result = run_cli(client_home, "ping", daemon.address)
    assert result.returncode == 0, result.stderr

"""Per-client limits, the upload stall timeout and disk space: one client, even an
authenticated one, cannot hold what others need. Real daemon, real processes, real
filesystems (a small tmpfs for a full disk)."""

from __future__ import annotations

import os
import resource
import threading
import time

import pytest
import yaml
from support import (
    client_entry,
    frames_after_hello,
    make_client_home,
    open_fds,
    run_cli,
    trust,
    wait_until,
)

from radmin.client import ClientOptions, RemoteError, connect
from radmin.hosts import Target
from radmin.journal import TEMP_PREFIX
from radmin.protocol import FrameType

PER_CLIENT = {"max_connections": 3, "max_processes": 2, "max_uploads": 1}


@pytest.fixture
def limited_daemon(daemon_factory, client_home, tmp_path):
    admin = make_client_home(tmp_path / "admin")
    daemon = daemon_factory(
        {"ops": client_entry(client_home), "admin": client_entry(admin)},
        limits={"handshake_timeout": 2, "upload_stall_timeout": 1, "per_client": PER_CLIENT},
    )
    trust(client_home, daemon)
    trust(admin, daemon)
    daemon.admin = admin
    return daemon


def api(home, daemon):
    return connect(Target("d", "127.0.0.1", daemon.port), ClientOptions(home))


def start_sleep(frames, seconds: int = 30) -> None:
    frames.send_json(
        FrameType.REQUEST,
        {"op": "exec", "command": f"sleep {seconds}", "env": {}, "stdin": False},
    )
    frames.send_frame(FrameType.EOF)
    frame_type, reply = frames.recv_json(FrameType.PROCEED, FrameType.RESULT)
    assert frame_type is FrameType.PROCEED, reply


def test_commands_over_max_processes_exit_126_and_other_clients_still_run(
    limited_daemon, client_home
):
    daemon = limited_daemon
    running = [frames_after_hello(client_home, daemon.port) for _ in range(2)]
    for frames in running:
        start_sleep(frames)
    result = run_cli(client_home, "exec", daemon.address, "true")
    assert result.returncode == 126
    assert b"limits.per_client.max_processes" in result.stderr
    other = run_cli(daemon.admin, "exec", daemon.address, "echo admin")
    assert (other.returncode, other.stdout) == (0, b"admin\n")
    running[0].send_json(FrameType.CANCEL, {})  # one ends: room for one more
    running[0].recv_json(FrameType.RESULT)
    assert run_cli(client_home, "exec", daemon.address, "true").returncode == 0
    for frames in running:
        frames.close()


def test_connections_over_max_connections_are_refused_at_hello(limited_daemon, client_home):
    daemon = limited_daemon
    held = [api(client_home, daemon) for _ in range(3)]
    result = run_cli(client_home, "ping", daemon.address)
    assert result.returncode == 255
    assert b"limits.per_client.max_connections" in result.stderr
    assert run_cli(daemon.admin, "ping", daemon.address).returncode == 0
    held.pop().close()
    daemon.wait_for_event(
        lambda e: e.get("event") == "connection_closed" and e.get("client") == "ops"
    )
    assert run_cli(client_home, "ping", daemon.address).returncode == 0
    for conn in held:
        conn.close()


def _start_upload(frames, dest, size: int) -> None:
    frames.send_json(
        FrameType.REQUEST,
        {"op": "put", "path": str(dest), "name": dest.name, "size": size, "sha256": None},
    )
    frames.recv_json(FrameType.PROCEED)
    frames.send_frame(FrameType.FILE_DATA, b"x" * 1000)  # then nothing more


def _trickle(frames, stop: threading.Event) -> None:
    """A byte every 0.2 s: the upload stays in progress, under its 1 s stall timeout,
    however long a loaded machine takes to start the second radmin-cli."""
    while not stop.wait(0.2):
        frames.send_frame(FrameType.FILE_DATA, b"x")


def test_uploads_over_max_uploads_exit_1(limited_daemon, client_home, tmp_path):
    daemon = limited_daemon
    frames = frames_after_hello(client_home, daemon.port)
    _start_upload(frames, daemon.folder / "uploads" / "slow.bin", 10_000)
    local = tmp_path / "second"
    local.write_bytes(b"second\n")
    stop = threading.Event()
    trickle = threading.Thread(target=_trickle, args=(frames, stop))
    trickle.start()
    try:
        result = run_cli(client_home, "put", str(local), daemon.address)
    finally:
        stop.set()
        trickle.join()
    assert result.returncode == 1
    assert b"limits.per_client.max_uploads" in result.stderr
    frames.close()


def test_a_stalled_upload_is_ended_and_its_space_released(limited_daemon, client_home):
    daemon = limited_daemon
    folder = daemon.folder / "uploads"
    dest = folder / "stalled.bin"
    frames = frames_after_hello(client_home, daemon.port)
    started = time.monotonic()
    _start_upload(frames, dest, 50 * 1024 * 1024)
    assert [p for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX)]  # allocated
    event = daemon.wait_for_event(
        lambda e: e.get("event") == "request" and e.get("path") == str(dest), timeout=10
    )
    assert "limits.upload_stall_timeout" in event["error"]
    assert time.monotonic() - started < 5  # 1 s configured, well before idle_timeout
    assert [p.name for p in folder.iterdir()] == []
    assert os.listdir(daemon.folder / "state" / "inflight") == []
    frames.sock.settimeout(5)
    with pytest.raises((ConnectionError, OSError, Exception)):
        frames.recv_frame()  # the daemon hung up


def test_upload_larger_than_the_free_space_is_refused_before_any_data(
    daemon, client_home, tmp_path, tmpfs
):
    small = tmpfs("small", "size=1m")
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(3 * 1024 * 1024))
    sent: list[int] = []
    with api(client_home, daemon) as conn:
        with pytest.raises(RemoteError) as refused:
            conn.put(str(local), str(small / "big.bin"), progress=sent.append)
        assert "not enough space" in str(refused.value)
        assert sent == []  # refused before a single data frame
        assert conn.ping().client == "ops"
    assert os.listdir(small) == []


@pytest.mark.parametrize("run_as", ["root", "nobody"])
def test_commands_start_with_oom_score_adj_0_and_1024_open_files(
    daemon_factory, client_home, run_as
):
    """The daemon's own oom_score_adj (+300 here: CI cannot set a negative one) and its
    raised open-file limit are not inherited by commands. oom_score_adj is written by
    the daemon right after the exec, so the command reads it a moment later: this tests
    what a running command has, not the microseconds after its exec (docs/security.md)."""
    daemon = daemon_factory({"ops": client_entry(client_home, run_as=run_as)})
    pid = daemon.proc.pid
    with open(f"/proc/{pid}/oom_score_adj", "w") as f:
        f.write("300")
    _soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    trust(client_home, daemon)
    result = run_cli(
        client_home, "exec", daemon.address, "sleep 0.2; cat /proc/self/oom_score_adj; ulimit -Sn"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"0\n{min(1024, hard)}\n".encode()
    with open(f"/proc/{pid}/oom_score_adj") as f:
        assert f.read().strip() == "300"  # the daemon keeps its own


CONCURRENT = 300


def test_300_concurrent_execs_of_one_client_leave_an_admin_ping_fast_and_no_fd_behind(
    daemon_factory, client_home, tmp_path
):
    """The attack that once broke select(): a low-privilege client holds 300 running
    `cat`s (four descriptors each, past 1024). With its limits raised that far, the
    daemon still answers an admin at once and gives every descriptor back."""
    admin = make_client_home(tmp_path / "admin")
    daemon = daemon_factory(
        {"ops": client_entry(client_home, exec_allow=("cat",)), "admin": client_entry(admin)},
        limits={
            "handshake_timeout": 10,
            "per_client": {"max_connections": CONCURRENT, "max_processes": CONCURRENT},
            # CONCURRENT handshakes at once from one address is what these caps refuse.
            "max_startups": 2 * CONCURRENT,
            "max_startups_per_source": 2 * CONCURRENT,
        },
    )
    trust(admin, daemon)
    baseline = open_fds(daemon.proc.pid)
    held = []
    for _ in range(CONCURRENT):
        frames = frames_after_hello(client_home, daemon.port)
        frames.send_json(
            FrameType.REQUEST, {"op": "exec", "command": "cat", "env": {}, "stdin": True}
        )
        assert frames.recv_json(FrameType.PROCEED, FrameType.RESULT)[0] is FrameType.PROCEED
        held.append(frames)
    assert open_fds(daemon.proc.pid) > 1024
    started = time.monotonic()
    ping = run_cli(admin, "ping", daemon.address)
    elapsed = time.monotonic() - started
    assert ping.returncode == 0, ping.stderr
    assert elapsed < 1.0, elapsed
    for frames in held:
        frames.close()
    wait_until(
        lambda: open_fds(daemon.proc.pid) == baseline,
        timeout=30,
        what=f"the daemon's descriptors back to {baseline}",
    )


def test_a_wide_fan_out_raises_the_clients_own_open_file_limit(
    daemon_factory, client_home, tmp_path
):
    """radmin-cli started with a soft limit of 256 runs 300 hosts at once."""
    daemon = daemon_factory(
        {"ops": client_entry(client_home)},
        limits={
            "handshake_timeout": 10,
            "per_client": {"max_connections": CONCURRENT, "max_processes": CONCURRENT},
            # CONCURRENT handshakes at once from one address is what these caps refuse.
            "max_startups": 2 * CONCURRENT,
            "max_startups_per_source": 2 * CONCURRENT,
        },
    )
    trust(client_home, daemon)
    aliases = {f"h{i}": daemon.address for i in range(CONCURRENT)}
    (client_home.path / "config.yaml").write_text(yaml.safe_dump({"hosts": aliases}))
    result = run_cli(
        client_home,
        "exec",
        "-p",
        str(CONCURRENT),
        ",".join(aliases),
        "sleep 1",
        wrapper=("prlimit", "--nofile=256:8192", "--"),
    )
    assert result.returncode == 0, result.stderr[-2000:]

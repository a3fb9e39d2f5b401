"""The daemon's own ends: a second daemon on the same state_dir, a crash that orphans
commands, and stops -- hurried by a second signal, with a RESULT for what they end."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import time

from support import (
    RADMIND,
    client_entry,
    frames_after_hello,
    new_marker,
    processes_with,
    start_cli,
    wait_for_processes,
    wait_until,
)

from radmin import journal
from radmin.protocol import FrameType

SLACK = 4.0


def _temp_files(folder):
    return [p for p in folder.iterdir() if p.name.startswith(".radmin-upload-")]


def test_second_daemon_on_same_state_dir_refuses_and_spares_the_upload(daemon, client_home):
    uploads = daemon.folder / "uploads"
    frames = frames_after_hello(client_home, daemon.port)
    frames.send_json(
        FrameType.REQUEST,
        {"op": "put", "path": str(uploads / "f"), "name": "f", "size": 4 * 1024**2},
    )
    frames.recv_json(FrameType.PROCEED)
    frames.send_frame(FrameType.FILE_DATA, b"x" * 1024**2)
    temp = _temp_files(uploads)
    assert temp
    second = subprocess.run(
        [RADMIND, "run", "-c", str(daemon.config_path)], capture_output=True, timeout=30
    )
    assert second.returncode == 1
    assert b"is in use by another radmind" in second.stderr
    assert str(daemon.proc.pid).encode() in second.stderr
    assert _temp_files(uploads) == temp  # not cleared as a leftover
    frames.close()


def test_orphaned_command_is_ended_at_the_next_start(daemon, client_home):
    marker = new_marker()
    client = start_cli(
        client_home, "exec", "-n", daemon.address, f"sleep {marker}", stderr=subprocess.DEVNULL
    )
    try:
        orphans = wait_for_processes(marker, 1, exclude=(client.pid,))
        daemon.proc.kill()  # a crash: nothing cleaned up
        daemon.proc.wait()
        client.wait(timeout=10)
        assert processes_with(marker) == orphans  # running on under PID 1
        daemon.start()
        wait_until(lambda: not processes_with(marker), 10, "the orphaned command ended")
        event = daemon.wait_for_event(lambda e: e.get("event") == "ended_orphaned_commands")
        assert set(event["process_groups"]) & set(orphans)  # the group's leader
    finally:
        for pid in processes_with(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_orphan_record_of_a_reused_pid_spares_the_stranger(tmp_path):
    journal.prepare(tmp_path)
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        started = journal.process_start_time(stranger.pid)
        assert started is not None
        record = journal.running_dir(tmp_path) / str(stranger.pid)
        record.write_text(f"{stranger.pid} {started - 1}\n")  # another process's start
        assert journal.recover_processes(tmp_path) == []
        assert stranger.poll() is None
        assert not record.exists()
        record.write_text(f"{stranger.pid} {started}\n")  # really the one recorded
        assert journal.recover_processes(tmp_path) == [stranger.pid]
        assert stranger.wait(timeout=5) == -signal.SIGKILL
    finally:
        stranger.kill()
        stranger.wait()


def test_second_sigterm_ends_requests_at_once_with_a_result(daemon_factory, client_home):
    daemon = daemon_factory(
        {"ops": client_entry(client_home)}, limits={"handshake_timeout": 2, "shutdown_grace": 60}
    )
    marker = new_marker()
    client = start_cli(
        client_home, "exec", "-n", daemon.address, f"sleep {marker}", stderr=subprocess.PIPE
    )
    wait_for_processes(marker, 1, exclude=(client.pid,))
    daemon.signal(signal.SIGTERM)
    daemon.wait_for_event(lambda e: e.get("event") == "stopping")
    assert processes_with(marker, exclude=(client.pid,))  # the grace period runs
    started = time.monotonic()
    daemon.signal(signal.SIGTERM)
    _, stderr = client.communicate(timeout=30)
    assert time.monotonic() - started < SLACK
    assert client.returncode == 143, stderr
    assert b"daemon shutting down" in stderr
    assert daemon.proc.wait(timeout=10) == 0
    event = daemon.wait_for_event(lambda e: e.get("event") == "request")
    assert event["ended_by"] == "daemon shutting down"
    assert event["signal"] == signal.SIGTERM
    daemon.wait_for_event(lambda e: e.get("event") == "stop_hurried")


def test_command_ended_by_the_grace_period_gets_a_result(daemon_factory, client_home):
    daemon = daemon_factory(
        {"ops": client_entry(client_home)}, limits={"handshake_timeout": 2, "shutdown_grace": 1}
    )
    marker = new_marker()
    client = start_cli(
        client_home,
        "exec",
        "-n",
        "--json",
        daemon.address,
        f"sleep {marker}",
        stdout=subprocess.PIPE,
    )
    wait_for_processes(marker, 1, exclude=(client.pid,))
    daemon.signal(signal.SIGTERM)
    stdout, _ = client.communicate(timeout=30)
    assert client.returncode == 143
    record = json.loads(stdout)
    assert record["exit_code"] == 143
    assert record["error"] == "daemon shutting down"
    assert daemon.proc.wait(timeout=10) == 0
    assert not any(
        "client went away" in str(e.get("error", "")) for e in daemon.events()
    )  # the log says the daemon ended it


def test_listeners_shut_down_in_parallel(daemon_factory, client_home):
    listen = [f"127.0.0.{n}:0" for n in range(1, 13)]
    daemon = daemon_factory({"ops": client_entry(client_home)}, listen=listen)
    started = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=30) == 0
    # One after another, 12 accept loops take ~0.25 s each to notice (3 s on average).
    assert time.monotonic() - started < 2.0


def test_command_that_exited_is_not_reported_as_timed_out(daemon, client_home):
    """The daemon looks late (frozen past the deadline): the command had exited."""
    marker = f"0.{random.randint(10**8, 10**9 - 1)}"  # sleeps < 1 s
    client = start_cli(
        client_home,
        "exec",
        "-n",
        "--json",
        "-t",
        "2",
        daemon.address,
        f"sleep {marker}; exit 3",
        stdout=subprocess.PIPE,
    )
    wait_for_processes(marker, 1, exclude=(client.pid,))
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        wait_until(lambda: not processes_with(marker, exclude=(client.pid,)), 5, "exited")
        wait_until(lambda: time.monotonic() - frozen_at > 2.5, 5, "the deadline passed")
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)
    stdout, _ = client.communicate(timeout=30)
    record = json.loads(stdout)
    assert (client.returncode, record["exit_code"], record["error"]) == (3, 3, None)

"""Out of file descriptors (a daemon started under `ulimit -n 1024`, many concurrent
execs): new work is refused with a clear error, no session crashes, the daemon serves
on once descriptors are free again."""

from __future__ import annotations

import contextlib
import resource

from support import (
    client_entry,
    frames_after_hello,
    new_marker,
    ping_works,
    prepare_daemon,
    run_cli,
    wait_until,
    wait_until_gone,
)

from radmin.errors import ConnectionClosed
from radmin.protocol import FrameType

LIMIT = 128  # soft = hard: the daemon cannot raise it


def _low_fd_limit() -> None:  # runs in the daemon's child before exec
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))


def test_running_out_of_descriptors_refuses_work_without_crashing(
    tmp_path, server_identity, client_home
):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    daemon = prepare_daemon(tmp_path / "d", server_identity, {"ops": client_entry(client_home)})
    daemon.preexec_fn = _low_fd_limit
    daemon.start()
    marker = new_marker()
    sessions = []
    outcomes: dict[str, int] = {}
    try:
        for _ in range(60):
            if outcomes.get("refused") or outcomes.get("connection refused"):
                break  # descriptors ran out: what matters is what happens next
            try:
                frames = frames_after_hello(client_home, daemon.port)
                frames.sock.settimeout(3)
                frames.send_json(FrameType.REQUEST, {"op": "exec", "command": f"sleep {marker}"})
                kind, reply = frames.recv_json(FrameType.PROCEED, FrameType.RESULT)
            except (OSError, ConnectionClosed) as exc:  # refused before TLS or hello
                outcomes["connection refused"] = outcomes.get("connection refused", 0) + 1
                del exc
                continue
            sessions.append(frames)
            if kind is FrameType.PROCEED:
                outcomes["ran"] = outcomes.get("ran", 0) + 1
            else:
                assert reply["ok"] is False
                assert "out of file descriptors" in reply["message"], reply
                outcomes["refused"] = outcomes.get("refused", 0) + 1
        assert outcomes.get("ran", 0) > 5
        assert outcomes.get("refused", 0) + outcomes.get("connection refused", 0) > 0, outcomes
    finally:
        for frames in sessions:
            with contextlib.suppress(OSError):
                frames.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    wait_until_gone(marker, timeout=15)
    wait_until(lambda: daemon.proc.poll() is None, 1, "daemon alive")
    crashes = [
        e for e in daemon.events() if e.get("event") in ("session_crashed", "request_crashed")
    ]
    assert crashes == [], crashes
    assert ping_works(frames_after_hello(client_home, daemon.port))
    assert run_cli(client_home, "ping", daemon.address).returncode == 0
    daemon.stop()

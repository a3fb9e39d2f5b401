"""Each connection that completed TLS ends in one `connection_closed` event: who (peer,
fingerprint, client, client software), how it ended (outcome, reason), how long, how many
requests, the bytes on the wire. Refusals stay warnings of their own, logged as they
happen; each request keeps its `request` event. Real daemon, real TLS."""

from __future__ import annotations

import signal
from typing import Any

from support import (
    Daemon,
    client_entry,
    fingerprint_of,
    frames_after_hello,
    make_client_home,
    run_cli,
    tls_connect,
    wait_until,
)

from radmin.protocol import FrameSocket, FrameType


def closed_events(daemon: Daemon) -> list[dict[str, Any]]:
    return [e for e in daemon.events() if e.get("event") == "connection_closed"]


def one_closed(daemon: Daemon, timeout: float = 10.0) -> dict[str, Any]:
    """The only connection_closed event, once it is there."""
    events = wait_until(lambda: closed_events(daemon), timeout, "a connection_closed event")
    assert len(events) == 1, events
    return events[0]


def test_normal_close_is_one_event_naming_who_how_long_and_how_much(daemon, client_home):
    assert run_cli(client_home, "ping", daemon.address).returncode == 0
    closed = one_closed(daemon)
    assert closed["level"] == "info"
    assert closed["peer"].startswith("127.0.0.1:")
    assert closed["fingerprint"] == fingerprint_of(client_home)
    assert closed["client"] == "ops"
    assert closed["client_software"].startswith("radmin-cli/")
    assert closed["outcome"] == "closed" and "reason" not in closed
    assert closed["requests"] == 2  # a ping is two: one rides with the hello
    assert 0 <= closed["duration_s"] < 10
    assert closed["bytes_in"] > 0 and closed["bytes_out"] > 0  # TLS records included
    # Nothing else about this connection but its requests: at info, no line when it
    # opened (the tests' daemons log at debug, which adds `authenticated`).
    own = [(e["level"], e["event"]) for e in daemon.events() if e.get("peer") == closed["peer"]]
    assert own == [
        ("debug", "authenticated"),
        ("info", "request"),
        ("info", "request"),
        ("info", "connection_closed"),
    ], own


def test_dropped_client_is_said_at_close_with_the_reason(daemon, client_home):
    frames = frames_after_hello(client_home, daemon.port)
    frames.send_json(FrameType.REQUEST, {"op": "exec", "command": "sleep 30", "env": {}})
    frames.recv_json(FrameType.PROCEED)
    frames.sock.close()  # no CANCEL, no close_notify: the client just goes away
    closed = one_closed(daemon)
    assert closed["outcome"] == "disconnected"
    assert closed["reason"] == "client went away during exec: connection closed by peer"
    assert closed["client"] == "ops" and closed["client_software"] == "test"
    assert closed["requests"] == 1
    request = next(e for e in daemon.events() if e.get("event") == "request")
    assert request["outcome"] == "disconnected" and request["command"] == "sleep 30"


def test_idle_timeout_is_said_at_close(daemon_factory, client_home):
    daemon = daemon_factory(
        {"ops": client_entry(client_home)}, limits={"handshake_timeout": 2, "idle_timeout": 1}
    )
    frames = frames_after_hello(client_home, daemon.port)
    closed = one_closed(daemon)
    frames.sock.close()
    assert closed["outcome"] == "idle_timeout"
    assert closed["reason"] == "no request within limits.idle_timeout (1 s)"
    assert closed["client"] == "ops" and closed["requests"] == 0
    assert 1 <= closed["duration_s"] < 5


def test_unlisted_client_is_a_handshake_failure_and_no_connection(daemon, tmp_path):
    stranger = make_client_home(tmp_path / "stranger")
    assert run_cli(stranger, "ping", daemon.address).returncode == 255
    refused = daemon.wait_for_event(lambda e: e.get("event") == "handshake_failed")
    assert refused["level"] == "warning" and "not listed" in refused["reason"]
    assert closed_events(daemon) == []  # no TLS, no connection: the warning says it all


def test_refused_client_is_warned_at_once_then_closed(daemon, client_home):
    sock = tls_connect(client_home, daemon.port)
    daemon.config["clients"] = {}  # removed between its handshake and its hello
    daemon.write_config()
    daemon.signal(signal.SIGHUP)
    daemon.wait_for_event(lambda e: e.get("event") == "reloaded")
    frames = FrameSocket(sock)
    frames.send_json(FrameType.HELLO, {"protocols": [1], "software": "test"})
    _, error = frames.recv_json(FrameType.ERROR)
    assert error["code"] == "not_authorized"
    warning = daemon.wait_for_event(lambda e: e.get("event") == "client_refused")
    assert warning["level"] == "warning"
    assert warning["fingerprint"] == fingerprint_of(client_home)
    closed = one_closed(daemon)
    sock.close()
    assert closed["outcome"] == "refused"
    assert "is not authorized" in closed["reason"]
    assert closed["fingerprint"] == fingerprint_of(client_home)
    assert "client" not in closed and closed["requests"] == 0
    names = [e["event"] for e in daemon.events() if e.get("peer") == closed["peer"]]
    assert names == ["client_refused", "connection_closed"], names  # refused before `authenticated`

"""Mutual TLS, who-is-it, known_hosts and connection limits, through the real programs."""

from __future__ import annotations

import re
import socket
import ssl
import time

import pytest
from support import (
    client_entry,
    fingerprint_of,
    make_client_home,
    read_until_closed,
    run_cli,
    tls_connect,
    wait_until,
)


def test_ping_round_trip_reports_version_name_and_rtt(daemon, client_home):
    result = run_cli(client_home, "ping", daemon.address)
    assert result.returncode == 0, result.stderr
    line = result.stdout.decode()
    assert re.match(
        rf'^{re.escape(daemon.address)}: radmind \S+ \(protocol 1\), known as "ops", '
        r"rtt \d+\.\d+ ms",
        line,
    ), line


def test_ping_reports_each_clients_own_name(daemon_factory, tmp_path):
    alice, bob = make_client_home(tmp_path / "alice"), make_client_home(tmp_path / "bob")
    daemon = daemon_factory({"alice": client_entry(alice), "bob": client_entry(bob)})
    assert b'known as "alice"' in run_cli(alice, "ping", daemon.address).stdout
    assert b'known as "bob"' in run_cli(bob, "ping", daemon.address).stdout


def test_unlisted_client_is_refused_with_255_and_logged(daemon, tmp_path):
    stranger = make_client_home(tmp_path / "stranger")
    result = run_cli(stranger, "ping", daemon.address)
    assert result.returncode == 255
    reason = result.stderr.decode().splitlines()[-1]  # after the first-contact warning
    assert reason.startswith(f"radmin-cli: {daemon.address}: not authorized by daemon")
    assert fingerprint_of(stranger) in reason  # tells the user what to ask the admin for
    event = daemon.wait_for_event(lambda e: e.get("event") == "handshake_failed")
    assert "not listed" in event["reason"]
    assert event["peer"].startswith("127.0.0.1:")


def test_client_removed_between_handshake_and_hello_is_named_in_log(daemon, client_home):
    """The daemon names the fingerprint whenever it got to see the certificate."""
    sock = tls_connect(client_home, daemon.port)
    # Remove the client and reload while this connection sits between TLS and hello.
    daemon.config["clients"] = {}
    daemon.write_config()
    daemon.signal(__import__("signal").SIGHUP)
    daemon.wait_for_event(lambda e: e.get("event") == "reloaded")
    from radmin.protocol import FrameSocket, FrameType

    frames = FrameSocket(sock)
    frames.send_json(FrameType.HELLO, {"protocols": [1]})
    _frame_type, message = frames.recv_json(FrameType.ERROR)
    assert message["code"] == "not_authorized"
    event = daemon.wait_for_event(lambda e: e.get("event") == "client_refused")
    assert event["fingerprint"] == fingerprint_of(client_home)


def test_missing_identity_tells_user_to_run_keygen(daemon, tmp_path):
    result = run_cli(tmp_path / "empty-home", "ping", daemon.address)
    assert result.returncode == 255
    assert b"radmin-cli keygen" in result.stderr


def test_unreachable_host_exits_255_with_one_line_reason(client_home):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        result = run_cli(client_home, "ping", f"127.0.0.1:{port}")
    assert result.returncode == 255
    assert result.stderr.decode() == f"radmin-cli: 127.0.0.1:{port}: connection refused\n"


@pytest.mark.parametrize("payload", [b"GET / HTTP/1.0\r\n\r\n" * 3, b"\x16\x03\x01\x00\x05hello"])
def test_garbage_over_plain_tcp_is_dropped_and_others_served(daemon, client_home, payload):
    with socket.create_connection(("127.0.0.1", daemon.port)) as plain:
        plain.sendall(payload)
        started = time.monotonic()
        read_until_closed(plain, timeout=5)
        assert time.monotonic() - started < 3  # dropped, at the latest by the handshake timeout
    assert run_cli(client_home, "ping", daemon.address).returncode == 0
    event = daemon.wait_for_event(lambda e: e.get("event") == "handshake_failed")
    assert event["peer"].startswith("127.0.0.1:")


def test_silent_connection_is_dropped_after_handshake_timeout(daemon, client_home):
    """handshake_timeout is 2 s in the test config; a silent peer must not hold a thread."""
    with socket.create_connection(("127.0.0.1", daemon.port)) as silent:
        started = time.monotonic()
        # Meanwhile others are served promptly.
        result = run_cli(client_home, "ping", daemon.address)
        assert result.returncode == 0
        assert time.monotonic() - started < 1.5
        read_until_closed(silent, timeout=6)
        elapsed = time.monotonic() - started
    assert 1.5 < elapsed < 4, elapsed
    event = daemon.wait_for_event(lambda e: e.get("reason") == "handshake timed out")
    assert event["event"] == "handshake_failed"


def test_slow_trickle_handshake_is_bounded_in_total(daemon):
    """A byte every half second must not stretch the handshake past its deadline."""
    hello = ssl.create_default_context()  # any ClientHello will do
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = hello.wrap_bio(incoming, outgoing, server_hostname="x")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    client_hello = outgoing.read()
    with socket.create_connection(("127.0.0.1", daemon.port)) as sock:
        started = time.monotonic()
        try:
            for byte in client_hello:
                sock.sendall(bytes([byte]))
                time.sleep(0.25)  # the slow trickle under test, not a wait for anything
                if time.monotonic() - started > 6:
                    break
        except OSError:
            pass  # the daemon hung up on us: what we want
        read_until_closed(sock, timeout=6)
        assert time.monotonic() - started < 4


# -- known_hosts ----------------------------------------------------------------------


def test_first_contact_records_host_with_warning(daemon, client_home):
    result = run_cli(client_home, "ping", daemon.address)
    assert result.returncode == 0
    known = client_home.known_hosts.read_text().split()
    assert known[0] == daemon.address
    assert known[1].startswith("SHA256:")
    assert b"Warning: permanently added" in result.stderr
    again = run_cli(client_home, "ping", daemon.address)
    assert again.returncode == 0 and again.stderr == b""


def test_known_host_fingerprint_matches_daemon_log_and_radmind_fingerprint(daemon, client_home):
    run_cli(client_home, "ping", daemon.address)
    recorded = client_home.known_hosts.read_text().split()[1]
    listening = daemon.wait_for_event(lambda e: e.get("event") == "listening")
    assert listening["fingerprint"] == recorded
    import subprocess

    from support import RADMIND

    printed = (
        subprocess.run(
            [RADMIND, "fingerprint", "-c", str(daemon.config_path)], capture_output=True, check=True
        )
        .stdout.decode()
        .strip()
    )
    assert printed == recorded


def test_strict_host_key_refuses_unknown_host(daemon, client_home):
    result = run_cli(client_home, "ping", "--strict-host-key", daemon.address)
    assert result.returncode == 255
    assert b"--strict-host-key" in result.stderr
    assert not client_home.known_hosts.exists()


def test_changed_host_key_is_refused_loudly_naming_the_line(daemon, client_home):
    client_home.known_hosts.write_text(
        "# comment\nother:7420 SHA256:aaaa\n"
        f"{daemon.address} SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n"
    )
    result = run_cli(client_home, "ping", daemon.address)
    assert result.returncode == 255
    stderr = result.stderr.decode()
    assert "HOST KEY CHANGED" in stderr
    assert f"{client_home.known_hosts}:3" in stderr
    # nothing was sent: the daemon never saw a hello. It logs the end of that connection
    # (after the handshake, or as a failed one): a hello would have named the client.
    ended = daemon.wait_for_event(
        lambda e: e.get("event") in ("connection_closed", "handshake_failed"), timeout=10
    )
    assert "client" not in ended and not ended.get("requests"), ended


def test_changed_host_key_is_refused_even_without_strict(daemon, client_home):
    client_home.known_hosts.write_text(f"{daemon.address} SHA256:wrong\n")
    for extra in ([], ["--strict-host-key"]):
        assert run_cli(client_home, "ping", *extra, daemon.address).returncode == 255


def test_host_fingerprint_pin(daemon, client_home):
    listening = daemon.wait_for_event(lambda e: e.get("event") == "listening")
    right = run_cli(
        client_home,
        "ping",
        "--host-fingerprint",
        listening["fingerprint"],
        "--strict-host-key",
        daemon.address,
    )
    assert right.returncode == 0, right.stderr
    # A well-formed fingerprint, not the daemon's (a malformed one is a usage error).
    other = fingerprint_of(client_home)
    wrong = run_cli(client_home, "ping", "--host-fingerprint", other, daemon.address)
    assert wrong.returncode == 255
    assert b"host key mismatch" in wrong.stderr and b"--host-fingerprint" in wrong.stderr


# -- listeners and limits -------------------------------------------------------------


def test_ipv6_listener(daemon_factory, client_home):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    daemon = daemon_factory({"ops": client_entry(client_home)}, listen=["127.0.0.1:0", "[::1]:0"])
    v6 = f"[::1]:{daemon.ports[1]}"
    result = run_cli(client_home, "ping", f"{daemon.address},{v6}")
    assert result.returncode == 0, result.stderr
    assert v6.encode() + b": radmind" in result.stdout
    assert f"[::1]:{daemon.ports[1]} SHA256:" in client_home.known_hosts.read_text()


def test_max_connections_refuses_the_next_one_promptly(daemon_factory, client_home):
    daemon = daemon_factory(
        {"ops": client_entry(client_home)}, limits={"max_connections": 3, "handshake_timeout": 5}
    )
    # tls_connect returns once the daemon answered the handshake, which it does only in
    # the connection's thread, after admitting it: all three slots are taken now.
    held = [tls_connect(client_home, daemon.port) for _ in range(3)]
    try:
        started = time.monotonic()
        result = run_cli(client_home, "ping", daemon.address)
        assert result.returncode == 255
        assert time.monotonic() - started < 2
        event = daemon.wait_for_event(lambda e: e.get("event") == "connection_refused")
        assert event["reason"] == "max_connections reached"
    finally:
        for sock in held:
            sock.close()
    wait_until(  # slots are given back when connections end
        lambda: run_cli(client_home, "ping", daemon.address).returncode == 0,
        10,
        "the held connections' slots to be released",
    )


def test_several_requests_on_one_connection(daemon, client_home):
    from radmin.client import ClientOptions, connect
    from radmin.hosts import Target

    options = ClientOptions(client_home)
    with connect(Target("d", "127.0.0.1", daemon.port), options) as conn:
        results = [conn.ping() for _ in range(5)]
    assert {r.client for r in results} == {"ops"}
    event = daemon.wait_for_event(lambda e: e.get("event") == "connection_closed")
    assert event["requests"] == 6  # the first ping sends two: one carries the hello

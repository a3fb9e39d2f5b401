"""Pre-authentication slots (limits.max_startups, limits.max_startups_per_source): a
flood of connections that never speak TLS does not lock an admin out."""

from __future__ import annotations

import contextlib
import resource
import select
import socket
import threading
import time

import pytest

from radmin.client import ClientOptions, connect
from radmin.config import ConfigError
from radmin.startups import (
    LogThrottle,
    StartupLimits,
    Startups,
    drop_probability,
    source_key,
)

LIMITS = StartupLimits(start=10, rate=30, full=100, per_source=8)  # sshd's MaxStartups


@pytest.mark.parametrize(
    ("in_use", "probability"), [(0, 0.0), (9, 0.0), (10, 0.3), (55, 0.65), (100, 1.0), (150, 1.0)]
)
def test_random_early_drop_rises_from_rate_to_full(in_use, probability):
    assert drop_probability(in_use, LIMITS) == pytest.approx(probability)


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8::1", "2001:db8::/64"),
        ("2001:db8::ffff:1", "2001:db8::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("fe80::1%eth0", "fe80::/64"),
    ],
)
def test_sources_are_addresses_and_ipv6_slash_64s(address, key):
    assert source_key(address) == key


def test_per_source_cap_and_full():
    startups = Startups(chance=lambda: 1.0)  # never randomly dropped
    for _ in range(8):
        assert startups.try_begin("a", LIMITS) is None
    assert "max_startups_per_source" in (startups.try_begin("a", LIMITS) or "")
    assert startups.try_begin("b", LIMITS) is None  # another source still gets one
    startups.end("a")
    assert startups.try_begin("a", LIMITS) is None
    full = Startups(chance=lambda: 1.0)
    for n in range(100):
        assert full.try_begin(str(n), LIMITS) is None
    assert "full" in (full.try_begin("x", LIMITS) or "")


def test_above_start_drops_at_random():
    startups = Startups(chance=lambda: 0.0)  # every drop that may happen does
    for n in range(10):
        assert startups.try_begin(str(n), LIMITS) is None
    assert "random early drop" in (startups.try_begin("x", LIMITS) or "")


class _Log:
    def __init__(self):
        self.lines = []

    def warning(self, event, **fields):
        self.lines.append((event, fields))


def test_log_throttle_says_the_rest_in_one_line():
    log = _Log()
    throttle = LogThrottle(log, window=10.0, burst=5)
    for _ in range(1000):
        throttle.warning("handshake_failed", reason="x")
    assert len(log.lines) == 5
    throttle.flush(now=time.monotonic() + 11)
    assert log.lines[-1] == (
        "events_suppressed",
        {"suppressed_event": "handshake_failed", "count": 995, "window_s": pytest.approx(11, 1)},
    )


@pytest.mark.parametrize("value", ["10:30", "30:30:10", "10:0:100", "a:b:c", 0, True])
def test_bad_max_startups_is_a_config_error(value, tmp_path, server_identity):
    from support import base_config

    from radmin.config import load_config

    config = base_config(server_identity, tmp_path, limits={"max_startups": value})
    path = tmp_path / "radmind.yaml"
    import yaml

    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="max_startups"):
        load_config(path)


class _Flood:
    """Holds `count` TCP connections from `source` that never send a byte, and opens a
    new one for each the daemon closes."""

    def __init__(self, port: int, source: str, count: int):
        self.port, self.source, self.count = port, source, count
        self.opened = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _open(self) -> socket.socket:
        sock = socket.socket()
        sock.setblocking(False)
        sock.bind((self.source, 0))
        sock.connect_ex(("127.0.0.1", self.port))
        self.opened += 1
        return sock

    def _run(self) -> None:
        held: dict[int, socket.socket] = {}
        try:
            while not self.stop.is_set():
                while len(held) < self.count:
                    sock = self._open()
                    held[sock.fileno()] = sock
                poller = select.poll()
                for fd in held:
                    poller.register(fd, select.POLLIN)
                for fd, _ in poller.poll(50):  # closed by the daemon: renew it
                    held.pop(fd).close()
        finally:
            for sock in held.values():
                sock.close()


def test_admin_ping_answered_during_a_flood_of_silent_connections(daemon, client_home):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    flood = _Flood(daemon.port, "127.0.0.2", 1000)
    flood.thread.start()
    try:
        options = ClientOptions(client_home, connect_timeout=5)
        with contextlib.closing(connect(daemon.address, options)):
            pass  # known_hosts recorded before the clock starts
        for _ in range(20):
            started = time.monotonic()
            with contextlib.closing(connect(daemon.address, options)) as conn:
                conn.ping()
            took = time.monotonic() - started
            assert took < 1.0, f"ping took {took:.2f} s during the flood"
            time.sleep(0.25)
        assert flood.opened > 1000  # the daemon closed and the flood renewed
    finally:
        flood.stop.set()
        flood.thread.join()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    refusals = [e for e in daemon.events() if e.get("event") == "connection_refused"]
    assert refusals and "max_startups_per_source" in refusals[0]["reason"]
    assert len(refusals) <= 100 * 2  # throttled: 100 per 10 s window

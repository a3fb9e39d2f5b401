"""Pre-authentication slots, as OpenSSH's MaxStartups and PerSourceMaxStartups.

A connection holds a startup slot from accept until its client is authenticated (TLS
handshake and hello done) or it ends. Without a cap, peers that open TCP connections
and never speak TLS hold every connection slot for `handshake_timeout`, renewably, and
lock every admin out. So, in the accept loop, before a thread exists:

  * at most `per_source` slots per source address (IPv6: per /64, where one host
    holds many addresses), so one host cannot take them all;
  * above `start` slots in use, each new connection is dropped with a probability
    rising linearly from `rate`% to 100% at `full` (random early drop), so a flood from
    many sources still lets some legitimate handshakes through.

Dropped connections are closed at once; the log lines are throttled (LogThrottle).
"""

from __future__ import annotations

import functools
import ipaddress
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, NamedTuple


class StartupLimits(NamedTuple):
    start: int
    rate: int  # percent
    full: int
    per_source: int


def drop_probability(in_use: int, limits: StartupLimits) -> float:
    """sshd's formula: rate% at `start` slots in use, rising linearly to 100% at `full`."""
    if in_use < limits.start:
        return 0.0
    if in_use >= limits.full:
        return 1.0
    span = limits.full - limits.start
    return (limits.rate + (100 - limits.rate) * (in_use - limits.start) / span) / 100


def source_key(address: str) -> str:
    """The unit a per-source cap counts: an IPv4 address, or an IPv6 /64.

    Called for every accepted connection: an IPv4 peer (accept() gives it in dotted
    form already) is its own key, without the ipaddress module's parsing."""
    if ":" not in address:
        return address
    return _ipv6_source_key(address)


@functools.lru_cache(maxsize=4096)
def _ipv6_source_key(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if ip.version == 6 and ip.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip.ipv4_mapped or ip) if ip.version == 6 else str(ip)


class Startups:
    """The slots in use, overall and per source. Thread-safe."""

    def __init__(self, chance: Callable[[], float] = random.random):
        self._lock = threading.Lock()
        self._chance = chance
        self.in_use = 0
        self._by_source: Counter[str] = Counter()

    def try_begin(self, source: str, limits: StartupLimits) -> str | None:
        """Take a slot for a new connection from `source`: None, or why it is refused."""
        with self._lock:
            if self._by_source[source] >= limits.per_source:
                return f"limits.max_startups_per_source ({limits.per_source}) reached"
            if self.in_use >= limits.full:
                return f"limits.max_startups full ({limits.full} unauthenticated)"
            if self.in_use >= limits.start and self._chance() < drop_probability(
                self.in_use, limits
            ):
                return f"limits.max_startups: random early drop above {limits.start}"
            self.in_use += 1
            self._by_source[source] += 1
            return None

    def end(self, source: str) -> None:
        with self._lock:
            self.in_use -= 1
            self._by_source[source] -= 1
            if self._by_source[source] <= 0:
                del self._by_source[source]


class LogThrottle:
    """At most `burst` lines of an event per `window` seconds; the rest are counted and
    said in one `events_suppressed` line when the window ends: a flood of failed
    handshakes must not become a flood of log lines (disk, CPU, the accept loop)."""

    def __init__(self, log: Any, window: float = 10.0, burst: int = 100):
        self.log = log
        self.window = window
        self.burst = burst
        self._lock = threading.Lock()
        self._window_start = time.monotonic()
        self._said: Counter[str] = Counter()
        self._suppressed: Counter[str] = Counter()

    def warning(self, event: str, **fields: Any) -> None:
        self.flush()
        with self._lock:
            self._said[event] += 1
            if self._said[event] > self.burst:
                self._suppressed[event] += 1
                return
        self.log.warning(event, **fields)

    def flush(self, now: float | None = None) -> None:
        """End the window if it is over, saying what was suppressed in it."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if now - self._window_start < self.window:
                return
            suppressed, self._suppressed = self._suppressed, Counter()
            self._said.clear()
            window_s = round(now - self._window_start, 1)
            self._window_start = now
        for event, count in sorted(suppressed.items()):
            self.log.warning(
                "events_suppressed", suppressed_event=event, count=count, window_s=window_s
            )

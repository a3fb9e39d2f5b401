"""The fleet fixture: real hosts in network namespaces, each with its own radmind.

`fleet` (session): 8 hosts, built once, torn down by PID and namespace at the end of the
session, on a failure, and at interpreter exit (atexit) even if pytest is killed between
(SIGKILL leaves namespaces behind; their names carry a per-run tag, so they never collide
with the next run's). `fleet64`: the same fleet grown to 64 hosts, for the tests that
need many (only they pay for the 56 extra daemons). Skipped, with the reason, when not
root or when this machine has no `ip netns`.
"""

from __future__ import annotations

import atexit
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.netns import owned_tag, sweep_abandoned, unavailable_reason
from fleet.radmin_fleet import BASE_SIZE, MEASURED, RadminFleet

BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def fleet(tmp_path_factory) -> Iterator[RadminFleet]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    swept = sweep_abandoned()
    if swept:
        MEASURED["namespaces of dead test runs swept"] = str(len(swept))
    made = RadminFleet(tmp_path_factory.mktemp("fleet"), BIN, tag=owned_tag())
    atexit.register(made.down)  # idempotent; covers an interpreter exit mid-session
    started = time.monotonic()
    try:
        made.up(BASE_SIZE)
        MEASURED[f"fleet up, {BASE_SIZE} hosts (s)"] = f"{time.monotonic() - started:.1f}"
        yield made
    finally:
        started = time.monotonic()
        made.down()
        atexit.unregister(made.down)
        MEASURED[f"fleet down, {len(made.hosts)} hosts (s)"] = f"{time.monotonic() - started:.1f}"


@pytest.fixture(scope="session")
def fleet64(fleet) -> RadminFleet:
    started = time.monotonic()
    fleet.grow(64)
    MEASURED["fleet grown to 64 hosts (s)"] = f"{time.monotonic() - started:.1f}"
    return fleet


def pytest_terminal_summary(terminalreporter) -> None:
    """The fleet's measurements, at the end of every run that made some."""
    if MEASURED:
        terminalreporter.section("fleet measurements (shared machine: noisy)")
        for what, value in MEASURED.items():
            terminalreporter.write_line(f"{what}: {value}")

"""Fixtures for the security tests: one daemon per test module whose one client, "low",
is restricted (it may only run `echo ...` and upload nothing), so a request that slipped
through could do no harm; and the fuzz case count, reported at the end of the run."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import pytest
from support import Daemon, make_client_home, prepare_daemon, restricted_entry

from radmin.identity import ClientHome

_FUZZ_CASES = pytest.StashKey[Counter]()
_FUZZ_STARTED = pytest.StashKey[float]()


@pytest.fixture(scope="module")
def low_home(tmp_path_factory) -> ClientHome:
    return make_client_home(tmp_path_factory.mktemp("low-client"))


@pytest.fixture(scope="module")
def restricted_daemon(tmp_path_factory, server_identity, low_home) -> Iterator[Daemon]:
    folder = tmp_path_factory.mktemp("restricted") / "daemon"
    daemon = prepare_daemon(folder, server_identity, {"low": restricted_entry(low_home)})
    try:
        yield daemon.start()
    finally:
        daemon.stop()


@pytest.fixture(scope="session")
def fuzz_cases(pytestconfig) -> Counter:
    """Cases run per fuzz target; printed in the terminal summary, whatever -s says."""
    pytestconfig.stash[_FUZZ_STARTED] = time.monotonic()
    return pytestconfig.stash.setdefault(_FUZZ_CASES, Counter())


def pytest_terminal_summary(terminalreporter, config) -> None:
    cases = config.stash.get(_FUZZ_CASES, None)
    if not cases:
        return
    seconds = time.monotonic() - config.stash[_FUZZ_STARTED]
    detail = ", ".join(f"{name} {count}" for name, count in cases.items())
    terminalreporter.write_line(
        f"fuzz: {sum(cases.values())} cases against one radmind in {seconds:.1f} s ({detail})"
    )

"""Fixtures for the security tests: one daemon per test module whose one client, "low",
is restricted (it may only run `echo ...` and upload nothing), so a request that slipped
through could do no harm; and the fuzz case count, reported at the end of the run."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from support import Daemon, make_client_home, prepare_daemon, restricted_entry

from radmin.identity import ClientHome


@dataclass
class FuzzTally:
    """Cases run per fuzz target, and the seconds spent running them."""

    cases: Counter = field(default_factory=Counter)
    seconds: float = 0.0


_FUZZ = pytest.StashKey[FuzzTally]()


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
def fuzz_tally(pytestconfig) -> FuzzTally:
    """Printed in the terminal summary, whatever -s says."""
    return pytestconfig.stash.setdefault(_FUZZ, FuzzTally())


def pytest_terminal_summary(terminalreporter, config) -> None:
    tally = config.stash.get(_FUZZ, None)
    if tally is None or not tally.cases:
        return
    detail = ", ".join(f"{name} {count}" for name, count in tally.cases.items())
    terminalreporter.write_line(
        f"fuzz: {sum(tally.cases.values())} cases against one radmind "
        f"in {tally.seconds:.1f} s ({detail})"
    )

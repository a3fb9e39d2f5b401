"""After each test that used the Ansible fleet, its client home's `radmin-cli mux` helper
(which the plugin starts by default) is stopped: no helper outlives its test, and a test
that copies the home (shutil.copytree cannot copy a socket) finds no socket in it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support import run_cli


@pytest.fixture(autouse=True)
def stop_fleet_helper(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "fleet" in request.fixturenames:
        run_cli(request.getfixturevalue("fleet").home, "mux", "--stop")
